"""Data types of mmbeam columns, their Arrow layout, and the image logical type.

A :class:`DataType` is a small immutable value (kind + parameters) with the names Daft users
know (``Utf8``, ``Int64``, ``Image[RGB]``). Every type maps to one canonical Arrow type, so a
column's declared type and the Arrow arrays that move between stages always agree.

Images are an Arrow extension type over ``struct<width: int32, height: int32, mode: string,
data: large_binary>``; the pixel bytes of one row are viewable as a ``numpy`` HxWxC array
without a copy (:func:`arrow_to_images`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from difflib import get_close_matches
from typing import Any

import numpy as np
import pyarrow as pa

from mmbeam.errors import CastError, ConfigError, SchemaError, UnsupportedError

__all__ = [
    "IMAGE_MODES",
    "DataType",
    "ImageArrowType",
    "Schema",
    "TensorArrowType",
    "arrow_to_images",
    "arrow_to_tensors",
    "image_mode_of",
    "images_to_arrow",
    "normalize_table",
    "tensors_to_arrow",
]

# mode -> (channels, numpy dtype); the names Daft uses.
IMAGE_MODES: dict[str, tuple[int, np.dtype]] = {
    "L": (1, np.dtype(np.uint8)),
    "LA": (2, np.dtype(np.uint8)),
    "RGB": (3, np.dtype(np.uint8)),
    "RGBA": (4, np.dtype(np.uint8)),
    "L16": (1, np.dtype(np.uint16)),
    "LA16": (2, np.dtype(np.uint16)),
    "RGB16": (3, np.dtype(np.uint16)),
    "RGBA16": (4, np.dtype(np.uint16)),
    "RGB32F": (3, np.dtype(np.float32)),
    "RGBA32F": (4, np.dtype(np.float32)),
}

_INTS = {"int8": "Int8", "int16": "Int16", "int32": "Int32", "int64": "Int64",
         "uint8": "UInt8", "uint16": "UInt16", "uint32": "UInt32", "uint64": "UInt64"}
_FLOATS = {"float32": "Float32", "float64": "Float64"}
_SIMPLE = {"null": "Null", "bool": "Boolean", "string": "Utf8", "binary": "Binary", "date": "Date",
           **_INTS, **_FLOATS}


class DataType:
    """The type of a column: immutable, comparable, hashable; build with the static methods."""

    __slots__ = ("_kind", "_params")

    def __init__(self, kind: str, params: tuple = ()):
        self._kind = kind
        self._params = params

    # -- constructors ---------------------------------------------------------------------------
    @staticmethod
    def null() -> DataType:
        """The Null type."""
        return DataType("null")

    @staticmethod
    def bool() -> DataType:
        """The Boolean type."""
        return DataType("bool")

    @staticmethod
    def string() -> DataType:
        """The Utf8 (a string) type."""
        return DataType("string")

    @staticmethod
    def binary() -> DataType:
        """The Binary (bytes) type."""
        return DataType("binary")

    @staticmethod
    def int8() -> DataType:
        """The Int8 type."""
        return DataType("int8")

    @staticmethod
    def int16() -> DataType:
        """The Int16 type."""
        return DataType("int16")

    @staticmethod
    def int32() -> DataType:
        """The Int32 type."""
        return DataType("int32")

    @staticmethod
    def int64() -> DataType:
        """The Int64 type."""
        return DataType("int64")

    @staticmethod
    def uint8() -> DataType:
        """The UInt8 type."""
        return DataType("uint8")

    @staticmethod
    def uint16() -> DataType:
        """The UInt16 type."""
        return DataType("uint16")

    @staticmethod
    def uint32() -> DataType:
        """The UInt32 type."""
        return DataType("uint32")

    @staticmethod
    def uint64() -> DataType:
        """The UInt64 type."""
        return DataType("uint64")

    @staticmethod
    def float32() -> DataType:
        """The Float32 type."""
        return DataType("float32")

    @staticmethod
    def float64() -> DataType:
        """The Float64 type."""
        return DataType("float64")

    @staticmethod
    def date() -> DataType:
        """The Date type."""
        return DataType("date")

    @staticmethod
    def timestamp(unit: str = "us", timezone: str | None = None) -> DataType:
        """A timestamp in ``unit`` (s, ms, us, ns), with an optional time zone."""
        if unit not in ("s", "ms", "us", "ns"):
            raise ConfigError(f"timestamp unit must be one of s, ms, us, ns, not {unit!r}")
        return DataType("timestamp", (unit, timezone))

    @staticmethod
    def duration(unit: str = "us") -> DataType:
        """A duration in ``unit``."""
        return DataType("duration", (unit,))

    @staticmethod
    def decimal128(precision: int, scale: int) -> DataType:
        """A decimal of ``precision`` digits, ``scale`` after the point."""
        return DataType("decimal", (int(precision), int(scale)))

    @staticmethod
    def list(dtype: DataType) -> DataType:
        """A variable-length list of ``dtype``."""
        return DataType("list", (_check_dtype(dtype),))

    @staticmethod
    def fixed_size_list(dtype: DataType, size: int) -> DataType:
        """A list of exactly ``size`` values of ``dtype``."""
        if int(size) <= 0:
            raise ConfigError(f"fixed_size_list size must be positive, not {size!r}")
        return DataType("fixed_size_list", (_check_dtype(dtype), int(size)))

    @staticmethod
    def struct(fields: Mapping[str, DataType]) -> DataType:
        """A struct of the named fields."""
        return DataType("struct", tuple((str(k), _check_dtype(v)) for k, v in fields.items()))

    @staticmethod
    def tensor(dtype: DataType, shape: Sequence[int] | None = None) -> DataType:
        """An n-dimensional array of ``dtype``, of a fixed ``shape`` when given."""
        shp = None if shape is None else tuple(int(s) for s in shape)
        return DataType("tensor", (_check_dtype(dtype), shp))

    @staticmethod
    def image(mode: str | None = None, height: int | None = None,
              width: int | None = None) -> DataType:
        """An image of ``mode`` (None: mixed), of a fixed height x width when given."""
        if mode is not None and mode not in IMAGE_MODES:
            raise ConfigError(f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
        if (height is None) != (width is None):
            raise ConfigError("image(): give both height and width, or neither")
        return DataType("image", (mode, height, width))

    @staticmethod
    def python() -> DataType:
        """Arbitrary Python objects (kept as pickled bytes in Arrow)."""
        return DataType("python")

    # -- introspection --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The type's kind (``int64``, ``image``, ``list``...)."""
        return self._kind

    @property
    def params(self) -> tuple:
        """The type's parameters (an image's mode and size, a list's element type...)."""
        return self._params

    def is_null(self) -> bool:
        """True for null types."""
        return self._kind == "null"

    def is_boolean(self) -> bool:
        """True for boolean types."""
        return self._kind == "bool"

    def is_string(self) -> bool:
        """True for string types."""
        return self._kind == "string"

    def is_binary(self) -> bool:
        """True for binary types."""
        return self._kind == "binary"

    def is_integer(self) -> bool:
        """True for integer types."""
        return self._kind in _INTS

    def is_floating(self) -> bool:
        """True for floating types."""
        return self._kind in _FLOATS

    def is_numeric(self) -> bool:
        """True for numeric types."""
        return self._kind in _INTS or self._kind in _FLOATS or self._kind == "decimal"

    def is_temporal(self) -> bool:
        """True for temporal types."""
        return self._kind in ("date", "timestamp", "duration")

    def is_list(self) -> bool:
        """True for list types."""
        return self._kind in ("list", "fixed_size_list")

    def is_image(self) -> bool:
        """True for image types."""
        return self._kind == "image"

    def is_tensor(self) -> bool:
        """True for tensor types."""
        return self._kind == "tensor"

    @property
    def inner(self) -> DataType:
        """Element type of a list, fixed-size list or tensor."""
        if self._kind in ("list", "fixed_size_list", "tensor"):
            return self._params[0]
        raise SchemaError(f"{self} has no element type")

    @property
    def image_mode(self) -> str | None:
        """An image type's mode (None for mixed modes or other types)."""
        return self._params[0] if self._kind == "image" else None

    # -- arrow ----------------------------------------------------------------------------------
    def to_arrow(self) -> pa.DataType:
        """The canonical Arrow type of this type (large offsets for strings and binaries)."""
        k, p = self._kind, self._params
        simple = {"null": pa.null(), "bool": pa.bool_(), "string": pa.large_string(),
                  "binary": pa.large_binary(), "date": pa.date32(), "python": pa.large_binary()}
        if k in simple:
            return simple[k]
        if k in _INTS or k in _FLOATS:
            return getattr(pa, k)()
        if k == "timestamp":
            return pa.timestamp(p[0], p[1])
        if k == "duration":
            return pa.duration(p[0])
        if k == "decimal":
            return pa.decimal128(p[0], p[1])
        if k == "list":
            return pa.large_list(p[0].to_arrow())
        if k == "fixed_size_list":
            return pa.list_(p[0].to_arrow(), p[1])
        if k == "struct":
            return pa.struct([(n, t.to_arrow()) for n, t in p])
        if k == "tensor":
            if p[1] is not None:
                return pa.fixed_shape_tensor(p[0].to_arrow(), list(p[1]))
            return TensorArrowType(p[0].to_arrow())
        if k == "image":
            return ImageArrowType(*p)
        raise UnsupportedError(f"no Arrow type for {self}")  # pragma: no cover

    @staticmethod
    def from_arrow(t: pa.DataType) -> DataType:
        """The mmbeam type of an Arrow type (dictionary columns become their value type)."""
        if isinstance(t, ImageArrowType):
            return DataType.image(t.mode, t.height, t.width)
        if isinstance(t, TensorArrowType):
            return DataType.tensor(DataType.from_arrow(t.value_type))
        if isinstance(t, pa.FixedShapeTensorType):
            return DataType.tensor(DataType.from_arrow(t.value_type), t.shape)
        if isinstance(t, pa.ExtensionType):
            return DataType.from_arrow(t.storage_type)
        if pa.types.is_null(t):
            return DataType.null()
        if pa.types.is_boolean(t):
            return DataType.bool()
        if pa.types.is_integer(t):
            return DataType(str(t))
        if pa.types.is_floating(t):
            return DataType.float64() if pa.types.is_float64(t) else DataType.float32()
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return DataType.string()
        if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
                or pa.types.is_fixed_size_binary(t)):
            return DataType.binary()
        if pa.types.is_date(t):
            return DataType.date()
        if pa.types.is_timestamp(t):
            return DataType.timestamp(t.unit, t.tz)
        if pa.types.is_duration(t):
            return DataType.duration(t.unit)
        if pa.types.is_decimal(t):
            return DataType.decimal128(t.precision, t.scale)
        if pa.types.is_fixed_size_list(t):
            return DataType.fixed_size_list(DataType.from_arrow(t.value_type), t.list_size)
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
            return DataType.list(DataType.from_arrow(t.value_type))
        if pa.types.is_struct(t):
            return DataType.struct({t.field(i).name: DataType.from_arrow(t.field(i).type)
                                    for i in range(t.num_fields)})
        if pa.types.is_dictionary(t):
            return DataType.from_arrow(t.value_type)
        raise UnsupportedError(f"Arrow type {t} has no mmbeam DataType yet")

    @staticmethod
    def infer(value: Any) -> DataType:
        """The type of one Python value (used for literals)."""
        if value is None:
            return DataType.null()
        if isinstance(value, np.ndarray) and value.ndim in (2, 3):
            return DataType.image(image_mode_of(value))
        return DataType.from_arrow(pa.scalar(value).type)

    # -- value semantics ------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataType) and (self._kind, self._params) == (other._kind,
                                                                              other._params)

    def __hash__(self) -> int:
        return hash((self._kind, self._params))

    def __reduce__(self):
        return (DataType, (self._kind, self._params))

    def __repr__(self) -> str:
        k, p = self._kind, self._params
        if k in _SIMPLE:
            return _SIMPLE[k]
        if k == "python":
            return "Python"
        if k == "timestamp":
            return f"Timestamp[{p[0]}]" if p[1] is None else f"Timestamp[{p[0]}; {p[1]}]"
        if k == "duration":
            return f"Duration[{p[0]}]"
        if k == "decimal":
            return f"Decimal128({p[0]}, {p[1]})"
        if k == "list":
            return f"List[{p[0]!r}]"
        if k == "fixed_size_list":
            return f"FixedSizeList[{p[0]!r}; {p[1]}]"
        if k == "struct":
            return "Struct[" + ", ".join(f"{n}: {t!r}" for n, t in p) + "]"
        if k == "tensor":
            return f"Tensor[{p[0]!r}]" if p[1] is None else f"Tensor[{p[0]!r}; {p[1]}]"
        if k == "image":
            mode = p[0] or "MIXED"
            return f"Image[{mode}]" if p[1] is None else f"Image[{mode}; {p[1]} x {p[2]}]"
        return k  # pragma: no cover

    __str__ = __repr__


