"""DataTypes inside frames: tensor, fixed-size list, struct and image(mode, height, width)
columns built, cast, collected and stored; raw Beam and the frame in one pipeline."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

import mmbeam as mb
from mmbeam import DataType, col
from mmbeam.errors import CastError, SchemaError
from mmbeam.testing import run_collect


def test_lists_cast_to_tensors_of_a_fixed_or_any_shape(engine):
    df = mb.from_pydict({"l": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], None]})
    fixed = df.with_column("t", col("l").cast(DataType.tensor(DataType.float32(), (2, 2))))
    assert fixed.schema()["t"] == DataType.tensor(DataType.float32(), (2, 2))
    rows = fixed.to_pydict()["t"]
    assert rows[0].shape == (2, 2) and rows[0].dtype == np.float32 and rows[2] is None
    np.testing.assert_array_equal(rows[1], [[5, 6], [7, 8]])
    free = fixed.with_column("u", col("t").cast(DataType.tensor(DataType.float64())))
    assert free.schema()["u"] == DataType.tensor(DataType.float64())
    out = free.to_pydict()["u"]
    assert out[0].shape == (2, 2) and out[0].dtype == np.float64 and out[2] is None
    with pytest.raises(CastError, match="row 0 has 4 values.*needs 9"):
        df.with_column("t", col("l").cast(DataType.tensor(DataType.float32(), (3, 3)))).collect()


def test_fixed_size_lists_and_structs_survive_frames_and_parquet(tmp_path, engine):
    # a null fixed-size list: pyarrow 25 alone writes it to Parquet but cannot read it back
    df = mb.from_pydict({"p": [[1, 2], None, [5, 6]],
                         "s": [{"a": 1, "b": "x"}, {"a": 2, "b": None}, None]})
    df = df.with_column("p", col("p").cast(DataType.fixed_size_list(DataType.int32(), 2)))
    assert df.schema()["p"] == DataType.fixed_size_list(DataType.int32(), 2)
    assert df.schema()["s"] == DataType.struct({"a": DataType.int64(), "b": DataType.string()})
    df.write_parquet(str(tmp_path / "out"))
    back = mb.read_parquet(str(tmp_path / "out"))
    assert back.schema() == df.schema()
    assert back.to_pydict() == {"p": [[1, 2], None, [5, 6]],
                                "s": [{"a": 1, "b": "x"}, {"a": 2, "b": None}, None]}


def test_image_casts_convert_modes_and_check_fixed_sizes(engine):
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 200
    df = mb.from_pydict({"i": [img, None]})
    sized = df.with_column("j", col("i").cast(DataType.image("RGB", 4, 5)))
    assert repr(sized.schema()["j"]) == "Image[RGB; 4 x 5]"
    assert sized.to_pydict()["j"][0].shape == (4, 5, 3)
    gray = df.with_column("g", col("i").cast(DataType.image("L"))).to_pydict()["g"]
    assert gray[0].shape == (4, 5, 1) and gray[1] is None
    assert int(gray[0][0, 0, 0]) == round(200 * 299 / 1000)  # ITU-R 601 luma of pure red
    with pytest.raises(CastError, match=r"col\(i\) to Image\[RGB; 8 x 8\].*row 0 is 4 x 5"):
        df.with_column("j", col("i").cast(DataType.image("RGB", 8, 8))).collect()
    with pytest.raises(SchemaError, match="cannot cast"):
        mb.from_pydict({"s": ["a"]}).with_column("x", col("s").cast(DataType.image()))


def test_raw_beam_and_frames_in_one_pipeline():
    def build(p):
        raw = p | "rows" >> beam.Create([{"n": i, "s": f"x{i}"} for i in range(10)])
        frame = mb.from_pcollection(raw, {"n": DataType.int64(), "s": DataType.string()})
        names = mb.from_pydict({"n": [1, 2, 3, 40], "w": ["a", "b", "c", "d"]})
        joined = frame.where(col("n") > 1).join(names, on="n").with_column(
            "t", col("s") + col("w"))
        rows = joined.to_pcollection(p) | "pairs" >> beam.Map(lambda r: (r["n"], r["t"]))
        batches = p | "batches" >> beam.Create([pa.record_batch({"n": [1, 2]}),
                                                pa.record_batch({"n": [3]})])
        total = mb.from_pcollection(batches, {"n": DataType.int64()}).agg(col("n").sum())
        return rows, total.to_pcollection(p)

    rows, total = run_collect(build).outputs
    assert sorted(rows) == [(2, "x2b"), (3, "x3c")]
    assert total == [{"n": 6}]
