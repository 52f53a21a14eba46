"""The transforms of the declared URL and image functions, one class per declaration.

``Download``, ``DecodeImage``, ``ResizeImage``, ``EncodeImage``, ``CropImage``,
``ConvertImage`` and ``Upload`` are made here from :mod:`mmbeam.ops.functions`: their
arguments, checks, output types and steps are the declaration's, and so the same as the
frame's ``.url``/``.image`` methods. Each is a
:class:`~mmbeam.transforms.element.FunctionTransform`.
"""

from __future__ import annotations

from mmbeam.ops.registry import registered
from mmbeam.transforms.element import function_transforms

_made = function_transforms(registered(), __name__)
globals().update(_made)

Download = _made["Download"]
DecodeImage = _made["DecodeImage"]
ResizeImage = _made["ResizeImage"]
EncodeImage = _made["EncodeImage"]
CropImage = _made["CropImage"]
ConvertImage = _made["ConvertImage"]
Upload = _made["Upload"]

__all__ = sorted(_made)
