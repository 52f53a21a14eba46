"""Clusters whose workers run as on another machine: own mount namespace, the network shared.

Each worker process starts under::

    unshare --mount --propagation private sh -c 'mount -t tmpfs none /tmp && cd /tmp && exec …'

so it sees a fresh, empty ``/tmp`` (its working directory too) that neither the driver nor the
other workers can see, while 127.0.0.1 is the same for everyone: the loopback HTTP, S3 and GCS
servers of the tests stay reachable, and any file a driver or worker leaves in ``/tmp`` (a
pytest ``tmp_path``, a staged input, a spilled result) is invisible on the other side, as it is
between machines. The rest of the disk (the checkout, the virtualenv, ``/dev/shm``) stays shared.

- :class:`NamespacedDask`: ``dask scheduler`` in this namespace plus ``n_workers``
  ``dask worker --nthreads 1`` processes, each in its own namespace; ``address`` is the
  scheduler's (``DaskRunner(address)``, ``set_runner_dask(address)``).
- :class:`NamespacedRay`: ``ray start --head --num-cpus=0 --block`` in this namespace, with a
  private temp dir and free ports (other Ray instances on the machine are left alone), plus one
  ``ray start --address … --num-cpus=2 --block`` node in its own namespace. ``address`` is the
  GCS address for ``ray.init(address=…)`` / ``RayRunner(address)``; ``client_address`` the
  ``ray://`` one. The head has no CPUs, so tasks needing one run on the namespaced node; zero-CPU
  actors may still be placed on the head.
- :class:`NamespacedBeamPool`: Beam's ``worker_pool_main`` in its own namespace;
  :meth:`NamespacedBeamPool.options` gives ``PortableRunner`` options that run the SDK workers
  there (``--environment_type=EXTERNAL``), the way Flink or Dataflow runs them away from the
  launcher.

Workers import the mmbeam under test: their ``PYTHONPATH`` starts with the folder holding the
imported ``mmbeam`` package and their ``PATH`` with this interpreter's ``bin`` folder; each
cluster checks this when it starts. Every process is started in its own session and stopped by
its process group, its descendants too; a failed start stops what already started.
:func:`namespace_refusal` says why a machine cannot do this (the pytest fixtures in
:mod:`mmbeam.testing.plugin` skip with that reason); CI runs as root, where it works.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from mmbeam.testing.ray_cluster import free_ports

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "NamespacedBeamPool",
    "NamespacedDask",
    "NamespacedRay",
    "imported_mmbeam",
    "namespace_refusal",
    "namespaced_command",
    "worker_environment",
]

_UNSHARE = ("unshare", "--mount", "--propagation", "private")
_PRIVATE_TMP = 'mount -t tmpfs none /tmp && cd /tmp && exec "$@"'
_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
            "RAY_AUTH_MODE": "disabled"}  # a loopback test cluster: no token


@functools.cache
def namespace_refusal() -> str | None:
    """``None`` if this machine starts processes with a private ``/tmp``; else the reason not."""
    try:
        done = subprocess.run([*_UNSHARE, "sh", "-c", _PRIVATE_TMP, "sh", "true"],
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "`unshare` (util-linux) is not installed"
    except subprocess.TimeoutExpired:
        return "`unshare --mount` did not return within 60 s"
    if done.returncode != 0:
        return (f"`unshare --mount` with a tmpfs on /tmp is refused here (exit "
                f"{done.returncode}: {done.stderr.strip()[-300:]}); it needs root or "
                f"CAP_SYS_ADMIN")
    return None


def namespaced_command(argv: list[str]) -> list[str]:
    """``argv`` run in a new mount namespace with a fresh tmpfs on ``/tmp`` as its cwd."""
    return [*_UNSHARE, "sh", "-c", _private_tmp_script(), "sh", *argv]


def _private_tmp_script() -> str:
    """The shell line that gives the namespace its own ``/tmp``. The code a worker machine
    would have installed (the mmbeam checkout and this virtualenv) stays visible when it lives
    under ``/tmp`` (a CI clone there): the old ``/tmp`` is held on a bind mount in ``/dev/shm``
    while those folders are bound back, then let go; everything else under ``/tmp`` is hidden."""
    keep: list[str] = []
    for path in sorted({os.path.realpath(_mmbeam_root()), os.path.realpath(sys.prefix)}):
        if path.startswith("/tmp/") and not any(path.startswith(k + "/") for k in keep):
            keep.append(path)
    if not keep:
        return _PRIVATE_TMP
    hold = "/dev/shm/.mmbeam-ns-$$"  # $$: the namespace's shell, so one folder per worker
    steps = [f"mkdir -p {hold}", f"mount --bind /tmp {hold}", "mount -t tmpfs none /tmp"]
    for path in keep:
        held = f'"{hold}"/{shlex.quote(os.path.relpath(path, "/tmp"))}'
        steps += [f"mkdir -p {shlex.quote(path)}", f"mount --bind {held} {shlex.quote(path)}"]
    steps += [f"umount -l {hold}", f"rmdir {hold}", "cd /tmp", 'exec "$@"']
    return " && ".join(steps)


def _mmbeam_root() -> str:
    import mmbeam

    return os.path.dirname(os.path.dirname(os.path.abspath(mmbeam.__file__)))


def worker_environment(**extra: str) -> dict[str, str]:
    """This process's environment with the mmbeam under test first on ``PYTHONPATH`` and this
    interpreter's ``bin`` first on ``PATH`` (so a plain ``python`` is the same virtualenv)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_mmbeam_root(), os.environ.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join(
        p for p in (_bin_dir(), os.environ.get("PATH")) if p)
    return env


