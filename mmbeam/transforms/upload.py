"""``Upload``: bytes in, the written path or URL out; atomic, deterministic names."""

from __future__ import annotations

import functools

from mmbeam.io.config import IOConfig
from mmbeam.ops.rowchain import Step
from mmbeam.ops.store import Store, content_name
from mmbeam.transforms._base import ElementTransform, check_connections

__all__ = ["Upload"]


async def _store(store: Store, data, key) -> str:
    return await store.write_async(content_name(data) if key is None else key, data)


def _store_local(store: Store, data, key) -> str:
    if key is None:
        return store.write_local(content_name(data), data, content_named=True)
    return store.write_local(key, data)


class Upload(ElementTransform):
    """Write each element's bytes under ``location`` (a folder, ``s3://…`` or ``gs://…``).

    The name is the element's key with ``keyed=True`` (``cats/7.jpg``), else a content hash with
    a sniffed extension, so a rerun overwrites instead of duplicating. A name that would escape
    ``location`` (``..``, absolute) fails with UnsafePathError; no partial file is ever visible.
    Emits the written path (local) or URL.
    """

    stage = "Upload"
    value_type = str

    def __init__(
        self,
        location: str,
        on_error: str = "raise",
        io_config: IOConfig | None = None,
        max_connections: int = 32,
        *,
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        self.store = Store(location, io_config)
        self.max_connections = check_connections(max_connections)

    def step(self, nullable):
        if self.store.is_local:  # a small blocking write: part of the row's CPU task, no hop
            return Step(self.stage, "cpu", functools.partial(_store_local, self.store), nullable)
        return Step(self.stage, "io", functools.partial(_store, self.store), nullable,
                    self.max_connections)
