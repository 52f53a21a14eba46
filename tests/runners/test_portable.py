"""Every mmbeam transform and frame pipeline under Beam's PortableRunner (the Flink/Dataflow path).

``--job_endpoint=embed --environment_type=LOOPBACK`` submits the pipeline proto through the job
API with artifact staging, and runs the SDK harness in this process, so the loopback servers and
local files are reachable. Each pipeline runs on the in-process FnApiRunner too and the results
must be the same. The coder tests check that mmbeam's types travel with mmbeam's coders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.coders import coders as beam_coders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.portable_runner import PortableRunner
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

import mmbeam.frame as mf
from mmbeam import transforms as mt
from mmbeam.frame import col, context
from mmbeam.runners.direct import local_pipeline
from mmbeam.testing.collect import run_collect
from mmbeam.testing.images import encode_sample, make_image, truncated
from mmbeam.transforms import coders as mc
from mmbeam.types import images_to_arrow

ROOT = Path(__file__).resolve().parents[2]
PORTABLE_FLAGS = {"job_endpoint": "embed", "environment_type": "LOOPBACK"}
PICKLING = (beam_coders.FastPrimitivesCoder, beam_coders.PickleCoder)


def run_portable(build):
    return run_collect(build, runner=PortableRunner(), options=PipelineOptions(**PORTABLE_FLAGS))


def pickling_coders(coder) -> list:
    """Coders in ``coder``'s tree that pickle unknown values (mmbeam's ValueCoder is allowed:
    it codes arrays and batches itself)."""
    if type(coder) in PICKLING:
        return [coder]
    return [c for sub in coder._get_component_coders() for c in pickling_coders(sub)]


def pcollection_coders(pipeline: beam.Pipeline) -> dict[str, beam_coders.Coder]:
    """The coder of every PCollection in the proto that a runner would receive."""
    proto, ctx = pipeline.to_runner_api(return_context=True)
    return {pc.unique_name: ctx.coders.get_by_id(pc.coder_id)
            for pc in proto.components.pcollections.values()}


def arrays_key(value):
    """A sortable, comparable form of a collected value that may hold numpy arrays."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tuple):
        return tuple(arrays_key(v) for v in value)
    return ("value", repr(value))


# -- coders ---------------------------------------------------------------------------------
@pytest.mark.parametrize("array", [
    make_image(7, 5, seed=1),
    make_image(6, 4, mode="L", seed=2),
    np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4)),
    np.zeros((0, 3, 3), np.uint8),
    np.float64(2.5),
], ids=["rgb", "gray", "fortran-bigendian", "empty", "scalar"])
def test_ndarray_coder_round_trips_dtype_shape_and_pixels(array):
    coder = beam.coders.registry.get_coder(np.ndarray)
    assert isinstance(coder, mc.NdarrayCoder)
    out = coder.decode(coder.encode(array))
    assert out.dtype == np.asarray(array).dtype and out.shape == np.shape(array)
    assert np.array_equal(out, array) and out.flags.writeable


def test_ndarray_coder_refuses_object_arrays_with_a_clear_error():
    with pytest.raises(TypeError, match="object array"):
        mc.NdarrayCoder().encode(np.array([{"a": 1}], dtype=object))


def test_arrow_coder_round_trips_batches_with_image_columns_and_nulls():
    coder = beam.coders.registry.get_coder(pa.RecordBatch)
    assert isinstance(coder, mc.ArrowBatchCoder)
    images = images_to_arrow([make_image(4, 3, seed=3), None])
    batch = pa.record_batch({"img": images, "s": ["a", None], "n": [1, None],
                             "l": pa.array([[1, 2], None], pa.list_(pa.int64()))})
    out = coder.decode(coder.encode(batch))
    assert out.equals(batch) and out.schema.equals(batch.schema)
    assert out.schema.field("img").type == batch.schema.field("img").type  # extension type kept
    empty = batch.slice(0, 0)
    assert coder.decode(coder.encode(empty)).equals(empty)


@pytest.mark.parametrize("element", [
    b"\xff\xd8 not an image",
    ("cats/7.jpg", make_image(3, 2, seed=4)),
    "http://127.0.0.1:1/x.jpg",
    None,
    (1, {"nested": [1.5, None]}),
], ids=["bytes", "keyed-array", "url", "none", "nested"])
def test_failed_record_coder_round_trips_any_element(element):
    coder = beam.coders.registry.get_coder(mt.FailedRecord)
    assert isinstance(coder, mc.FailedRecordCoder)
    record = mt.FailedRecord(element, "ResizeImage", "ResizeImage failed: ImageError: bad")
    out = coder.decode(coder.encode(record))
    assert isinstance(out, mt.FailedRecord)
    assert arrays_key(out.element) == arrays_key(element) and out[1:] == record[1:]


