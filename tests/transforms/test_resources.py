"""Step resource requests: checked when built, carried in the pipeline proto through fusion."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.internal import pickler

import mmbeam
from mmbeam import DataType, col
from mmbeam.errors import ConfigError
from mmbeam.runners import DaskRunner
from mmbeam.transforms import RunModel
from mmbeam.transforms.resources import ANNOTATION, StepResources, stage_resources


def _double(batch):
    return [2 * v for v in batch]


def test_requests_are_checked_merged_and_round_trip():
    with pytest.raises(ConfigError, match="concurrency must be a positive int"):
        RunModel(_double, concurrency=0)
    with pytest.raises(ConfigError, match="num_gpus must be a non-negative number"):
        RunModel(_double, num_gpus="one")
    a = StepResources(concurrency=4, num_cpus=1, steps=("a",))
    b = StepResources(concurrency=2, num_gpus=0.5, steps=("b",))
    merged = a.merge(b)
    assert merged == StepResources(2, 1, 0.5, ("a", "b"))
    assert StepResources.decode(merged.encode()) == merged
    assert not StepResources(steps=("only a name",)) and merged
    model = RunModel(_double, concurrency=2, num_gpus=1)
    assert pickler.loads(pickler.dumps(model)).resources == model.resources


def _fused_stages(pipeline: beam.Pipeline):
    proto = pipeline.to_runner_api()
    return DaskRunner().create_stages(proto)[1]


def test_run_model_request_reaches_its_fused_stage_only():
    pipeline = beam.Pipeline()
    _ = (pipeline | beam.Create([1, 2, 3]) | beam.Reshuffle()
         | RunModel(_double, concurrency=3, num_cpus=2, label="Doubler") | beam.Map(str))
    proto = pipeline.to_runner_api()
    annotated = [t.unique_name for t in proto.components.transforms.values()
                 if ANNOTATION in t.annotations]
    assert annotated and all(name.startswith("Doubler") for name in annotated)
    found = {stage.name: stage_resources(stage.transforms) for stage in _fused_stages(pipeline)}
    asked = [(r.concurrency, r.num_cpus, r.num_gpus, set(r.steps)) for r in found.values() if r]
    assert asked == [(3, 2, None, {"Doubler"})]
    assert sum(1 for r in found.values() if not r) >= 1  # the Create/Reshuffle stages ask nothing


def test_frame_udf_request_is_annotated_on_its_stage():
    @mmbeam.udf(return_dtype=DataType.int64(), concurrency=2, num_gpus=1)
    def plus_one(values):
        return [v + 1 for v in values]

    df = mmbeam.from_pydict({"v": [1, 2]}).with_column("w", plus_one(col("v")))
    pipeline = beam.Pipeline()
    df.to_pcollection(pipeline)
    found = [stage_resources(stage.transforms) for stage in _fused_stages(pipeline)]
    asked = [(r.concurrency, r.num_cpus, r.num_gpus, set(r.steps)) for r in found if r]
    assert asked == [(2, None, 1, {"udf plus_one"})]
