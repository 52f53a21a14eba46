"""The row engine and its pure kernels over single images and URLs.

Kernels: fetch, decode, resize, encode, store. :mod:`mmbeam.ops.functions` declares each URL and
image function once (:mod:`mmbeam.ops.registry`); :mod:`mmbeam.ops.engine` turns calls into
steps of a fused per-row chain (:mod:`mmbeam.ops.rowchain`) and runs them through one autotuned
window. No Beam here: the transforms and the frame both drive this engine, and tests exercise it
alone.
"""

from mmbeam.ops import functions
from mmbeam.ops.decode import DEFAULT_MAX_PIXELS, decode_image, jpeg_scale, probe_image
from mmbeam.ops.encode import encode_image
from mmbeam.ops.engine import RowWindow, StageCounts, chain_steps, reduced_box
from mmbeam.ops.fetch import Fetcher, fetch_all
from mmbeam.ops.image import crop, image_mode, to_mode
from mmbeam.ops.pool import cpu_pool
from mmbeam.ops.registry import Call, Function, Option, get_function, registered
from mmbeam.ops.resize import resize_image
from mmbeam.ops.rowchain import RowChain, RowOutcome, Step
from mmbeam.ops.store import Store, content_name, safe_name

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Call",
    "Fetcher",
    "Function",
    "Option",
    "RowChain",
    "RowOutcome",
    "RowWindow",
    "StageCounts",
    "Step",
    "Store",
    "chain_steps",
    "content_name",
    "cpu_pool",
    "crop",
    "decode_image",
    "encode_image",
    "fetch_all",
    "functions",
    "get_function",
    "image_mode",
    "jpeg_scale",
    "probe_image",
    "reduced_box",
    "registered",
    "resize_image",
    "safe_name",
    "to_mode",
]
