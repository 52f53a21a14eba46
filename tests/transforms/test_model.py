"""RunModel and the shared-model runtime: one model per process, batches, autotune, failures."""

from __future__ import annotations

import pickle
import threading
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from mmbeam.errors import ConfigError, UdfError
from mmbeam.testing import run_collect
from mmbeam.transforms import FailedRecord, RunModel
from mmbeam.transforms import shared_model as sm


class Tagger:
    """Each output says which instance, thread and batch size produced it."""

    def __init__(self, scale=1):
        self.scale = scale

    def __call__(self, batch):
        return [(v * self.scale, id(self), threading.get_ident(), len(batch)) for v in batch]


class Picky:
    """Fails any batch holding a multiple of 7 (and so, rerun alone, each such element)."""

    def __call__(self, batch):
        bad = [v for v in batch if v % 7 == 0]
        if bad:
            raise ValueError(f"cannot score {bad[0]}")
        return [v + 0.5 for v in batch]


def _collect(build, options=None):
    return run_collect(build, options=options).outputs


def _threaded(n: int = 3) -> PipelineOptions:
    return PipelineOptions(direct_num_workers=n, direct_running_mode="multi_threading")


def test_model_loads_once_per_process_across_bundles_and_threads():
    model = RunModel(Tagger, batch_size=1000, init_kwargs={"scale": 2})
    seen = _collect(lambda p: {"out": p | beam.Create(list(range(300))) | beam.Reshuffle()
                                  | model}, options=_threaded(3))["out"]
    assert sorted(r[0] for r in seen) == [2 * i for i in range(300)]
    batches = [r[3] for r in seen]
    assert sum(1 for _ in set(zip(batches, (r[2] for r in seen), strict=True))) >= 2
    assert len({r[2] for r in seen}) >= 2  # several worker threads ...
    assert len({r[1] for r in seen}) == 1  # ... one instance
    assert sm.loads_in_process(model.token) == 1


def test_shared_model_loads_once_for_concurrent_threads():
    loads = []

    def load():
        time.sleep(0.05)  # a slow load, so threads arrive while it runs
        loads.append(1)
        return object()

    shared = sm.acquire(uuid.uuid4().hex, load)
    got = []

    def use():
        with shared.borrow() as instance:
            got.append(id(instance))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(loads) == 1 and len(set(got)) == 1 and len(got) == 8


def test_concurrency_bounds_instances_and_gives_each_one_batch_at_a_time():
    busy: dict[int, int] = {}
    peak = []
    lock = threading.Lock()
    shared = sm.acquire(uuid.uuid4().hex, lambda: object(), concurrency=2)

    def use():
        with shared.borrow() as instance:
            with lock:
                busy[id(instance)] = busy.get(id(instance), 0) + 1
                peak.append(max(busy.values()))
                peak.append(sum(1 for v in busy.values() if v))
            time.sleep(0.02)
            with lock:
                busy[id(instance)] -= 1

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(busy) == 2  # two instances were built, never more
    assert max(peak) <= 2 and all(v == 0 for v in busy.values())


def test_batches_respect_batch_size():
    out = _collect(lambda p: {"out": p | beam.Create(list(range(50)))
                                 | RunModel(Tagger, batch_size=8)})["out"]
    sizes = [r[3] for r in out]
    assert sorted(r[0] for r in out) == list(range(50))
    assert max(sizes) == 8 and all(s <= 8 for s in sizes)


def test_autotuned_batches_grow_when_rows_are_cheap_and_shrink_when_they_get_dear(clock):
    cost = {"per_row": 0.001}

    def run(_instance, columns):
        clock.now += cost["per_row"] * len(columns[0])
        return list(columns[0])

    shared = sm.acquire(uuid.uuid4().hex, lambda: object())
    invoker = sm.BatchInvoker("cheap-then-dear", "stage", shared, run, batch_size=None,
                              target_seconds=0.1, max_batch_size=512, clock=clock)

    def step():
        n = invoker.next_size()
        outputs, failures = invoker.run([sm.Batch(list(range(n)))], str)
        assert outputs == list(range(n)) and not failures
        return n

    cheap = [step() for _ in range(12)]
    assert cheap[0] <= 2 and cheap[-1] == 100  # 0.1 s / 1 ms per row, reached by doubling
    assert cheap == sorted(cheap)
    cost["per_row"] = 0.02  # the rows get 20x dearer
    dear = [step() for _ in range(15)]
    assert dear[1] < cheap[-1] // 5 and dear[-1] == 5  # 0.1 s / 20 ms per row
    assert invoker.controller.describe().startswith("cheap-then-dear: batch")


def test_autotuned_batches_stay_under_the_memory_budget(clock):

    def run(_instance, columns):
        clock.now += 1e-6 * len(columns[0])
        return [np.zeros(1000, np.uint8) for _ in columns[0]]  # 1 kB out per row

    shared = sm.acquire(uuid.uuid4().hex, lambda: object())
    invoker = sm.BatchInvoker("big-rows", "stage", shared, run, batch_size=None,
                              memory_budget=50_000, max_batch_size=4096, clock=clock)
    sizes = []
    for _ in range(20):
        n = invoker.next_size()
        sizes.append(n)
        invoker.run([sm.Batch([b"x" * 1000] * n)], str)  # and 1 kB in
    assert max(sizes) <= 50 and sizes[-1] >= 20


