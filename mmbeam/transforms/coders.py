"""Beam coders for mmbeam's types, so portable runners never pickle them.

On Flink, Dataflow or any ``PortableRunner`` every PCollection crosses the Fn API encoded by
the coder Beam picks from its element type hint; without one it falls back to
``FastPrimitivesCoder``, which pickles whatever it does not know. Importing this module (done
by ``import mmbeam.transforms``) registers:

* ``pyarrow.RecordBatch`` → :class:`ArrowBatchCoder` (Arrow IPC stream: schema + one batch;
  extension types such as mmbeam's image column survive);
* ``numpy.ndarray`` → :class:`NdarrayCoder` (decoded images: dtype, shape, raw C-order bytes;
  anything ``numpy.asarray`` accepts is encoded, so an image type with ``__array__`` works);
* :class:`~mmbeam.transforms.FailedRecord` → :class:`FailedRecordCoder`;
* ``Tuple[X, ...]`` hints → Beam's own ``TupleSequenceCoder`` (the frame's batch keys).

The transforms declare output type hints (see ``ElementTransform``) and the frame compiler
types its PCollections as :data:`KeyedBatch`, so Beam picks these coders by itself.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam import coders
from apache_beam.coders import coder_impl
from apache_beam.typehints import typehints

import mmbeam.types  # noqa: F401 - registers the Arrow extension types the IPC reader needs
from mmbeam.transforms.element import FailedRecord

__all__ = [
    "ArrowBatchCoder",
    "FailedRecordCoder",
    "KeyedBatch",
    "NdarrayCoder",
    "ValueCoder",
    "register_coders",
]

#: what every frame stage emits: an ordering key (tuple of ints) and one Arrow record batch
#: (a Beam type hint, so it can also be assigned to ``PCollection.element_type``)
KeyedBatch = typehints.Tuple[typehints.Tuple[int, ...], pa.RecordBatch]


class _CallbackCoder(coders.Coder):
    """A non-deterministic coder defined by ``encode``/``decode`` and a cheap size estimate."""

    def _create_impl(self):
        return coder_impl.CallbackCoderImpl(self.encode, self.decode, self.estimate)

    def estimate(self, value: Any) -> int:
        return len(self.encode(value))

    def is_deterministic(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class ArrowBatchCoder(_CallbackCoder):
    """``pyarrow.RecordBatch`` as an Arrow IPC stream (language-neutral, zero-copy to read)."""

    def encode(self, batch: pa.RecordBatch) -> bytes:
        """Serialize one value."""
        if not isinstance(batch, pa.RecordBatch):
            raise TypeError(f"ArrowBatchCoder encodes pyarrow.RecordBatch, got "
                            f"{type(batch).__name__}; type the PCollection differently")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> pa.RecordBatch:
        """Deserialize one value."""
        return pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()

    def estimate(self, batch: pa.RecordBatch) -> int:
        """The approximate encoded size in bytes (for Beam's size estimates)."""
        return batch.nbytes

    def to_type_hint(self):
        """The Python type this coder encodes."""
        return pa.RecordBatch


_HEADER = struct.Struct("<B")  # length of the dtype string, then the number of dimensions
_DIM = struct.Struct("<Q")


class NdarrayCoder(_CallbackCoder):
    """A numpy array (a decoded image: H×W×C uint8) as dtype, shape and raw bytes.

    Decoding returns a new writable C-contiguous array of the same dtype and shape. Object
    arrays hold Python objects, not pixels, and fail with a clear error.
    """

    def encode(self, value: Any) -> bytes:
        """Serialize one value."""
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"NdarrayCoder cannot encode an object array {array.shape}; "
                            "give the PCollection a different type hint")
        dtype = array.dtype.str.encode("ascii")
        dims = b"".join(_DIM.pack(n) for n in array.shape)
        return (_HEADER.pack(len(dtype)) + dtype + _HEADER.pack(array.ndim) + dims
                + array.tobytes())

    def decode(self, data: bytes) -> np.ndarray:
        """Deserialize one value."""
        (size,) = _HEADER.unpack_from(data, 0)
        dtype = np.dtype(data[1 : 1 + size].decode("ascii"))
        pos = 1 + size
        (ndim,) = _HEADER.unpack_from(data, pos)
        pos += 1
        shape = tuple(_DIM.unpack_from(data, pos + 8 * i)[0] for i in range(ndim))
        pos += 8 * ndim
        return np.frombuffer(data, dtype, offset=pos).reshape(shape).copy()

    def estimate(self, value: Any) -> int:
        """The approximate encoded size in bytes (for Beam's size estimates)."""
        return int(getattr(value, "nbytes", 0)) + 32

    def to_type_hint(self):
        """The Python type this coder encodes."""
        return np.ndarray


class _TaggedFallbackCoder(_CallbackCoder):
    """What ``FastPrimitivesCoder`` does not know: arrays and batches by their coders, the rest
    pickled (one tag byte says which)."""

    _coders = {b"N": NdarrayCoder(), b"A": ArrowBatchCoder(), b"P": coders.PickleCoder()}

    def encode(self, value: Any) -> bytes:
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            tag = b"N"
        elif isinstance(value, pa.RecordBatch):
            tag = b"A"
        else:
            tag = b"P"
        return tag + self._coders[tag].encode(value)

    def decode(self, data: bytes) -> Any:
        return self._coders[data[:1]].decode(data[1:])


class ValueCoder(coders.FastPrimitivesCoder):
    """Any value: primitives, tuples, lists and dicts natively, arrays and record batches by the
    coders above (also inside tuples), other objects pickled."""

    def __init__(self):
        super().__init__(fallback_coder=_TaggedFallbackCoder())


class FailedRecordCoder(_CallbackCoder):
    """:class:`FailedRecord` as (element by :func:`ValueCoder`, stage, error)."""

    def __init__(self):
        self._fields = coders.TupleCoder(
            [ValueCoder(), coders.StrUtf8Coder(), coders.StrUtf8Coder()])

    def encode(self, record: FailedRecord) -> bytes:
        """Serialize one value."""
        return self._fields.encode(tuple(record))

    def decode(self, data: bytes) -> FailedRecord:
        """Deserialize one value."""
        return FailedRecord(*self._fields.decode(data))

    def estimate(self, record: FailedRecord) -> int:
        """The approximate encoded size in bytes (for Beam's size estimates)."""
        return self._fields.estimate_size(tuple(record))

    def to_type_hint(self):
        """The Python type this coder encodes."""
        return FailedRecord


def register_coders() -> None:
    """Register mmbeam's coders with ``apache_beam.coders.registry`` (idempotent)."""
    registry = coders.registry
    registry.register_coder(pa.RecordBatch, ArrowBatchCoder)
    registry.register_coder(np.ndarray, NdarrayCoder)
    registry.register_coder(FailedRecord, FailedRecordCoder)
    registry.register_coder(typehints.TupleSequenceConstraint, coders.TupleSequenceCoder)


register_coders()
