"""Pure kernels over single images and URLs: fetch, decode, resize, encode, store.

No Beam here: transforms and the frame both call these, and tests exercise them alone.
"""

from mmbeam.ops.decode import DEFAULT_MAX_PIXELS, decode_image
from mmbeam.ops.encode import encode_image
from mmbeam.ops.fetch import Fetcher, fetch_all
from mmbeam.ops.image import crop, image_mode, to_mode
from mmbeam.ops.resize import resize_image
from mmbeam.ops.store import Store, content_name, safe_name

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Fetcher",
    "Store",
    "content_name",
    "crop",
    "decode_image",
    "encode_image",
    "fetch_all",
    "image_mode",
    "resize_image",
    "safe_name",
    "to_mode",
]