def _check_dtype(dtype: Any) -> DataType:
    if not isinstance(dtype, DataType):
        raise ConfigError(f"expected a DataType, got {dtype!r}")
    return dtype


class Schema:
    """An ordered mapping of column names to :class:`DataType` (immutable)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, DataType]]):
        self._fields: dict[str, DataType] = {}
        for name, dtype in fields:
            if name in self._fields:
                raise SchemaError(f"duplicate column name {name!r}")
            self._fields[name] = _check_dtype(dtype)

    @staticmethod
    def from_arrow(schema: pa.Schema) -> Schema:
        """The schema of an Arrow schema."""
        return Schema((f.name, DataType.from_arrow(f.type)) for f in schema)

    @staticmethod
    def from_pydict(fields: Mapping[str, DataType]) -> Schema:
        """A schema from ``{name: DataType}``."""
        return Schema(fields.items())

    def to_arrow(self) -> pa.Schema:
        """The Arrow schema."""
        return pa.schema([(n, t.to_arrow()) for n, t in self._fields.items()])

    def column_names(self) -> list[str]:
        """The column names, in order."""
        return list(self._fields)

    def names(self) -> list[str]:
        """The column names, in order."""
        return list(self._fields)

    def items(self) -> list[tuple[str, DataType]]:
        """``(name, DataType)`` pairs, in order."""
        return list(self._fields.items())

    def __getitem__(self, name: str) -> DataType:
        try:
            return self._fields[name]
        except KeyError:
            near = get_close_matches(name, list(self._fields), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise SchemaError(f"column {name!r} not found.{hint} Available columns: "
                              f"{', '.join(self._fields) or '(none)'}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and list(self._fields.items()) == list(
            other._fields.items())

    def __repr__(self) -> str:
        return "Schema(" + ", ".join(f"{n}: {t!r}" for n, t in self._fields.items()) + ")"


# -- images -------------------------------------------------------------------------------------
_IMAGE_STORAGE = pa.struct([("width", pa.int32()), ("height", pa.int32()),
                            ("mode", pa.string()), ("data", pa.large_binary())])


class ImageArrowType(pa.ExtensionType):
    """Arrow extension type ``mmbeam.image``: a struct of width, height, mode, pixel bytes.

    ``mode`` (and optionally ``height``/``width``) of the column live in the type's metadata;
    ``mode=None`` means each row has its own mode (Daft's ``Image[MIXED]``).
    """

    def __init__(self, mode: str | None = None, height: int | None = None,
                 width: int | None = None):
        self.mode = mode
        self.height = height
        self.width = width
        super().__init__(_IMAGE_STORAGE, "mmbeam.image")

    def __arrow_ext_serialize__(self) -> bytes:
        return json.dumps({"mode": self.mode, "height": self.height,
                           "width": self.width}).encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        meta = json.loads(serialized.decode() or "{}")
        return cls(meta.get("mode"), meta.get("height"), meta.get("width"))

    def __reduce__(self):
        return (ImageArrowType, (self.mode, self.height, self.width))


try:
    pa.register_extension_type(ImageArrowType())
except pa.ArrowKeyError:  # already registered (module reloaded)
    pass


class TensorArrowType(pa.ExtensionType):
    """Arrow extension type ``mmbeam.tensor``: n-d arrays of any shape, as shape + flat data."""

    def __init__(self, value_type: pa.DataType):
        self.value_type = value_type
        super().__init__(pa.struct([("shape", pa.large_list(pa.int64())),
                                    ("data", pa.large_list(value_type))]), "mmbeam.tensor")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        return cls(storage_type.field("data").type.value_type)

    def __reduce__(self):
        return (TensorArrowType, (self.value_type,))


try:
    pa.register_extension_type(TensorArrowType(pa.float32()))
except pa.ArrowKeyError:  # already registered (module reloaded)
    pass


def image_mode_of(image: np.ndarray) -> str:
    """The mode name for a numpy image from its channel count and dtype."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    for mode, (c, dt) in IMAGE_MODES.items():
        if c == channels and dt == image.dtype:
            return mode
    raise SchemaError(f"no image mode for an array of shape {image.shape} and dtype "
                      f"{image.dtype}; use uint8 with 1-4 channels")


def images_to_arrow(images: Sequence[np.ndarray | None], mode: str | None = None) -> pa.Array:
    """An ``Image[mode]`` Arrow array from numpy HxW or HxWxC arrays (None becomes null).

    With ``mode=None`` each image keeps the mode implied by its shape and dtype (``Image[MIXED]``).
    """
    n = len(images)
    widths = np.zeros(n, np.int32)
    heights = np.zeros(n, np.int32)
    modes: list[str | None] = [None] * n
    valid = np.ones(n, bool)
    chunks: list[bytes | memoryview] = []
    offsets = np.zeros(n + 1, np.int64)
    for i, img in enumerate(images):
        if img is None:
            valid[i] = False
            offsets[i + 1] = offsets[i]
            continue
        img = np.asarray(img)
        if img.ndim not in (2, 3):
            raise SchemaError(f"an image must be HxW or HxWxC, got shape {img.shape}")
        m = image_mode_of(img)
        if mode is not None and m != mode:
            raise SchemaError(f"image {i} has mode {m}, the column is Image[{mode}]; "
                              "convert it with .image.to_mode()")
        heights[i], widths[i] = img.shape[0], img.shape[1]
        modes[i] = m
        buf = np.ascontiguousarray(img)
        chunks.append(memoryview(buf).cast("B"))
        offsets[i + 1] = offsets[i] + buf.nbytes
    data = pa.py_buffer(b"".join(chunks))
    mask = pa.array(~valid)
    binary = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n,
                                              [None, pa.py_buffer(offsets), data])
    storage = pa.StructArray.from_arrays(
        [pa.array(widths), pa.array(heights), pa.array(modes, pa.string()), binary],
        fields=list(_IMAGE_STORAGE), mask=mask)
    return pa.ExtensionArray.from_storage(ImageArrowType(mode), storage)


