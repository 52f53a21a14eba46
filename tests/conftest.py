"""Fixtures shared by every test module: served sample JPEGs, a fake clock, a counted local
runner, and the frame context (runner and execution config) restored after each test."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


class FakeClock:
    """A clock that moves only when a test moves it (``clock.now += 1.5``)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`FakeClock` at 0.0, for the policies that take an injected clock."""
    return FakeClock()


class RunCounter:
    """A runner factory that counts the runs it starts (each on Beam's local runner)."""

    def __init__(self) -> None:
        self.runs = 0

    def factory(self):
        from mmbeam.runners.direct import local_runner

        self.runs += 1
        return local_runner()

    def install(self, name: str = "counted") -> RunCounter:
        """Make frames run on this factory, under runner name ``name``."""
        from mmbeam.frame import context

        context.set_runner(self.factory, name)
        return self


@pytest.fixture
def runs() -> RunCounter:
    """Frames run on the local runner, counted in ``runs.runs`` (restored after the test)."""
    return RunCounter().install()


@pytest.fixture(autouse=True)
def _frame_context_restored():
    """Whatever a test sets with ``set_execution_config`` or ``set_runner_*`` is undone after
    it: the context object (immutable) seen before the test is put back, not a literal default.
    Costs nothing for tests that never import the frame."""
    before = sys.modules.get("mmbeam.frame.context")
    saved = before.get_context() if before is not None else None
    yield
    context = sys.modules.get("mmbeam.frame.context")
    if context is not None:
        context._context = saved if saved is not None else context.Context()


@pytest.fixture(scope="session")
def serve_jpegs(mmbeam_http) -> Callable[..., dict[str, str]]:
    """``serve_jpegs(folder, sizes, orientations=False, name="p{i}.jpg")`` serves one JPEG per
    ``(width, height)`` of ``sizes`` (``make_image(w, h, seed=i)``; EXIF orientation ``1 + i % 8``
    with ``orientations``) on the session's FaultServer as ``<folder>/<name>``; returns
    ``{name: url}`` in order. The served-images fixture of every module that needs some."""
    from mmbeam.testing.images import encode_sample, make_image

    def serve(folder: str, sizes: Iterable[tuple[int, int]], orientations: bool = False,
              name: str = "p{i}.jpg") -> dict[str, str]:
        urls = {}
        for i, (width, height) in enumerate(sizes):
            extra = {"exif_orientation": 1 + i % 8} if orientations else {}
            data = encode_sample(make_image(width, height, seed=i), "JPEG", **extra)
            urls[name.format(i=i)] = mmbeam_http.add(f"{folder}/{name.format(i=i)}", data)
        return urls

    return serve


def _checkout_state(root: str) -> set[str] | None:
    """The untracked and ignored files of the checkout (``git status``), minus Python's and
    tools' caches; None when the tests do not run from a git checkout. Only new files count:
    a commit or an edit made while the tests run is not the tests' doing."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    caches = ("__pycache__", ".ruff_cache", ".pytest_cache")
    return {line for line in out.stdout.splitlines()
            if line[:2] in ("??", "!!") and not any(c in line for c in caches)}


@pytest.fixture(scope="session", autouse=True)
def _checkout_left_clean(request):
    """Tests write only under their tmp_path: the checkout is as the session found it."""
    root = str(request.config.rootpath)
    before = _checkout_state(root)
    yield
    after = _checkout_state(root)
    if before is not None and after is not None:
        assert after == before, f"tests wrote into the checkout: {sorted(after - before)}"


#: fixtures that start or use a cluster, and the parameters that pick a cluster runner
_ENGINE_FIXTURES = {"dask_cluster", "ray_session", "ray_head", "portable_frames"}
_ENGINE_PARAMS = {"runner_name", "cluster_runner"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which turns the groups into ids
def pytest_collection_modifyitems(items):
    """Mark ``distributed`` every test that runs on Dask, Ray or a portable runner's workers
    through a shared fixture or a runner parameter (other tests carry the mark themselves).
    Under pytest-xdist (``-n 2 --dist loadgroup``, as ci/test.sh runs) the ones on Ray run in
    one worker, one after another (they share the session's Ray clusters, and two Ray sessions
    on one machine interfere), the ones on Dask or a portable runner likewise in one worker
    (the session's Dask clusters and Beam worker pool); everything else fills in around them."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_engine = any(params.get(p) in ("dask", "ray") for p in _ENGINE_PARAMS)
        if on_engine or _ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.distributed)
        if item.get_closest_marker("distributed") or _starts_engines(str(item.path)):
            item.add_marker(pytest.mark.xdist_group("ray" if _on_ray(item) else "engines"))


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` pytest-xdist gives each grouped test's id an "@group" suffix,
    by which it schedules the group on one worker. A pytest on which that suffix is lost
    (pytest 9.2, pytest-xdist#1386) would run the cluster groups side by side without a word:
    the run stops instead."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup ignored the xdist_group of {len(lost)} "
                                f"tests (e.g. {lost[0]}): see pytest-xdist#1386")


_ENGINE_WORDS = re.compile(r"ray_session|dask_cluster|ray_head|namespaced|set_runner_(ray|dask)|"
                           r"(Ray|Dask|Portable)Runner|LocalCluster|ray\.init|portable_frames")


def _on_ray(item) -> bool:
    """Whether a cluster test uses Ray: a Ray fixture, or "ray" as a word of its id
    (``[ray-in-memory]``, ``..._on_ray``)."""
    words = (*getattr(item, "fixturenames", ()), item.nodeid.lower())
    return any(_RAY_WORD.search(word) for word in words)


_RAY_WORD = re.compile(r"(?<![a-z])ray(?![a-z])")


@functools.cache
def _starts_engines(path: str) -> bool:
    """Whether a test module may start or use a cluster (some pick it inside the test)."""
    return bool(_ENGINE_WORDS.search(Path(path).read_text()))