def test_value_coder_codes_arrays_itself_and_pickles_only_other_objects():
    coder = mc.ValueCoder()
    image = make_image(2, 2, seed=5)
    encoded = coder.encode(("k", image))
    assert b"pickle" not in encoded and image.tobytes() in encoded
    assert arrays_key(coder.decode(encoded)) == arrays_key(("k", image))
    odd = complex(1, 2)  # not known to FastPrimitivesCoder nor to mmbeam: pickled
    assert coder.decode(coder.encode(odd)) == odd


def test_coders_survive_pickling_and_reject_what_they_do_not_code():
    import pickle

    for coder in (mc.ArrowBatchCoder(), mc.NdarrayCoder(), mc.FailedRecordCoder(),
                  mc.ValueCoder()):
        clone = pickle.loads(pickle.dumps(coder))
        assert clone == coder and type(clone) is type(coder)
    with pytest.raises(TypeError, match="encodes pyarrow.RecordBatch, got Table"):
        mc.ArrowBatchCoder().encode(pa.table({"a": [1]}))


def test_registry_picks_mmbeam_coders_from_type_hints():
    def coder_of(hint):
        return beam.coders.registry.get_coder(convert_to_beam_type(hint))

    assert repr(coder_of(mc.KeyedBatch)) == "TupleCoder[TupleSequenceCoder[VarIntCoder], " \
                                            "ArrowBatchCoder]"
    assert repr(coder_of(tuple[str, np.ndarray | None])) == \
        "TupleCoder[StrUtf8Coder, NullableCoder[NdarrayCoder]]"


# -- transforms -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(mmbeam_http, serve_jpegs):
    """Six JPEGs and two broken inputs on the loopback server: key -> URL."""
    urls = serve_jpegs("portable", [(40 + 9 * i, 30 + 5 * i) for i in range(6)])
    urls["cut.jpg"] = mmbeam_http.add("portable/cut.jpg", truncated(
        encode_sample(make_image(64, 64, seed=9), "JPEG"), keep=0.2))
    urls["gone.jpg"] = mmbeam_http.url("status/404")
    return urls


def image_chain(urls: dict[str, str], out: str):
    """Keyed download → decode → resize → encode → upload, failures from every stage; the
    Reshuffles force arrays and failure records through their coders."""

    def build(p):
        keyed = p | beam.Create(sorted(urls.items())).with_output_types(tuple[str, str])
        data, failed_download = keyed | mt.Download(4, retries=0, keyed=True) \
            .with_exception_handling()
        pixels, failed_decode = data | mt.DecodeImage(keyed=True).with_exception_handling()
        pixels = pixels | "ShufflePixels" >> beam.Reshuffle()
        written, failed_upload = (
            pixels
            | mt.ResizeImage(16, 12, mode="fit", keyed=True)
            | mt.EncodeImage("PNG", keyed=True)
            | mt.Upload(out, keyed=True).with_exception_handling()
        )
        failed = ((failed_download, failed_decode, failed_upload) | beam.Flatten()
                  | "ShuffleFailures" >> beam.Reshuffle())
        return {"pixels": pixels, "written": written, "failed": failed}

    return build


@pytest.mark.distributed
def test_image_chain_runs_portable_with_the_local_results(served, tmp_path):
    local = run_collect(image_chain(served, str(tmp_path / "local")))
    portable = run_portable(image_chain(served, str(tmp_path / "portable")))

    def files(run, folder):
        return {k: Path(p).read_bytes() for k, p in run.outputs["written"]
                if Path(p).parent == tmp_path / folder}

    assert len(files(local, "local")) == 6
    assert files(portable, "portable") == files(local, "local")
    assert sorted(map(arrays_key, portable.outputs["pixels"])) == \
        sorted(map(arrays_key, local.outputs["pixels"]))
    failed = sorted(portable.outputs["failed"], key=lambda r: r.stage)
    assert [(r.element[0], r.stage) for r in failed] == [("cut.jpg", "DecodeImage"),
                                                         ("gone.jpg", "Download")]
    assert "404" in failed[1].error or "not found" in failed[1].error
    assert sorted(failed) == sorted(local.outputs["failed"])
    for stage in ("Download", "DecodeImage", "Upload"):
        assert portable.counter(stage, "succeeded") == local.counter(stage, "succeeded") > 0
    assert portable.counter("DecodeImage", "failed") == 1


