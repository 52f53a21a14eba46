"""BatchSizeController driven by a fake clock, as Beam tests its batch estimator."""

import pickle

import pytest

from mmbeam.autotune import BatchSizeController, Measurement, default_memory_budget


def run_batches(ctl, clock, seconds_per_element, bytes_per_element=0, batches=12):
    sizes = []
    for _ in range(batches):
        n = ctl.next_size()
        sizes.append(n)
        with ctl.measure(n) as m:
            clock.now += n * seconds_per_element
            m.peak_bytes = n * bytes_per_element
    return sizes


def test_slow_start_then_time_target(clock):
    ctl = BatchSizeController(target_seconds=1.0, memory_budget=1 << 40, max_size=10_000, clock=clock)
    sizes = run_batches(ctl, clock, seconds_per_element=0.01)
    assert sizes[:4] == [2, 4, 8, 16]  # grows at most 2x per step
    assert sizes[-1] == 100  # then settles where a batch takes the 1 s target


def test_memory_budget_caps_batches_of_big_elements(clock):
    ctl = BatchSizeController(target_seconds=10.0, memory_budget=400 << 20, clock=clock)
    sizes = run_batches(ctl, clock, seconds_per_element=0.001, bytes_per_element=48 << 20)
    assert sizes[-1] == 8  # 400 MB / 48 MB per camera photo, although time would allow 10,000
    assert ctl.window() == 8


def test_batches_shrink_when_elements_get_expensive_and_grow_back(clock):
    ctl = BatchSizeController(target_seconds=1.0, memory_budget=1 << 40, clock=clock, smoothing=1.0)
    run_batches(ctl, clock, seconds_per_element=0.001, batches=15)
    assert ctl.next_size() == 1000
    run_batches(ctl, clock, seconds_per_element=0.1, batches=3)
    assert ctl.next_size() == 10
    grown = run_batches(ctl, clock, seconds_per_element=0.001, batches=10)
    assert grown[-1] == 1000 and grown[1] <= 2 * grown[0]


def test_bounds_are_respected(clock):
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


def feed_rows(ctl, clock, rows, io_s, cpu_s, peak):
    for _ in range(rows):
        with ctl.measure(1) as m:
            clock.now += io_s + cpu_s
            m.busy_seconds = cpu_s
            m.peak_bytes = peak


def test_inflight_window_grows_with_waiting_and_shrinks_with_work(clock):
    from mmbeam.autotune import chosen_sizes

    ctl = BatchSizeController(name="rows", memory_budget=1 << 40, max_size=4096, clock=clock,
                              smoothing=1.0).register()
    assert ctl.inflight(workers=2, floor=8) == 8  # nothing measured yet
    feed_rows(ctl, clock, 4, io_s=0.050, cpu_s=0.005, peak=100_000)  # web: mostly waiting
    assert ctl.inflight(workers=2, floor=8) == 44  # 2 workers x 2 headroom x 55/5
    feed_rows(ctl, clock, 4, io_s=0.050, cpu_s=0.050, peak=100_000)  # camera: half working
    assert ctl.inflight(workers=2, floor=8) == 8
    assert "rows: batch 8" in chosen_sizes()["rows"]


def test_inflight_window_stays_under_the_memory_budget(clock):
    ctl = BatchSizeController(memory_budget=100 << 20, max_size=4096, clock=clock)
    feed_rows(ctl, clock, 4, io_s=0.5, cpu_s=0.005, peak=10 << 20)  # 10 MB per row
    assert ctl.inflight(workers=2, floor=32) == 10  # memory wins over time and the floor


def test_parse_bytes():
    from mmbeam.autotune import parse_bytes

    assert parse_bytes("512MB") == 512 << 20 and parse_bytes("2GiB") == 2 << 30
    assert parse_bytes("1.5g") == int(1.5 * (1 << 30)) and parse_bytes(4096) == 4096
    for bad in ("lots", "-1MB", 0, "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
