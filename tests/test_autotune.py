"""BatchSizeController driven by a fake clock, as Beam tests its batch estimator."""

import pickle

import pytest

from mmbeam.autotune import BatchSizeController, Measurement, default_memory_budget


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_batches(ctl, clock, seconds_per_element, bytes_per_element=0, batches=12):
    sizes = []
    for _ in range(batches):
        n = ctl.next_size()
        sizes.append(n)
        with ctl.measure(n) as m:
            clock.now += n * seconds_per_element
            m.peak_bytes = n * bytes_per_element
    return sizes


def test_slow_start_then_time_target():
    clock = FakeClock()
    ctl = BatchSizeController(target_seconds=1.0, memory_budget=1 << 40, max_size=10_000, clock=clock)
    sizes = run_batches(ctl, clock, seconds_per_element=0.01)
    assert sizes[:4] == [2, 4, 8, 16]  # grows at most 2x per step
    assert sizes[-1] == 100  # then settles where a batch takes the 1 s target


def test_memory_budget_caps_batches_of_big_elements():
    clock = FakeClock()
    ctl = BatchSizeController(target_seconds=10.0, memory_budget=400 << 20, clock=clock)
    sizes = run_batches(ctl, clock, seconds_per_element=0.001, bytes_per_element=48 << 20)
    assert sizes[-1] == 8  # 400 MB / 48 MB per camera photo, although time would allow 10,000
    assert ctl.window() == 8


def test_batches_shrink_when_elements_get_expensive_and_grow_back():
    clock = FakeClock()
    ctl = BatchSizeController(target_seconds=1.0, memory_budget=1 << 40, clock=clock, smoothing=1.0)
    run_batches(ctl, clock, seconds_per_element=0.001, batches=15)
    assert ctl.next_size() == 1000
    run_batches(ctl, clock, seconds_per_element=0.1, batches=3)
    assert ctl.next_size() == 10
    grown = run_batches(ctl, clock, seconds_per_element=0.001, batches=10)
    assert grown[-1] == 1000 and grown[1] <= 2 * grown[0]


def test_bounds_are_respected():
    clock = FakeClock()
    ctl = BatchSizeController(min_size=4, initial=4, max_size=64, memory_budget=1 << 40, clock=clock)
    assert max(run_batches(ctl, clock, seconds_per_element=1e-6, batches=20)) == 64
    assert min(run_batches(ctl, clock, seconds_per_element=100.0, batches=5)) == 4


def test_record_ignores_empty_batches_and_describe_reports():
    ctl = BatchSizeController(name="DecodeImage", memory_budget=100 << 20)
    assert "no batches yet" in ctl.describe()
    ctl.record(Measurement(0, seconds=5))
    assert ctl.seconds_per_element is None
    ctl.record(Measurement(4, seconds=0.02, peak_bytes=8 << 20))
    assert "DecodeImage" in ctl.describe() and "5.00 ms/elem" in ctl.describe()


def test_pickles_with_its_estimates():
    ctl = BatchSizeController(memory_budget=1 << 30)
    ctl.record(Measurement(10, seconds=1.0, peak_bytes=10 << 20))
    clone = pickle.loads(pickle.dumps(ctl))
    assert clone.seconds_per_element == pytest.approx(0.1) and clone.next_size() == ctl.next_size()


def test_invalid_arguments_and_default_budget():
    with pytest.raises(ValueError, match="min_size"):
        BatchSizeController(min_size=10, initial=1)
    assert 256 << 20 <= default_memory_budget() <= 8 << 30