def arrow_to_images(array: pa.Array | pa.ChunkedArray) -> list[np.ndarray | None]:
    """Numpy HxWxC views (read-only, no copy) of an image column's rows; null rows are None."""
    if isinstance(array, pa.ChunkedArray):
        out: list[np.ndarray | None] = []
        for chunk in array.chunks:
            out.extend(arrow_to_images(chunk))
        return out
    storage = array.storage if isinstance(array, pa.ExtensionArray) else array
    if not pa.types.is_struct(storage.type):
        raise SchemaError(f"expected an image array, got {array.type}")
    data = storage.field("data")
    if not pa.types.is_large_binary(data.type):
        data = data.cast(pa.large_binary())
    bufs = data.buffers()
    offsets = np.frombuffer(bufs[1], np.int64)[data.offset: data.offset + len(data) + 1]
    raw = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    widths = storage.field("width").to_numpy(zero_copy_only=False)
    heights = storage.field("height").to_numpy(zero_copy_only=False)
    modes = storage.field("mode").to_pylist()
    nulls = storage.is_null().to_numpy(zero_copy_only=False)
    result: list[np.ndarray | None] = []
    for i in range(len(storage)):
        if nulls[i] or modes[i] is None:
            result.append(None)
            continue
        channels, dt = IMAGE_MODES[modes[i]]
        pixels = raw[offsets[i]: offsets[i + 1]].view(dt)
        result.append(pixels.reshape(int(heights[i]), int(widths[i]), channels))
    return result


