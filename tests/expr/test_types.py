"""DataType names and Arrow mapping, and the image extension type."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from mmbeam.errors import ConfigError, SchemaError
from mmbeam.types import DataType, ImageArrowType, Schema, arrow_to_images, images_to_arrow


@pytest.mark.parametrize("dtype, name", [
    (DataType.string(), "Utf8"),
    (DataType.bool(), "Boolean"),
    (DataType.int8(), "Int8"),
    (DataType.int16(), "Int16"),
    (DataType.int32(), "Int32"),
    (DataType.int64(), "Int64"),
    (DataType.uint8(), "UInt8"),
    (DataType.uint64(), "UInt64"),
    (DataType.float32(), "Float32"),
    (DataType.float64(), "Float64"),
    (DataType.binary(), "Binary"),
    (DataType.null(), "Null"),
    (DataType.date(), "Date"),
    (DataType.list(DataType.string()), "List[Utf8]"),
    (DataType.fixed_size_list(dtype=DataType.string(), size=2), "FixedSizeList[Utf8; 2]"),
    (DataType.struct({"a": DataType.int64(), "b": DataType.string()}), "Struct[a: Int64, b: Utf8]"),
    (DataType.tensor(DataType.float32()), "Tensor[Float32]"),
    (DataType.image("RGB"), "Image[RGB]"),
    (DataType.image(), "Image[MIXED]"),
    (DataType.image("L", 4, 5), "Image[L; 4 x 5]"),
])
def test_names_match_daft(dtype, name):
    assert repr(dtype) == name
    # every type round-trips through its canonical Arrow type and pickle
    assert DataType.from_arrow(dtype.to_arrow()) == dtype
    assert pickle.loads(pickle.dumps(dtype)) == dtype


def test_arrow_types_map_to_canonical_large_offsets():
    assert DataType.from_arrow(pa.string()) == DataType.string()
    assert DataType.string().to_arrow() == pa.large_string()
    assert DataType.from_arrow(pa.dictionary(pa.int32(), pa.string())) == DataType.string()
    assert DataType.from_arrow(pa.float64()) == DataType.float64()
    assert DataType.infer(1.5) == DataType.float64()
    assert DataType.infer("x") == DataType.string()
    assert DataType.infer(None) == DataType.null()


def test_bad_type_arguments():
    with pytest.raises(ConfigError):
        DataType.image("CMYK")
    with pytest.raises(ConfigError):
        DataType.fixed_size_list(DataType.string(), 0)
    with pytest.raises(ConfigError):
        DataType.list("int")


def test_images_round_trip_without_copy():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    gray = np.full((4, 5), 7, np.uint8)
    arr = images_to_arrow([rgb, None, gray])
    assert isinstance(arr.type, ImageArrowType) and arr.type.mode is None
    assert DataType.from_arrow(arr.type) == DataType.image()
    back = arrow_to_images(arr)
    assert back[1] is None
    np.testing.assert_array_equal(back[0], rgb)
    assert back[2].shape == (4, 5, 1) and (back[2] == 7).all()
    assert not back[0].flags.writeable  # a view of the Arrow buffer
    # slices and chunked arrays keep their offsets
    np.testing.assert_array_equal(arrow_to_images(arr.slice(2))[0][:, :, 0], gray)
    assert len(arrow_to_images(pa.chunked_array([arr, arr]))) == 6


def test_image_column_mode_is_enforced():
    with pytest.raises(SchemaError, match="Image\\[RGB\\]"):
        images_to_arrow([np.zeros((2, 2), np.uint8)], "RGB")


def test_image_type_survives_ipc():
    arr = images_to_arrow([np.zeros((2, 2, 3), np.uint8)], "RGB")
    table = pa.table({"img": arr})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    back = pa.ipc.open_file(sink.getvalue()).read_all()
    assert back.schema.field("img").type == ImageArrowType("RGB")
    assert pickle.loads(pickle.dumps(table)).equals(table)


def test_schema_lookup_suggests():
    s = Schema([("full_name", DataType.string())])
    with pytest.raises(SchemaError, match="Did you mean 'full_name'"):
        s["fullname"]
    with pytest.raises(SchemaError, match="duplicate"):
        Schema([("a", DataType.int64()), ("a", DataType.int64())])
