"""The lazy frame facade: ``Frame``, its sources, and the execution context.

Users who know Daft or pandas build frames with ``from_pydict`` / ``read_parquet`` and
expressions; plans compile to Beam transforms over Arrow record batches only when a frame runs.
"""

from mmbeam.expr import col, lit
from mmbeam.frame import context
from mmbeam.frame.frame import Frame, GroupedFrame
from mmbeam.frame.images import read_images
from mmbeam.frame.sources import (
    from_arrow,
    from_glob_path,
    from_pandas,
    from_pcollection,
    from_pydict,
    from_pylist,
    read_csv,
    read_parquet,
)
from mmbeam.types import DataType, Schema

__all__ = [
    "DataType",
    "Frame",
    "GroupedFrame",
    "Schema",
    "col",
    "context",
    "from_arrow",
    "from_glob_path",
    "from_pandas",
    "from_pcollection",
    "from_pydict",
    "from_pylist",
    "lit",
    "read_csv",
    "read_images",
    "read_parquet",
]
