"""Pure kernels over single images and URLs: fetch, decode, resize, encode, store, and the fused
per-row chain that runs them back to back.

No Beam here: transforms and the frame both call these, and tests exercise them alone.
"""

from mmbeam.ops.decode import DEFAULT_MAX_PIXELS, decode_image, jpeg_scale, probe_image
from mmbeam.ops.encode import encode_image
from mmbeam.ops.fetch import Fetcher, fetch_all
from mmbeam.ops.image import crop, image_mode, to_mode
from mmbeam.ops.pool import cpu_pool
from mmbeam.ops.resize import resize_image
from mmbeam.ops.rowchain import RowChain, RowOutcome, Step
from mmbeam.ops.store import Store, content_name, safe_name

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Fetcher",
    "RowChain",
    "RowOutcome",
    "Step",
    "Store",
    "content_name",
    "cpu_pool",
    "crop",
    "decode_image",
    "encode_image",
    "fetch_all",
    "image_mode",
    "jpeg_scale",
    "probe_image",
    "resize_image",
    "safe_name",
    "to_mode",
]
