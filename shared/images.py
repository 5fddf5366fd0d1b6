"""Image codecs for the wire: raw uint8 with a shape, PNG and JPEG. Never pickle.

Every decoded image is an ``(H, W, 3)`` ``uint8`` numpy array. Sizes are checked from the
header before any pixel is decoded, so a small file that claims a huge image is refused cheaply.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

ImageFormat = Literal["raw", "png", "jpeg"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class ImageDecodeError(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one decoded image, and on all the images of one request together."""

    max_side: int = 4096
    max_pixels: int = 4096 * 4096
    min_side: int = 1
    # PNG compresses a blank 4096x4096 image ~1000x: without a total, a small body decodes to GBs
    max_request_pixels: int = 2**28
    # Rewards resize the short side to a fixed size (224-800 px): a 4096x1 image would become
    # hundreds of thousands of pixels wide, and model processors refuse such shapes with messages
    # about their own internals. Refused here, with a message about the image.
    max_aspect_ratio: float = 32.0

    def check(self, height: int, width: int) -> None:
        if height < self.min_side or width < self.min_side:
            raise ImageDecodeError(f"image is {width}x{height}; each side must be >= {self.min_side}")
        if height > self.max_side or width > self.max_side:
            raise ImageDecodeError(f"image is {width}x{height}; each side must be <= {self.max_side}")
        if height * width > self.max_pixels:
            raise ImageDecodeError(f"image has {height * width} pixels; the limit is {self.max_pixels}")
        if max(height, width) > self.max_aspect_ratio * min(height, width):
            raise ImageDecodeError(
                f"image is {width}x{height}: one side is {max(height, width) / min(height, width):.0f} times the "
                f"other, more than the limit of {self.max_aspect_ratio:g} (rewards resize the short side to "
                "a few hundred pixels, so such an image cannot be scored); send the image uncropped"
            )


DEFAULT_LIMITS = ImageLimits()


def sniff_format(data: bytes) -> ImageFormat:
    """Tell PNG from JPEG by their magic bytes."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise ImageDecodeError("image bytes are neither PNG nor JPEG (send raw uint8 as {format: raw, shape, data})")


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


# JPEG start-of-frame markers (baseline, progressive, lossless...): they carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return height, width
        i += 2 + length
    return None


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding anything; None if unreadable.

    Microseconds: used to budget the decoded pixels of a request before any is decoded."""
    if data.startswith(PNG_MAGIC):
        return _png_size(data)
    if data.startswith(JPEG_MAGIC):
        return _jpeg_size(data)
    return None


def decode_compressed(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode PNG or JPEG bytes into an (H, W, 3) uint8 array."""
    fmt = sniff_format(data)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as img:  # no probing of other formats
            limits.check(img.height, img.width)
            img.draft("RGB", img.size)  # JPEG: decode straight to RGB
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # no copy when already RGB
            # writable, like raw images (a view of PIL's bytes is read-only: torch warns)
            return np.frombuffer(bytearray(rgb.tobytes()), np.uint8).reshape(rgb.height, rgb.width, 3)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"image could not be decoded: {exc}") from exc


def decode_raw(data: bytes, shape: tuple[int, ...] | list[int], limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Interpret ``data`` as a C-ordered (H, W, 3) uint8 buffer."""
    if len(shape) != 3 or shape[2] != 3:
        raise ImageDecodeError(f"raw image shape must be [height, width, 3], got {list(shape)}")
    height, width = int(shape[0]), int(shape[1])
    limits.check(height, width)
    expected = height * width * 3
    if len(data) != expected:
        raise ImageDecodeError(f"raw image of shape {list(shape)} needs {expected} bytes, got {len(data)}")
    # a writable copy: torch and the image processors refuse (or warn about) read-only buffers
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()


def decode_image(payload: bytes | dict[str, Any], limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a wire image: PNG/JPEG bytes, or ``{"format": "raw", "shape": [h, w, 3], "data": bytes}``."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return decode_compressed(bytes(payload), limits)
    if isinstance(payload, dict):
        if payload.get("format") != "raw":
            raise ImageDecodeError(f"image object must have format 'raw', got {payload.get('format')!r}")
        data = payload.get("data")
        if isinstance(data, str):
            data = b64decode(data)
        if not isinstance(data, (bytes, bytearray)):
            raise ImageDecodeError("raw image needs 'data' bytes")
        return decode_raw(bytes(data), payload.get("shape") or [], limits)
    raise ImageDecodeError(f"unsupported image payload of type {type(payload).__name__}")


def to_uint8_array(image: Any) -> np.ndarray:
    """Convert a PIL image, numpy array or torch tensor into an (H, W, 3) uint8 array.

    Floating arrays are taken to be in [0, 1]; channel-first arrays (3, H, W) are transposed;
    greyscale (H, W) and RGBA are converted to RGB.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if type(image).__module__.startswith("torch"):
        image = image.detach().to("cpu")
        if image.dtype.is_floating_point:
            image = image.float()
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3:
        raise ValueError(f"an image must have 2 or 3 dimensions, got shape {array.shape}")
    if array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    elif array.shape[2] != 3:
        raise ValueError(f"an image must have 1, 3 or 4 channels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def encode_image(image: Any, fmt: ImageFormat = "raw", quality: int = 95) -> bytes | dict[str, Any]:
    """Encode an image for the binary (msgpack) wire form."""
    array = to_uint8_array(image)
    if fmt == "raw":
        return {"format": "raw", "shape": list(array.shape), "data": array.tobytes()}
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use raw, png or jpeg")
    return buffer.getvalue()


def encode_image_json(image: Any, fmt: ImageFormat = "png", quality: int = 95) -> str | dict[str, Any]:
    """Encode an image for the JSON wire form (base64 text)."""
    encoded = encode_image(image, fmt, quality)
    if isinstance(encoded, dict):
        return {**encoded, "data": base64.b64encode(encoded["data"]).decode("ascii")}
    return base64.b64encode(encoded).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict base64 decoding with a clear error; accepts a ``data:image/...;base64,`` prefix."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image is not valid base64: {exc}") from exc