def tensors_to_arrow(values: Sequence[Any], dtype: DataType) -> pa.Array:
    """A ``Tensor[dtype]`` Arrow array from numpy arrays or nested lists (None becomes null).

    With a fixed shape every value must have exactly that shape; without one each row keeps
    its own shape (``mmbeam.tensor``: shape + flat data).
    """
    value_type = dtype.inner.to_arrow()
    shape = dtype.params[1]
    arrays = [None if v is None else np.asarray(v) for v in values]
    if shape is not None:
        for i, a in enumerate(arrays):
            if a is not None and a.size != int(np.prod(shape)):
                raise CastError(f"row {i} has {a.size} values ({a.shape}); "
                                f"{dtype} needs {int(np.prod(shape))}")
        flat = pa.array([None if a is None else a.ravel() for a in arrays],
                        pa.list_(value_type, int(np.prod(shape))))
        return pa.ExtensionArray.from_storage(dtype.to_arrow(), flat)
    shapes = pa.array([None if a is None else list(a.shape) for a in arrays],
                      pa.large_list(pa.int64()))
    data = pa.array([None if a is None else a.ravel() for a in arrays], pa.large_list(value_type))
    mask = pa.array([a is None for a in arrays])
    storage = pa.StructArray.from_arrays([shapes, data], names=["shape", "data"], mask=mask)
    return pa.ExtensionArray.from_storage(dtype.to_arrow(), storage)


