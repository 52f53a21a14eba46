"""The distributed runners' drivers show each stage's finished elements out of its total."""

from __future__ import annotations

import io

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
