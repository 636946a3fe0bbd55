"""Images for TensorBoard: arrays to uint8 pixels, and uint8 pixels to PNG bytes.

Accepted: one image ``[H, W]`` or ``[H, W, C]``, or a batch ``[N, H, W, C]`` (NHWC), with
``C`` 1 (grey), 3 (RGB) or 4 (RGBA); ``uint8`` pixels as they are, or floats (float32,
float64, float16, bfloat16) in ``[0, 1]``, scaled by 255, rounded and clipped.
"""

from __future__ import annotations

import struct
import zlib

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from flaxen.errors import FlaxenError

# PNG colour type per channel count: grey, RGB, RGBA.
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}


class SummaryError(FlaxenError):
    """A value that cannot be written as the requested summary."""


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encodes a uint8 ``[H, W]`` (grey) or ``[H, W, C]`` (C = 1, 3 or 4) array as PNG bytes.

    Args:
      image: the pixels, uint8.
      level: zlib compression level (0 fastest, 9 smallest).
    """
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    # Filter type 0 (none) before every row: a zero byte column in front of the pixels.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b""))


def _to_uint8(tag: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    # bfloat16 (an ml_dtypes type) is no NumPy floating subtype: ask JAX, which knows it.
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise SummaryError(f'image "{tag}": expected uint8, or floats in [0, 1] (float32, '
                           f"float16, bfloat16), got dtype {arr.dtype}. Cast with "
                           "`.astype(np.uint8)`, or divide by 255.")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise SummaryError(f'image "{tag}": {int(np.sum(~np.isfinite(arr)))} pixels are NaN or '
                           "infinite; a pixel must be a finite number in [0, 1].")
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


def as_uint8_image(tag: str, image: ArrayLike) -> np.ndarray:
    """One image as uint8 ``[H, W]`` or ``[H, W, C]`` (C = 3 or 4; one channel is squeezed)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise SummaryError(f'image "{tag}": expected shape [H, W] or [H, W, C] with C = 1 '
                           f"(grey), 3 (RGB) or 4 (RGBA), got {arr.shape}.")
    return _to_uint8(tag, arr)


def as_uint8_batch(tag: str, images: ArrayLike) -> np.ndarray:
    """A batch ``[N, H, W, C]`` (or one image ``[H, W, C]``) as uint8 ``[N, H, W, C]``."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0:
        raise SummaryError(f'image "{tag}": expected a batch [N, H, W, C] (NHWC, N >= 1) or '
                           f"one image [H, W, C], with C = 1 (grey), 3 (RGB) or 4 (RGBA); got "
                           f"shape {arr.shape}.")
    return _to_uint8(tag, arr)
