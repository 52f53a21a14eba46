"""The check a new Ray Client connection must pass (RayBackend._connect): one put answered
within a deadline, else the connection is made again rather than a run hanging."""

from __future__ import annotations

import threading
import time

import pytest

from mmbeam.runners.ray_runner import _put_answered


class _Unanswered:
    """A put that waits without a deadline, as Ray Client's did on a loaded head."""

    def __init__(self):
        self.release = threading.Event()

    def put(self, value):
        self.release.wait(60)


class _Refused:
    def put(self, value):
        raise RuntimeError("channel closed")


def test_an_unanswered_put_is_a_connection_error_at_its_deadline():
    ray = _Unanswered()
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match="did not answer a put within 0.3 s"):
            _put_answered(ray, 0.3)
        assert time.monotonic() - start < 5
    finally:
        ray.release.set()


def test_a_failed_put_is_a_connection_error_at_once_naming_the_cause():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="failed a put: channel closed") as failed:
        _put_answered(_Refused(), 30)
    assert time.monotonic() - start < 5 and isinstance(failed.value.__cause__, RuntimeError)


def test_a_put_on_a_live_ray_passes(ray_session):
    _put_answered(ray_session, 30)
