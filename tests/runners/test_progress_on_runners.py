"""The distributed runners' drivers show each stage's finished elements out of its total."""

from __future__ import annotations

import io
import re

import apache_beam as beam
import pytest

from mmbeam.progress import Progress, set_progress
from mmbeam.testing import run_collect


@pytest.mark.parametrize("runner_name", ["dask", "ray"])
def test_driver_reports_every_stage_with_its_total(make_runner):
    out = io.StringIO()
    previous = set_progress(Progress(out, mode="log", log_interval=0.0))
    try:
        collected = run_collect(
            lambda p: p | beam.Create(range(40)) | "Square" >> beam.Map(lambda x: x * x)
            | "Keep" >> beam.Filter(lambda x: x % 2 == 0), runner=make_runner())
    finally:
        set_progress(previous)
    assert sorted(collected.outputs) == sorted(x * x for x in range(40) if x % 2 == 0)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("mmbeam progress: ")
    stages = last.removeprefix("mmbeam progress: ").split(" | ")
    assert any("Square" in s and "40 of 40 rows" in s for s in stages), last
    # each stage under its transforms' labels, not Beam's fused stage name
    labels = [re.match(r"(.*?) [\d,]+ (of|rows)", s).group(1) for s in stages]
    assert not any("ref_" in label or "/" in label for label in labels), last
    assert len(set(labels)) == len(labels), labels


def test_readable_stage_names_keep_the_user_transforms_in_order():
    from mmbeam.runners.scheduler import readable_stage_name

    fused = ("(((Create/Reshuffle/GroupByKey/Read)+(ref_AppliedPTransform_Create-Map-decode-_13))"
             "+(ref_AppliedPTransform_Download-ParDo-ElementFn-_15+ref_AppliedPTransform_Decode"
             "Image-ParDo-ElementFn-_17))+(ref_PCollection_PCollection_11/Write)")
    assert readable_stage_name(fused) == "Create+Download+DecodeImage"
    assert readable_stage_name("(ref_PCollection_PCollection_9/Read)+(ref_AppliedPTransform_"
                               "RunModel-Model-ParDo-_RunModelFn-_16)") == "RunModel"
    assert readable_stage_name("Group/Read") == "Group/Read"  # names no transform: kept