@pytest.mark.distributed
def test_nulls_and_unkeyed_elements_cross_the_runner_boundary(served):
    def build(p):
        return (p | beam.Create(sorted(served.values()))
                | mt.Download(4, on_error="null", retries=0)
                | mt.DecodeImage(on_error="null")
                | mt.ResizeImage(8, 8, on_error="null")
                | beam.Reshuffle())

    local, portable = run_collect(build), run_portable(build)
    assert sum(v is None for v in portable.outputs) == 2
    assert sorted(map(arrays_key, portable.outputs)) == sorted(map(arrays_key, local.outputs))


@pytest.mark.distributed
def test_join_transform_runs_portable_with_the_local_results():
    owners = [{"id": i, "name": f"o{i}"} for i in range(5)] + [{"id": None, "name": "nobody"}]
    pets = [{"id": i % 3, "pet": f"p{i}"} for i in range(6)]

    def build(p):
        left = p | "Owners" >> beam.Create(owners)
        right = p | "Pets" >> beam.Create(pets)
        return {how: (left, right) | how >> mt.Join(on="id", how=how)
                for how in ("inner", "outer", "anti")}

    def rows(run):
        return {how: sorted(json.dumps(r, sort_keys=True) for r in out)
                for how, out in run.outputs.items()}

    local, portable = run_collect(build), run_portable(build)
    assert rows(portable) == rows(local)
    assert len(portable.outputs["inner"]) == 6


def test_transform_pcollections_use_mmbeam_coders_not_pickle(served, tmp_path):
    pipeline = local_pipeline()
    image_chain(served, str(tmp_path))(pipeline)
    coders = pcollection_coders(pipeline)
    # Beam's own internals keep a pickled timestamp slot (Reshuffle) or the Create values
    ours = {n: c for n, c in coders.items() if "Create" not in n and "ReshufflePerKey" not in n}
    assert len(ours) > 10 and not {n: c for n, c in ours.items() if pickling_coders(c)}
    decoded = [c for n, c in coders.items() if "DecodeImage/" in n and n.endswith(".None")]
    assert repr(decoded[0]) == "TupleCoder[StrUtf8Coder, NullableCoder[NdarrayCoder]]"
    failed = [c for n, c in coders.items() if n.endswith(".failed")]
    assert len(failed) == 3 and all(isinstance(c, mc.FailedRecordCoder) for c in failed)


# -- frame ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_data(tmp_path_factory, mmbeam_http):
    root = tmp_path_factory.mktemp("portable-frame")
    n = 40
    pq.write_table(pa.table({
        "id": list(range(n)), "name": [f"n{i % 7}" for i in range(n)],
        "v": [float(i) if i % 5 else None for i in range(n)],
        "tags": [[i, i + 1] if i % 4 else [] for i in range(n)]}), root / "a.parquet")
    for country in ("DE", "FR"):
        (root / "hive" / f"country={country}").mkdir(parents=True)
        pq.write_table(pa.table({"id": [1, 2, 3], "score": [1.0, 2.0, 3.0]}),
                       root / "hive" / f"country={country}" / "part-0.parquet")
    (root / "b.csv").write_text("id,city\n" + "".join(f"{i},c{i % 3}\n"
                                                      for i in range(0, 60, 2)))
    urls = [mmbeam_http.add(f"portable-frame/{i}.jpg",
                            encode_sample(make_image(30 + i, 20 + i, seed=i), "JPEG"))
            for i in range(5)] + [None]
    return {"root": root, "urls": urls}


def _parquet(d):
    return mf.read_parquet(str(d["root"] / "a.parquet"))


def _csv(d):
    return mf.read_csv(str(d["root"] / "b.csv"))


