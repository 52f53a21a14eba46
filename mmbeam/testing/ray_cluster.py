"""Real local Ray for tests: ``init_local_ray`` (in this process) and ``RayHead`` (a head node in
its own process, reached as a cluster through ``ray://`` like a remote one).

Ray's raylet gives up when its dashboard/metrics agent has not started within a fixed 15 s
(ray-project/ray#65983), which happens on a loaded two-core machine; both helpers start Ray
without the dashboard or usage stats and retry a failed start a few times rather than skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RayHead", "free_ports", "init_local_ray"]

_QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def init_local_ray(num_cpus: int = 2, attempts: int = 3) -> Any:
    """``ray.init()`` of a local cluster with ``num_cpus`` CPUs; retried after a failed start."""
    import ray

    os.environ.update(_QUIET)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            return ray
        except Exception:
            ray.shutdown()
            if attempt == attempts:
                raise
            time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (bound together, then released)."""
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 in a child process, with ``num_cpus`` CPUs.

    ``client_address`` (``ray://127.0.0.1:<port>``) reaches it through Ray Client, the way a
    laptop reaches a remote cluster; ``cwd`` is the workers' working directory. Closing stops
    only the processes this head started (its own process group).
    """

    def __init__(self, num_cpus: int = 2, cwd: str | None = None,
                 start_timeout: float = 120.0, attempts: int = 3):
        self.num_cpus = num_cpus
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.client_address = ""
        self._process: subprocess.Popen | None = None
        self._temp_dir = ""

    def start(self) -> Self:
        """Start the cluster's processes and wait until they answer."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._start_once()
            except RuntimeError:
                self.close()
                if attempt == self.attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> Self:
        gcs, client = free_ports(2)
        self._temp_dir = tempfile.mkdtemp(prefix="mmray")  # short: Ray's socket paths
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        log = open(os.path.join(self._temp_dir, "head.log"), "wb")  # noqa: SIM115
        self._process = subprocess.Popen(
            [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={gcs}", f"--ray-client-server-port={client}",
             f"--num-cpus={self.num_cpus}", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={self._temp_dir}"],
            cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # a loopback test cluster: no token auth (``ray start`` turns it on by default, and
            # the Ray Client would then need the token in this process's environment)
            env={**os.environ, **_QUIET, "RAY_AUTH_MODE": "disabled"})
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self._process.returncode}: "
                                   f"{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", client), timeout=1.0):
                    self.client_address = f"ray://127.0.0.1:{client}"
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not listen within {self.start_timeout:g} s: "
                           f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self._temp_dir, "head.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the cluster's processes and remove Ray's stale session files."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # ray start --block stops what it started
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)  # our own session only
                    process.wait(timeout=10)
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