def arrow_to_tensors(array: pa.Array | pa.ChunkedArray) -> list[np.ndarray | None]:
    """Numpy arrays (in their shapes) of a tensor column's rows; null rows are None."""
    if isinstance(array, pa.ChunkedArray):
        return [t for chunk in array.chunks for t in arrow_to_tensors(chunk)]
    storage = array.storage if isinstance(array, pa.ExtensionArray) else array
    if isinstance(array.type, pa.FixedShapeTensorType):
        shape = tuple(array.type.shape)
        return [None if v is None else np.asarray(v, array.type.value_type.to_pandas_dtype())
                .reshape(shape) for v in storage.to_pylist()]
    out: list[np.ndarray | None] = []
    dt = storage.type.field("data").type.value_type.to_pandas_dtype()
    for row in storage.to_pylist():
        out.append(None if row is None else np.asarray(row["data"], dt).reshape(row["shape"]))
    return out


# -- conversions --------------------------------------------------------------------------------
def _normalize_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        return arr
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
    target = DataType.from_arrow(arr.type).to_arrow()
    return arr if arr.type == target else arr.cast(target)


def normalize_table(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """``table`` with every column cast to its canonical Arrow type (see DataType.to_arrow)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    cols = [_normalize_array(c) for c in table.columns]
    if all(c.type == o.type for c, o in zip(cols, table.columns, strict=True)):
        return table
    return pa.Table.from_arrays(cols, names=table.column_names)