FRAMES = {
    "parquet-project-filter": lambda d: _parquet(d).with_column(
        "w", col("v") * 2 + 1).where(col("id") > 3).select("id", "w", "name"),
    "hive-partition-filter": lambda d: mf.read_parquet(
        str(d["root"] / "hive" / "**")).where(col("country") == "FR"),
    "csv-string-ops": lambda d: _csv(d).with_column(
        "label", col("city").str.upper() + "-" + col("city")),
    "join-left": lambda d: _parquet(d).join(_csv(d), on="id", how="left").select(
        "id", "city", "v"),
    "join-outer": lambda d: _parquet(d).join(_csv(d), on="id", how="outer"),
    "groupby": lambda d: _parquet(d).groupby("name").agg(
        col("v").sum().alias("s"), col("id").count().alias("c"), col("v").mean().alias("m")),
    "sort-limit": lambda d: _parquet(d).sort("v", desc=True).limit(5),
    "distinct": lambda d: _parquet(d).select("name").distinct(),
    "explode": lambda d: _parquet(d).select("id", "tags").explode("tags"),
    "multimodal": lambda d: mf.from_pydict({"url": d["urls"]}).with_column(
        "img", col("url").url.download(on_error="null").image.decode()).with_column(
        "png", col("img").image.resize(8, 6).image.encode("PNG")).select(
        "url", col("img").image.width().alias("w"), "png"),
}
#: frames whose row order is defined (source order, or sorted), so it must match too
ORDERED = {"parquet-project-filter", "explode", "sort-limit", "multimodal"}


@pytest.fixture
def portable_frames():
    """Frames in this test run on the PortableRunner (through mmbeam.context.set_runner);
    tests/conftest.py restores the runner afterwards."""
    context.set_runner(PortableRunner, "portable", **PORTABLE_FLAGS)


def _sorted(table: pa.Table) -> pa.Table:
    """Rows in one order (Beam does not order shuffled rows), by every scalar column."""
    t = pa.types
    scalar = [f.name for f in table.schema if t.is_integer(f.type) or t.is_floating(f.type)
              or t.is_string(f.type) or t.is_large_string(f.type) or t.is_boolean(f.type)]
    return table.sort_by([(name, "ascending") for name in scalar])


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_frame_pipeline_runs_portable_with_the_local_results(name, frame_data, portable_frames):
    make = FRAMES[name]
    with_portable = make(frame_data).to_arrow()
    context.set_runner_local()
    with_local = make(frame_data).to_arrow()
    assert with_local.num_rows > 0
    assert with_portable.schema.equals(with_local.schema)
    assert _sorted(with_portable).equals(_sorted(with_local))
    if name in ORDERED:
        assert with_portable.equals(with_local)


def test_frame_write_parquet_runs_portable(frame_data, portable_frames, tmp_path):
    frame = _parquet(frame_data).where(col("id") < 30)
    written = frame.write_parquet(str(tmp_path / "out")).to_pydict()["path"]
    assert written and all(Path(p).parent == tmp_path / "out" for p in written)
    back = pa.concat_tables([pq.read_table(p) for p in written])
    context.set_runner_local()
    assert _sorted(back).equals(_sorted(frame.to_arrow()))


@pytest.mark.distributed
def test_frame_to_pcollection_inside_a_portable_pipeline(frame_data):
    frame = _parquet(frame_data).join(_csv(frame_data), on="id").select("id", "city")

    def build(p):
        return frame.to_pcollection(p) | beam.Map(lambda row: (row["id"], row["city"]))

    assert sorted(run_portable(build).outputs) == [(i, f"c{i % 3}") for i in range(0, 40, 2)]


@pytest.mark.distributed
@pytest.mark.parametrize("sink", ["to_pydict", "write_parquet"])
def test_frame_sink_on_a_runner_without_shared_disk_needs_temp_location(sink, tmp_path):
    """Workers of an EXTERNAL environment may be other machines: without --temp_location the
    run is refused before anything starts (no job, no file), naming the option."""
    from mmbeam.errors import ConfigError

    context.set_runner(PortableRunner, "portable", job_endpoint="embed",
                       environment_type="EXTERNAL", environment_config="localhost:1")
    frame = mf.from_pydict({"n": [1, 2, 3]}).where(col("n") > 1)
    try:
        with pytest.raises(ConfigError, match="--temp_location"):
            if sink == "to_pydict":
                frame.to_pydict()
            else:
                frame.write_parquet(str(tmp_path / "out"))
    finally:
        context.set_runner_local()
    assert not (tmp_path / "out").exists()


def test_frame_pcollections_carry_arrow_batches_not_pickles(frame_data):
    frame = (_parquet(frame_data).join(_csv(frame_data), on="id", how="left")
             .explode("tags").groupby("city").agg(col("v").sum().alias("s"))
             .distinct().sort("s").limit(2))
    pipeline = local_pipeline()
    frame.to_pcollection(pipeline, batches=True)
    coders = pcollection_coders(pipeline)
    # Create's own decode step holds the scan tasks (file specs): only that may pickle
    pickled = {n: c for n, c in coders.items() if pickling_coders(c) and "Create" not in n
               and "ScanTasks" not in n}
    assert not pickled
    batches = [n for n, c in coders.items() if "ArrowBatchCoder" in repr(c)]
    assert len(batches) >= 10


