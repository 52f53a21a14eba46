"""The pieces of pools and streaming without an engine: which stages may run together, the
autoscaling policy (fake clock), resource requests (concurrency pairs) and the fusion phase
that splits stages where resource requests change."""

from __future__ import annotations

import apache_beam as beam
import pytest

from mmbeam.errors import ConfigError
from mmbeam.runners import RayRunner
from mmbeam.runners.pools import Autoscaler, PoolReport
from mmbeam.runners.streaming import QueueBook, StageGraph
from mmbeam.transforms import RunModel
from mmbeam.transforms.resources import StepResources

A, B, C, G = (b"materialize:a", b"materialize:b", b"materialize:c", b"group:g")


def _graph(streaming=True) -> StageGraph:
    """0 writes a; 1 reads a, writes b; 2 reads b, writes g (a GroupByKey's input); 3 reads g;
    4 reads a as a side input and b."""
    main = [set(), {A}, {B}, {G}, {B}]
    side = [set(), set(), set(), set(), {A}]
    writes = [{A}, {B}, {G}, set(), {C}]
    return StageGraph(main, side, writes, keyed=(), streaming=streaming)


def test_element_wise_stages_stream_and_blocking_reads_wait():
    graph = _graph()
    assert graph.streams(1, A) and graph.streams(2, B)
    assert not graph.streams(3, G)  # a GroupByKey waits for its whole input
    assert graph.may_start(1, {0}) and graph.may_start(2, {0, 1})
    assert not graph.may_start(3, {2}) and graph.may_start(3, set())
    assert not graph.may_start(4, {0, 1})  # reads a as a side input: a must be complete
    assert graph.may_start(4, {1})  # a is complete once 0 finished; b streams from 1
    assert not graph.complete(B, {1, 2}) and graph.complete(B, {2})
    assert graph.sole_streamed_reader(A) is None  # 1 and 4 read it
    assert graph.sole_streamed_reader(G) is None and graph.sole_streamed_reader(B) is None


def test_without_streaming_stages_run_one_after_another():
    graph = _graph(streaming=False)
    assert not graph.may_start(1, {0}) and graph.may_start(1, set())


def test_a_keyed_buffer_never_streams():
    graph = StageGraph([set(), {A}], [set(), set()], [{A}, set()], keyed={A})
    assert not graph.streams(1, A) and not graph.may_start(1, {0})


def test_queue_book_counts_produced_minus_consumed():
    book = QueueBook()
    book.produced(A, 1000)
    book.consumed(A, 400.5)
    assert book[A] == 599
    book.consumed(A, 5000)
    assert book[A] == 0


def test_autoscaler_grows_while_work_waits_and_every_slot_is_busy():
    now = [0.0]
    scaler = Autoscaler(1, 3, idle_seconds=1.0, clock=lambda: now[0])
    assert scaler.decide([1], starting=0, waiting_tasks=2) == "grow"
    assert scaler.decide([1], starting=2, waiting_tasks=2) == ""  # max reached with those
    assert scaler.decide([0], starting=0, waiting_tasks=2) == ""  # a slot is free
    assert scaler.decide([1, 1, 1], starting=0, waiting_tasks=5) == ""  # at max
    assert scaler.decide([], starting=1, waiting_tasks=5) == ""  # its first slot is starting


def test_autoscaler_shrinks_the_last_slot_after_it_idles_never_below_min():
    now = [0.0]
    scaler = Autoscaler(1, 3, idle_seconds=1.0, clock=lambda: now[0])
    assert scaler.decide([1, 1], 0, 0) == ""
    now[0] = 0.5
    assert scaler.decide([0, 0], 0, 0) == ""  # idle for 0.5 s only
    now[0] = 1.2
    assert scaler.decide([1, 0], 0, 1) == ""  # work waits: keep it
    assert scaler.decide([1, 0], 0, 0) == "shrink"
    now[0] = 5.0
    assert scaler.decide([0], 0, 0) == ""  # min reached


def test_pool_report_records_changes_and_the_peak():
    report = PoolReport("s", "pool", queue_limit=100)
    report.size(0.0, 0)  # its first actors still starting: not a size yet
    report.size(0.0, 1)
    report.size(0.1, 1)
    report.size(0.2, 2)
    report.queued(0.0, 10)
    report.queued(0.5, 80)
    assert report.sizes == [(0.0, 1), (0.2, 2)] and report.max_queued_bytes == 80
    assert "limit 100 B" in report.describe()


def test_concurrency_pairs_round_trip_and_bad_ones_are_refused():
    request = StepResources((1, 4), num_cpus=1, steps=("m",))
    assert StepResources.decode(request.encode()) == request and request.bounds == (1, 4)
    assert StepResources(3).bounds == (3, 3) and StepResources().bounds is None
    assert StepResources(2).merge(StepResources((1, 3))).concurrency == (1, 2)
    for bad in [(0, 2), (3, 2), (1, 2, 3), "2", 0, True]:
        with pytest.raises(ConfigError, match="concurrency"):
            StepResources(bad)


class _Model:
    def __call__(self, batch):
        return list(batch)


def test_a_stage_boundary_where_the_resource_request_changes():
    pipeline = beam.Pipeline()
    _ = (pipeline | beam.Create([1, 2]) | "Prep" >> beam.Map(lambda x: x)
         | RunModel(_Model, num_cpus=1, label="Model") | "Post" >> beam.Map(str))
    _, stages = RayRunner().create_stages(pipeline.to_runner_api())
    where = {name: s.name for s in stages for t in s.transforms
             for name in ("Prep", "Model", "Post") if t.unique_name.startswith(name)}
    assert len(set(where.values())) == 3, where  # prep, model and post: three stages
