"""The one exception tree of mmbeam.

::

    MmbeamError
    ├── ConfigError            a bad argument or option, raised when the pipeline is built
    ├── SchemaError            an unknown column or a type mismatch, raised before anything runs
    ├── ReadError              a source file is corrupt or unreadable; names the file
    ├── UnsupportedError       a runner or backend lacks a feature (never a wrong result instead)
    ├── LostDataError          a worker died with data a stage needed; the runner re-runs
    ├── ResourceUnavailableError  the cluster cannot give a step the CPUs/GPUs it asks for
    ├── RunCancelledError  a run stopped because its consumer asked (an iterator left early)
    └── StageError             one element failed in one stage; carries .stage, .element, .cause
        ├── CastError          a value cannot become the target type of a cast
        ├── DownloadError
        │   └── UnsupportedSchemeError
        ├── ImageError
        │   ├── DecodeError
        │   │   └── ImageTooLargeError
        │   ├── ResizeError
        │   └── EncodeError
        ├── UploadError
        │   └── UnsafePathError
        └── UdfError           a UDF or model raised, or returned the wrong number of values

Kernels in ``mmbeam.ops`` raise a ``StageError`` subclass with the cause only; the transform that
ran the kernel adds the stage name and the element (URL, key or a short description of the value)
with :meth:`StageError.located`, so a message reads
``DecodeImage failed for key 'cat-7': not an image (first bytes b'<html>')``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CastError",
    "ConfigError",
    "DecodeError",
    "DownloadError",
    "EncodeError",
    "ImageError",
    "ImageTooLargeError",
    "LostDataError",
    "MmbeamError",
    "ReadError",
    "ResizeError",
    "ResourceUnavailableError",
    "RunCancelledError",
    "SchemaError",
    "StageError",
    "UnsafePathError",
    "UnsupportedError",
    "UnsupportedSchemeError",
    "UdfError",
    "UploadError",
    "describe_element",
]


class MmbeamError(Exception):
    """Base of every error mmbeam raises on purpose."""


class ConfigError(MmbeamError, ValueError):
    """An argument or option is invalid; raised when the pipeline is built, not when it runs."""


class SchemaError(MmbeamError, KeyError):
    """A column is unknown or has the wrong type for an operation."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ReadError(MmbeamError, OSError):
    """A source file (Parquet, CSV) could not be read: corrupt, truncated or unreadable. The
    message names the file and the cause."""


class UnsupportedError(MmbeamError, NotImplementedError):
    """A runner or backend does not support a feature the pipeline uses."""


class LostDataError(MmbeamError):
    """A distributed run lost data it had committed: a worker process died holding a task's
    output, or the engine recomputed that output and it no longer matches what downstream tasks
    were planned on. The distributed runners catch it and re-run the pipeline's stages."""


class ResourceUnavailableError(MmbeamError, RuntimeError):
    """A step asked for resources (``num_gpus``, ``num_cpus``, ``concurrency`` workers) that the
    cluster did not provide within the runner's wait; raised instead of waiting forever."""


class RunCancelledError(MmbeamError):
    """A distributed run stopped before its end because its consumer asked (a frame iterator
    closed early sets the ``stop`` event of
    :meth:`~mmbeam.runners.core.DistributedRunner.retain`); the stopped run's results are gone,
    its engine is released."""


class StageError(MmbeamError):
    """One element failed in one stage of a pipeline.

    ``cause`` says what went wrong; ``stage`` and ``element`` are filled in by the transform
    (see :meth:`located`). The message keeps a single positional argument so that Beam can
    re-raise it with its step name appended.
    """

    def __init__(self, cause: str, *, stage: str | None = None, element: Any = None):
        self.cause = cause
        self.stage = stage
        self.element = element
        super().__init__(self._message())

    def _message(self) -> str:
        if self.stage is None:
            return self.cause
        where = "" if self.element is None else f" for {describe_element(self.element)}"
        return f"{self.stage} failed{where}: {self.cause}"

    def located(self, stage: str, element: Any) -> StageError:
        """A copy of this error that names the stage and the element it failed on."""
        new = type(self).__new__(type(self))
        StageError.__init__(new, self.cause, stage=stage, element=element)
        new.__cause__ = self.__cause__
        if hasattr(self, "attempts"):  # requests a download made (failures tables show it)
            new.attempts = self.attempts
        return new

    def __reduce__(self):  # picklable across worker processes, with its context
        return (_rebuild_stage_error, (type(self), self.cause, self.stage, self.element))


def _rebuild_stage_error(cls, cause, stage, element):
    err = cls.__new__(cls)
    StageError.__init__(err, cause, stage=stage, element=element)
    return err


class CastError(StageError):
    """A value cannot become the target type of a ``cast`` (an image of the wrong size, a list
    that does not fill a tensor's shape)."""


class DownloadError(StageError):
    """A URL could not be read: missing, refused, timed out, or failed after every retry."""


class UnsupportedSchemeError(DownloadError):
    """A URL's scheme has no filesystem (supported: http, https, s3, gs, file, local paths)."""


class ImageError(StageError):
    """An image operation failed."""


class DecodeError(ImageError):
    """Bytes are not a readable image: not an image at all, truncated, or corrupt."""


class ImageTooLargeError(DecodeError):
    """An image has more pixels than the decompression-bomb limit allows."""


class ResizeError(ImageError):
    """An image could not be resized (bad shape or dtype)."""


class EncodeError(ImageError):
    """An image could not be encoded in the requested format."""


class UploadError(StageError):
    """Bytes could not be written to the destination."""


class UnsafePathError(UploadError):
    """An upload name would escape the destination folder (``..``, an absolute path)."""


class UdfError(StageError):
    """A UDF or model failed on a row, or returned a number of values other than its rows."""


def describe_element(element: Any, limit: int = 120) -> str:
    """A short, readable description of an element for error messages.

    Keyed elements show their key; bytes and arrays show their size, not their content.
    """
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], (str, int)):
        return f"key {element[0]!r}"
    if isinstance(element, (bytes, bytearray, memoryview)):
        return f"<{len(element)} bytes>"
    shape = getattr(element, "shape", None)
    if shape is not None and hasattr(element, "dtype"):
        return f"<image {'x'.join(map(str, shape))} {element.dtype}>"
    text = repr(element)
    return text if len(text) <= limit else text[: limit - 1] + "…"