def _bin_dir() -> str:
    return os.path.dirname(sys.executable)


def _tool(name: str) -> str:
    """The ``name`` command of this interpreter's environment (its ``bin``, else ``PATH``)."""
    path = os.path.join(_bin_dir(), name)
    found = path if os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        raise RuntimeError(f"no `{name}` command next to {sys.executable} nor on PATH")
    return found


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def imported_mmbeam() -> str:
    """The ``mmbeam`` package folder this process imports, after loading the runner's worker
    module (so a cluster's first task does not pay for importing Beam)."""
    import importlib

    importlib.import_module("mmbeam.runners.worker")
    return _mmbeam_root()


class _Process:
    """A child process in its own session, its output in ``<log_dir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], log_dir: str, env: dict[str, str],
                 cwd: str | None = None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cwd or log_dir, env=env,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if the process has exited."""
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; its log "
                               f"({self.log_path}) ends:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` to the group and to every
        descendant that left it (Ray's daemons start their own sessions)."""
        self.reap(self.terminate(), time.monotonic() + timeout)

    def terminate(self) -> list:
        """SIGTERM to the process group; returns its descendants (psutil processes) for
        :meth:`reap`, listed first since some leave the group."""
        import psutil

        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        self._signal_group(signal.SIGTERM)
        return descendants

    def reap(self, descendants: list, deadline: float) -> None:
        """Wait until ``deadline`` for the process and ``descendants`` to exit, then SIGKILL
        the group and whatever is left."""
        import psutil

        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
        self._signal_group(signal.SIGKILL)
        for proc in alive:
            try:
                proc.kill()  # psutil checks the pid was not reused
            except psutil.Error:
                pass
        self.popen.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a machine failure would."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # our own session only (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass


class _Cluster:
    """Starts processes, stops them all on :meth:`close` (and on a failed start)."""

    kind = ""  # names the folder of the processes' logs
    stop_grace = 10.0  # seconds between SIGTERM and SIGKILL on close

    def __init__(self, start_timeout: float):
        self.start_timeout = start_timeout
        self.log_dir = ""
        self._processes: list[_Process] = []

    def start(self) -> Self:
        reason = namespace_refusal()
        if reason:
            raise RuntimeError(f"cannot simulate another machine: {reason}")
        self.log_dir = tempfile.mkdtemp(prefix=f"mmns-{self.kind}-")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def _spawn(self, name: str, argv: list[str], *, namespaced: bool,
               env: dict[str, str] | None = None) -> _Process:
        argv = namespaced_command(argv) if namespaced else argv
        process = _Process(name, argv, self.log_dir, env or worker_environment())
        self._processes.append(process)
        return process

    def _wait(self, what: str, ready, deadline: float) -> Any:
        """Poll ``ready()`` until it returns something truthy; fail if a process died."""
        while True:
            for process in self._processes:
                process.check()
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}:\n{p.log_tail(1500)}" for p in self._processes)
                raise RuntimeError(f"{what} within {self.start_timeout:g} s; logs in "
                                   f"{self.log_dir}:\n{tails}")
            time.sleep(0.5)

    def close(self) -> None:
        """SIGTERM to every process at once (workers first), SIGKILL to what is left after
        ``stop_grace`` seconds: one shared wait, as when machines are switched off together."""
        processes = self._processes[::-1]  # workers before their scheduler/head
        terminated = [(process, process.terminate()) for process in processes]
        deadline = time.monotonic() + self.stop_grace
        for process, descendants in terminated:
            process.reap(descendants, deadline)
        self._processes.clear()
        self._cleanup()
        if self.log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = ""

    def _cleanup(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_imports(found: dict[str, str]) -> None:
    expected = _mmbeam_root()
    wrong = {w: path for w, path in found.items() if path != expected}
    if wrong:
        raise RuntimeError(f"workers import another mmbeam than {expected}: {wrong}")


class NamespacedDask(_Cluster):
    """``dask scheduler`` here plus ``n_workers`` namespaced ``dask worker`` processes."""

    kind = "dask"

    def __init__(self, n_workers: int = 2, nthreads: int = 1, start_timeout: float = 180.0):
        super().__init__(start_timeout)
        self.n_workers = n_workers
        self.nthreads = nthreads
        self.address = ""
        self._workers: list[_Process] = []

    def _start(self) -> None:
        dask = _tool("dask")
        deadline = time.monotonic() + self.start_timeout
        scheduler_file = os.path.join(self.log_dir, "scheduler.json")
        self._spawn("scheduler", [dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", scheduler_file],
                    namespaced=False)
        self.address = self._wait("the Dask scheduler did not start",
                                  lambda: _read_address(scheduler_file), deadline)
        self._workers = [
            self._spawn(f"worker-{i}", [dask, "worker", self.address, "--host", "127.0.0.1",
                                        "--nthreads", str(self.nthreads), "--no-dashboard",
                                        "--name", f"namespaced-{i}"], namespaced=True)
            for i in range(self.n_workers)]
        from distributed import Client

        with Client(self.address, timeout=max(10.0, deadline - time.monotonic()),
                    set_as_default=False) as client:
            self._wait(f"{self.n_workers} Dask workers did not register",
                       lambda: len(client.scheduler_info(n_workers=-1)["workers"])
                       >= self.n_workers, deadline)
            _check_imports(client.run(imported_mmbeam))

    @property
    def worker_pids(self) -> list[int]:
        """The pid of each ``dask worker`` process (its nanny; the worker is a child)."""
        return [w.pid for w in self._workers]

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` and its nanny: the worker is lost for good, as with a machine
        that fails (the scheduler moves its tasks to the other workers). A test that does this
        starts a cluster of its own (``with NamespacedDask() as cluster:``), not the session's."""
        self._workers[index].kill()


def _read_address(path: str) -> str:
    try:
        with open(path) as f:
            return json.load(f).get("address", "")
    except (OSError, ValueError):
        return ""


_RAY_PROBE = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
deadline = time.monotonic() + float(sys.argv[3])
while ray.cluster_resources().get("CPU", 0) < float(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
from mmbeam.testing.namespaced import imported_mmbeam
found = ray.get(ray.remote(num_cpus=1)(imported_mmbeam).remote())
print(json.dumps({"cpus": ray.cluster_resources().get("CPU", 0), "mmbeam": found}))
"""


class NamespacedRay(_Cluster):
    """A Ray head with no CPUs here and one namespaced worker node with ``num_cpus`` CPUs."""

    kind = "ray"
    stop_grace = 1.0  # `ray start --block` and its daemons outlive SIGTERM (all 8 alive 6 s on)

    def __init__(self, num_cpus: int = 2, object_store_memory: int = 512 << 20,
                 start_timeout: float = 240.0):
        super().__init__(start_timeout)
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.address = ""
        self.client_address = ""
        self.temp_dir = ""

    def _node_flags(self) -> list[str]:
        """Free ports for one node's services, so nodes here and other Ray instances on the
        machine do not collide (the network is shared)."""
        ports = free_ports(6)
        names = ("node-manager", "object-manager", "dashboard-agent-listen",
                 "dashboard-agent-grpc", "metrics-export", "runtime-env-agent")
        return ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block",
                "--min-worker-port=0", "--max-worker-port=0",  # any free port
                *(f"--{name}-port={port}" for name, port in zip(names, ports, strict=True))]

    def _start(self) -> None:
        ray = _tool("ray")
        deadline = time.monotonic() + self.start_timeout
        env = worker_environment(**_RAY_ENV)
        gcs, client = free_ports(2)
        self.temp_dir = tempfile.mkdtemp(prefix="mmray")  # short: Ray's socket paths
        head = [ray, "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={128 << 20}", *self._node_flags()]
        self._spawn("head", head, namespaced=False, env=env)
        self._wait("the Ray head did not listen", lambda: _listening(gcs), deadline)
        self.address = f"127.0.0.1:{gcs}"
        worker = [ray, "start", f"--address={self.address}", f"--num-cpus={self.num_cpus}",
                  "--temp-dir=/tmp/ray", f"--object-store-memory={self.object_store_memory}",
                  *self._node_flags()]
        self._spawn("worker", worker, namespaced=True, env=env)
        probe = self._spawn("probe", [sys.executable, "-c", _RAY_PROBE, self.address,
                                      str(self.num_cpus), str(self.start_timeout)],
                            namespaced=False, env=env)
        try:
            probe.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            probe.stop(timeout=5)
        finally:
            self._processes.remove(probe)  # done: not part of the cluster
        for process in self._processes:
            process.check()
        lines = probe.log_tail().strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            result = {}
        if probe.popen.returncode != 0 or result.get("cpus", 0) < self.num_cpus:
            raise RuntimeError(f"the namespaced Ray node did not join {self.address} within "
                               f"{self.start_timeout:g} s; probe output:\n{probe.log_tail()}\n"
                               f"--- worker:\n{self._processes[-1].log_tail(1500)}")
        _check_imports({"ray worker node": result["mmbeam"]})
        self.client_address = f"ray://127.0.0.1:{client}"

    def _cleanup(self) -> None:
        """Forget this cluster: its temp dir (with its ``ray_current_cluster``), and the default
        ``/tmp/ray/ray_current_cluster`` if it names this cluster (a later ``ray.init()`` would
        try to join the dead cluster)."""
        if self.address:
            tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
            default = os.path.join(tmp, "ray", "ray_current_cluster")  # Ray's default place
            try:
                with open(default) as f:
                    ours = f.read().strip() == self.address
                if ours:
                    os.remove(default)
            except OSError:
                pass
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""


class NamespacedBeamPool(_Cluster):
    """Beam's ``worker_pool_main`` in its own namespace, for ``--environment_type=EXTERNAL``.

    The pool starts each SDK worker as ``python -c …`` found on its ``PATH``, which starts with
    this interpreter's ``bin`` folder (else: "No module named 'apache_beam'", and a job that
    waits forever).
    """

    kind = "beam-pool"

    def __init__(self, start_timeout: float = 120.0):
        super().__init__(start_timeout)
        self.port = 0

    def _start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        (self.port,) = free_ports(1)
        self._spawn("worker-pool", ["python", "-m", "apache_beam.runners.worker.worker_pool_main",
                                    f"--service_port={self.port}"], namespaced=True)
        self._wait("Beam's worker pool did not listen", lambda: _listening(self.port), deadline)

    def options(self, temp_location: str | None = None, **flags: Any) -> Any:
        """``PipelineOptions`` running a ``PortableRunner`` job's SDK workers in this pool."""
        from apache_beam.options.pipeline_options import PipelineOptions

        if temp_location:
            flags["temp_location"] = temp_location
        return PipelineOptions([], job_endpoint="embed", environment_type="EXTERNAL",
                               environment_config=f"localhost:{self.port}", **flags)