# -- example and packaging --------------------------------------------------------------------
def _load_example():
    spec = importlib.util.spec_from_file_location(
        "dataflow_thumbnails", ROOT / "examples" / "dataflow_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.distributed
def test_dataflow_example_runs_on_gcs_through_the_portable_runner(mmbeam_gcs,
                                                                   mmbeam_bucket_name):
    from mmbeam.testing.gcs import PROJECT

    bucket = mmbeam_gcs.make_bucket(mmbeam_bucket_name)
    for i in range(4):
        mmbeam_gcs.put(f"{bucket}/photos/{i}.jpg",
                       encode_sample(make_image(300 + 40 * i, 200, seed=i), "JPEG"))
    mmbeam_gcs.put(f"{bucket}/photos/broken.jpg", b"<html>not a JPEG</html>")
    _load_example().main([
        "--input", f"{bucket}/photos/*.jpg", "--output", f"{bucket}/thumbs", "--size", "64",
        "--gcs_endpoint", mmbeam_gcs.endpoint_url, "--gcs_project", PROJECT,
        "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK",
    ])
    names = sorted(url.rsplit("/", 1)[1] for url in mmbeam_gcs.ls(f"{bucket}/thumbs"))
    assert names == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "_failures.jsonl", "_manifest.txt"]
    import io

    from PIL import Image

    thumb = Image.open(io.BytesIO(mmbeam_gcs.get(f"{bucket}/thumbs/3.jpg")))
    assert thumb.format == "JPEG" and max(thumb.size) == 64
    failures = [json.loads(line) for line in
                mmbeam_gcs.get(f"{bucket}/thumbs/_failures.jsonl").decode().splitlines()]
    assert [(f["name"], f["stage"]) for f in failures] == [("broken.jpg", "DecodeImage")]
    manifest = mmbeam_gcs.get(f"{bucket}/thumbs/_manifest.txt").decode().split()
    assert manifest == [f"{bucket}/thumbs/{i}.jpg" for i in range(4)]


def _flags(text: str) -> set[str]:
    import re

    return set(re.findall(r"(?<![\w-])--([a-z][a-z_]+)", text))


def test_runner_docs_name_every_option_the_example_uses():
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    example = (ROOT / "examples" / "dataflow_thumbnails.py").read_text()
    docs = (ROOT / "docs" / "runners.md").read_text()
    used = _flags(example.split('"""')[1])
    assert {"runner", "project", "region", "temp_location", "setup_file", "flink_master",
            "environment_type", "job_endpoint"} <= used
    assert not used - _flags(docs), "options the example uses but docs/runners.md does not name"

    parser = _BeamArgumentParser()
    stack = [PipelineOptions]
    while stack:
        cls = stack.pop()
        cls._add_argparse_args(parser)
        stack.extend(cls.__subclasses__())
    beam_flags = {s[2:] for a in parser._actions for s in a.option_strings}
    script_flags = _flags(example.split('"""', 2)[2])
    worker_pool = {"service_port"}  # apache_beam.runners.worker.worker_pool_main's own flag
    unknown = _flags(docs) - beam_flags - script_flags - worker_pool
    assert not unknown, "docs/runners.md names options neither Beam nor the example knows"


def test_sdist_packs_every_module_and_the_runtime_requirements(tmp_path):
    # built from a copy, so setup.py's egg-info and build folders never land in the checkout
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy2(ROOT / "setup.py", source)
    shutil.copytree(ROOT / "mmbeam", source / "mmbeam",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                   cwd=source, check=True, capture_output=True)
    (archive,) = (tmp_path / "dist").glob("mmbeam-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        requires = next(tar.extractfile(m).read().decode() for m in tar.getmembers()
                        if m.name.endswith("egg-info/requires.txt"))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "mmbeam").rglob("*.py")}
    assert modules and not modules - names, "modules a Dataflow worker would miss"
    runtime = requires.split("\n[", 1)[0]
    for package in ("apache-beam", "pyarrow", "numpy", "pillow", "opencv-python-headless",
                    "fsspec", "aiohttp"):
        assert package in runtime
    extra = (ROOT / "examples" / "requirements-dataflow.txt").read_text()
    assert "gcsfs" in extra and "gcsfs" not in runtime  # why the example passes that file
    assert os.path.getsize(archive) > 10_000
