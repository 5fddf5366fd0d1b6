"""Image codecs: round trips, limits checked before decoding, clear errors, input conversion."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from shared.images import (
    ImageDecodeError,
    ImageLimits,
    b64decode,
    decode_image,
    decode_raw,
    encode_image,
    encode_image_json,
    to_uint8_array,
)
from tests.reward_contract import random_image


@pytest.fixture
def image() -> np.ndarray:
    return random_image(np.random.default_rng(0), 37, 53)


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` but which holds almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_raw_round_trip_is_exact(image: np.ndarray) -> None:
    encoded = encode_image(image, "raw")
    assert encoded["shape"] == [37, 53, 3] and len(encoded["data"]) == image.nbytes
    np.testing.assert_array_equal(decode_image(encoded), image)


def test_png_round_trip_is_exact(image: np.ndarray) -> None:
    data = encode_image(image, "png")
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(data), image)


def test_jpeg_round_trip_is_close(image: np.ndarray) -> None:
    data = encode_image(image, "jpeg", quality=95)
    assert data.startswith(b"\xff\xd8\xff")
    decoded = decode_image(data)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image.astype(int)).mean() < 8  # the test image is noisy


def test_json_forms_decode(image: np.ndarray) -> None:
    raw = encode_image_json(image, "raw")
    np.testing.assert_array_equal(decode_image(raw), image)  # base64 data inside the raw object
    text = encode_image_json(image, "png")
    np.testing.assert_array_equal(decode_image(b64decode("data:image/png;base64," + text)), image)


def test_limits_refuse_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError, match="<= 4096"):
        decode_image(png_header_only(100_000, 10))
    assert len(png_header_only(100_000, 10)) < 100
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(png_header_only(3000, 3000), ImageLimits(max_side=4096, max_pixels=1000 * 1000))


def test_raw_limits_and_length() -> None:
    with pytest.raises(ImageDecodeError, match="<= 16"):
        decode_raw(bytes(20 * 4 * 3), [20, 4, 3], ImageLimits(max_side=16))
    with pytest.raises(ImageDecodeError, match="needs 48 bytes, got 47"):
        decode_raw(bytes(47), [4, 4, 3])
    with pytest.raises(ImageDecodeError, match=r"\[height, width, 3\]"):
        decode_raw(bytes(64), [4, 4, 4])
    with pytest.raises(ImageDecodeError, match=">= 1"):
        decode_raw(b"", [0, 4, 3])


def test_bad_payloads_have_clear_errors(image: np.ndarray) -> None:
    with pytest.raises(ImageDecodeError, match="base64"):
        b64decode("not base64 at all!")
    with pytest.raises(ImageDecodeError, match="neither PNG nor JPEG"):
        decode_image(b"GIF89a....")
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        decode_image(encode_image(image, "png")[:60])  # truncated
    with pytest.raises(ImageDecodeError, match="format 'raw'"):
        decode_image({"format": "tiff", "shape": [1, 1, 3], "data": b"abc"})
    with pytest.raises(ImageDecodeError, match="needs 'data'"):
        decode_image({"format": "raw", "shape": [1, 1, 3]})
    with pytest.raises(ImageDecodeError, match="unsupported"):
        decode_image(12345)


def test_to_uint8_from_pil_modes(image: np.ndarray) -> None:
    np.testing.assert_array_equal(to_uint8_array(Image.fromarray(image)), image)
    rgba = Image.fromarray(np.dstack([image, np.full(image.shape[:2], 7, np.uint8)]), "RGBA")
    np.testing.assert_array_equal(to_uint8_array(rgba), image)
    grey = to_uint8_array(Image.fromarray(image[..., 0], "L"))
    assert grey.shape == image.shape and (grey[..., 1] == image[..., 0]).all()


def test_to_uint8_from_float_chw_numpy_and_torch(image: np.ndarray) -> None:
    chw = image.transpose(2, 0, 1).astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_uint8_array(chw), image)
    np.testing.assert_array_equal(to_uint8_array(torch.from_numpy(chw).requires_grad_()), image)
    np.testing.assert_array_equal(to_uint8_array(torch.from_numpy(chw).to(torch.bfloat16)).shape, image.shape)
    np.testing.assert_array_equal(to_uint8_array(torch.from_numpy(image)), image)
    out_of_range = to_uint8_array(np.array([[[-1.0, 0.5, 2.0]]], np.float32))
    assert out_of_range.tolist() == [[[0, 128, 255]]]
    assert to_uint8_array(np.full((2, 2, 3), np.nan, np.float32)).max() == 0


def test_to_uint8_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        to_uint8_array(np.zeros((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="channels"):
        to_uint8_array(np.zeros((5, 6, 7)))


def test_encode_refuses_unknown_format(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(image, "webp")


def test_jpeg_decodes_to_rgb_even_when_greyscale() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 100, np.uint8), "L").save(buffer, format="JPEG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (8, 8, 3)
    assert base64.b64encode(buffer.getvalue())  # sanity: bytes were produced
