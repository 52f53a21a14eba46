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


@pytest.fixture(params=["in_process", "beam"])
def engine(request):
    """Runs a test on both execution paths: in this process, and as a Beam pipeline."""
    context.set_execution_config(in_process=None if request.param == "in_process" else False)
    yield request.param
    context.set_execution_config(in_process=None)
