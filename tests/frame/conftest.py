from __future__ import annotations

import pytest

from mmbeam.frame import context


@pytest.fixture(params=["in_process", "beam", "beam_shuffle"])
def engine(request):
    """Runs a test on every execution path: in this process, as a Beam pipeline, and as a Beam
    pipeline that shuffles even small join sides (no broadcast). The context is restored by
    tests/conftest.py."""
    context.set_execution_config(in_process=None if request.param == "in_process" else False,
                                 broadcast_bytes=0 if request.param == "beam_shuffle" else 64 << 20)
    return request.param
