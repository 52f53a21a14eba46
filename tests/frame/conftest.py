from __future__ import annotations

import pytest

from mmbeam.frame import context


class RunCounter:
    def __init__(self) -> None:
        self.runs = 0

    def factory(self):
        from mmbeam.runners.direct import local_runner

        self.runs += 1
        return local_runner()


@pytest.fixture
def runs():
    """Counts pipeline runs (the local runner, counted)."""
    counter = RunCounter()
    context.set_runner(counter.factory, "counted")
    yield counter
    context.set_runner_local()


@pytest.fixture(params=["in_process", "beam", "beam_shuffle"])
def engine(request):
    """Runs a test on every execution path: in this process, as a Beam pipeline, and as a Beam
    pipeline that shuffles even small join sides (no broadcast)."""
    context.set_execution_config(in_process=None if request.param == "in_process" else False,
                                 broadcast_bytes=0 if request.param == "beam_shuffle" else 64 << 20)
    yield request.param
    context.set_execution_config(in_process=None, broadcast_bytes=64 << 20)