def test_failing_rows_go_to_failed_output_and_the_rest_complete():
    def build(p):
        good, failed = (p | beam.Create(list(range(1, 41)))
                        | RunModel(Picky, batch_size=6).with_exception_handling())
        return {"good": good, "failed": failed}

    out = _collect(build)
    assert sorted(out["good"]) == [v + 0.5 for v in range(1, 41) if v % 7]
    failed = sorted(out["failed"], key=lambda r: r.element)
    assert [r.element for r in failed] == [7, 14, 21, 28, 35]
    assert all(isinstance(r, FailedRecord) and r.stage == "RunModel[Picky]" for r in failed)
    assert failed[0].error == "RunModel[Picky] failed for 7: Picky raised ValueError: cannot score 7"


def test_on_error_null_and_raise():
    out = _collect(lambda p: {"out": p | beam.Create([1, 7, None, 8])
                              | RunModel(Picky, batch_size=3, on_error="null")})["out"]
    assert sorted(out, key=str) == [1.5, 8.5, None, None]  # 7 failed; None never reached Picky
    with pytest.raises(UdfError, match=r"RunModel\[Picky\] failed for 14: .*cannot score 14"):
        _collect(lambda p: {"out": p | beam.Create([1, 14]) | RunModel(Picky)})


def test_wrong_number_of_outputs_is_an_error_naming_the_model():
    def short(batch):
        return list(batch)[:-1]

    with pytest.raises(UdfError, match="short returned 0 values for a batch of 1 rows"):
        _collect(lambda p: {"out": p | beam.Create([1, 2, 3]) | RunModel(short, 3)})
    out = _collect(lambda p: dict(zip(("good", "failed"), p | beam.Create(["a"])
                                         | RunModel(lambda b: 5).with_exception_handling(),
                                         strict=True)))
    assert out["good"] == [] and "returned a int, not one value per row" in out["failed"][0].error


def test_keyed_elements_keep_keys_timestamps_and_windows():
    def build(p):
        stamped = (p | beam.Create([("a", 1, 5), ("b", 2, 65), ("c", 3, 125)])
                   | beam.Map(lambda r: TimestampedValue((r[0], r[1]), r[2]))
                   | beam.WindowInto(FixedWindows(60)))
        out = stamped | RunModel(Tagger, batch_size=2, keyed=True)
        return {"out": out | beam.Map(lambda kv, w=beam.DoFn.WindowParam: (kv[0], kv[1][0],
                                                                          w.start.micros))}

    out = sorted(_collect(build)["out"])
    assert out == [("a", 1, 0), ("b", 2, 60_000_000), ("c", 3, 120_000_000)]
    bad = _collect(lambda p: dict(zip(("good", "failed"), p | beam.Create([5])
                                         | RunModel(Tagger, keyed=True)
                                         .with_exception_handling(), strict=True)))
    assert "keyed=True expects (key, value) pairs" in bad["failed"][0].error


class _Handler:
    """A Beam-style model handler."""

    def load_model(self):
        return {"offset": 100}

    def run_inference(self, batch, model, inference_args=None):
        return [v + model["offset"] for v in batch]


def test_handlers_functions_and_batch_helpers():
    out = _collect(lambda p: {"h": p | beam.Create([1, 2]) | RunModel(_Handler()),
                                 "f": p | "F" >> beam.Create([3]) | RunModel(
                                     lambda b: b.to_numpy() * 2)})
    assert sorted(out["h"]) == [101, 102] and out["f"] == [6]
    batch = sm.Batch([np.ones((2, 2, 3), np.uint8)] * 3)
    assert batch.to_numpy().shape == (3, 2, 2, 3)
    assert sm.Batch(["a", None]).to_arrow().to_pylist() == ["a", None]
    assert sm.Batch([1, 2]).to_arrow().type == pa.int64()


def test_bad_arguments_fail_when_the_pipeline_is_built():
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        RunModel(Tagger, batch_size=0)
    with pytest.raises(ConfigError, match="concurrency"):
        RunModel(Tagger, concurrency=0)
    with pytest.raises(ConfigError, match="needs a class, a function"):
        RunModel(42)
    with pytest.raises(ConfigError, match="init arguments need a class"):
        RunModel(len, init_args=(1,))


def test_transform_and_dofn_survive_pickling():
    t = RunModel(Tagger, batch_size=4, init_args=(3,)).with_exception_handling()
    for obj in (t, t.make_fn()):
        clone = pickler.loads(pickler.dumps(obj))
        assert clone.token == t.token and clone.batch_size == 4
    fn = pickle.loads(pickle.dumps(RunModel(Tagger).make_fn()))
    assert fn.model is Tagger
    assert pickle.loads(pickle.dumps(sm.Batch([1, 2]))) == [1, 2]


def test_released_models_stay_loaded_up_to_max_idle():
    tokens = [uuid.uuid4().hex for _ in range(sm.MAX_IDLE + 2)]
    for token in tokens:
        shared = sm.acquire(token, lambda: object())
        with shared.borrow():
            pass
        sm.release(token)
    kept = [t for t in tokens if sm.instances(t)]
    assert kept == tokens[-sm.MAX_IDLE:]  # the least recently released were freed
    again = sm.acquire(tokens[-1], lambda: object())
    with again.borrow():
        pass
    assert sm.loads_in_process(tokens[-1]) == 1  # reused, not reloaded
    sm.release(tokens[-1])
