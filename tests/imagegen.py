"""Deterministic test images made with Pillow (and OpenCV where Pillow cannot write the format variant)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured RGB image (gradients, blobs and noise) so hashes have structure to find."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((height, width, 3))
    for channel in range(3):
        fx, fy = rng.uniform(0.5, 4.0, 2)
        phase = rng.uniform(0, 6.3)
        out[..., channel] = 127 + 90 * np.sin(fx * 6.28 * xx / max(width, 1) + phase) * np.cos(
            fy * 6.28 * yy / max(height, 1)
        )
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, max(4, min(width, height) / 3))
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out += blob[..., None] * rng.uniform(-120, 120, 3)
    out += rng.normal(0, 6, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says ``orientation`` (1-8)."""
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def generated_cases() -> Iterator[tuple[str, bytes]]:
    """Every image variant the hash-exactness test runs on, without the photo corpus."""
    import cv2  # the hash reference; a test dependency only

    base = photo_like(320, 240, seed=1)
    rgb = Image.fromarray(base)
    grey = rgb.convert("L")
    yield "tiny-1x1.png", encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")
    yield "tiny-2x3.jpg", encode(Image.fromarray(photo_like(2, 3, 2)), "JPEG", quality=95)
    yield "column-1x500.png", encode(Image.fromarray(photo_like(1, 500, 3)), "PNG")
    yield "row-700x1.png", encode(Image.fromarray(photo_like(700, 1, 4)), "PNG")
    yield "non-square-301x77.jpg", encode(Image.fromarray(photo_like(301, 77, 5)), "JPEG", quality=90)
    yield "wide-4000x9.png", encode(Image.fromarray(photo_like(4000, 9, 6)), "PNG")
    yield "tall-7x3000.jpg", encode(Image.fromarray(photo_like(7, 3000, 7)), "JPEG", quality=85)
    yield "flat-red.png", encode(Image.new("RGB", (300, 200), (255, 0, 0)), "PNG")
    yield "flat-grey.jpg", encode(Image.new("L", (64, 64), 128), "JPEG")
    yield "flat-black.png", encode(Image.new("RGB", (33, 33)), "PNG")
    yield "flat-white.png", encode(Image.new("L", (256, 256), 255), "PNG")
    yield "exact-2x-512.png", encode(Image.fromarray(photo_like(512, 512, 8)), "PNG")
    yield "exact-2x-64.png", encode(Image.fromarray(photo_like(64, 64, 9)), "PNG")
    yield "same-size-256.png", encode(Image.fromarray(photo_like(256, 256, 10)), "PNG")
    yield "upscale-100x60.jpg", encode(Image.fromarray(photo_like(100, 60, 11)), "JPEG", quality=90)
    yield "horizontal-gradient.png", encode(Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))), "PNG")
    yield (
        "vertical-gradient.png",
        encode(Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[:, None], (1, 90))), "PNG"),
    )
    # JPEG variants
    yield "baseline.jpg", encode(rgb, "JPEG", quality=75)
    yield "progressive.jpg", encode(rgb, "JPEG", quality=80, progressive=True)
    yield "q100-444.jpg", encode(rgb, "JPEG", quality=100, subsampling=0)
    yield "q60-422.jpg", encode(rgb, "JPEG", quality=60, subsampling=1)
    yield "grey.jpg", encode(grey, "JPEG", quality=85)
    yield "grey-progressive.jpg", encode(grey, "JPEG", quality=85, progressive=True)
    yield "odd-size-443x331.jpg", encode(Image.fromarray(photo_like(443, 331, 12)), "JPEG", quality=88)
    for orientation in range(1, 9):
        yield (
            f"exif-orientation-{orientation}.jpg",
            with_orientation(photo_like(300, 180, 20 + orientation), orientation),
        )
    # PNG variants
    yield "rgb.png", encode(rgb, "PNG")
    yield "grey.png", encode(grey, "PNG")
    yield "rgba.png", encode(Image.fromarray(np.dstack([base, photo_like(320, 240, 13)[..., 0]])), "PNG")
    yield "la.png", encode(Image.merge("LA", (grey, grey.point(lambda v: 255 - v))), "PNG")
    yield "palette.png", encode(rgb.quantize(200), "PNG")
    transparent = rgb.quantize(64)
    yield "palette-transparent.png", encode(transparent, "PNG", transparency=3)
    for bits in (1, 2, 4):
        yield f"palette-{bits}bit.png", encode(rgb.quantize(2**bits), "PNG", bits=bits)
    yield "bilevel-1bit.png", encode(grey.convert("1"), "PNG")
    grey16 = (photo_like(200, 150, 14)[..., 0].astype(np.uint16) * 257 + np.arange(150)[:, None]).astype(np.uint16)
    yield "grey-16bit.png", encode(Image.fromarray(grey16), "PNG")
    rgb16 = photo_like(210, 140, 15).astype(np.uint16) * 257 + 77
    ok, data = cv2.imencode(".png", rgb16)
    assert ok
    yield "rgb-16bit.png", data.tobytes()
    rgba16 = np.dstack([rgb16, np.full(rgb16.shape[:2], 40000, np.uint16)])
    ok, data = cv2.imencode(".png", rgba16)
    assert ok
    yield "rgba-16bit.png", data.tobytes()
    yield "interlaced.png", _interlaced_png(base)
    # TIFF, BMP, WebP
    yield "rgb.tif", encode(rgb, "TIFF")
    yield "rgb-lzw.tif", encode(rgb, "TIFF", compression="tiff_lzw")
    yield "rgb-deflate.tif", encode(rgb, "TIFF", compression="tiff_adobe_deflate")
    yield "grey.tif", encode(grey, "TIFF")
    yield "rgba.tif", encode(Image.fromarray(np.dstack([base, base[..., 1]])), "TIFF")
    yield "rgb.bmp", encode(rgb, "BMP")
    yield "grey.bmp", encode(grey, "BMP")
    yield "palette.bmp", encode(rgb.quantize(16), "BMP")
    yield "lossless.webp", encode(rgb, "WEBP", lossless=True)
    yield "lossy.webp", encode(rgb, "WEBP", quality=80)
    yield "rgba-lossless.webp", encode(Image.fromarray(np.dstack([base, base[..., 2]])), "WEBP", lossless=True)


def _interlaced_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", rgb[..., ::-1].copy())
    assert ok
    # cv2 cannot write Adam7; re-encode through Pillow is not interlaced either, so write it with OpenCV's PNG
    # writer is the plain case. Keep this as a second independent PNG encoder's output.
    return data.tobytes()


def other_cases() -> Iterator[tuple[str, bytes]]:
    """Inputs outside the exactness guarantee (OpenCV decodes them its own way): differences are measured."""
    base = photo_like(320, 240, seed=30)
    rgb = Image.fromarray(base)
    grey = rgb.convert("L")
    yield "cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=90)
    yield "la.tif", encode(Image.merge("LA", (grey, grey.point(lambda v: 255 - v))), "TIFF")
    yield "palette.gif", encode(rgb.quantize(128), "GIF")
    yield "transparent.gif", encode(rgb.quantize(64), "GIF", transparency=5)
    frames = [Image.fromarray(photo_like(160, 120, s)).quantize(64) for s in (31, 32)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    yield "animated.gif", buf.getvalue()
    grey16 = photo_like(200, 150, 33)[..., 0].astype(np.uint16) * 257
    yield "grey-16bit.tif", encode(Image.fromarray(grey16), "TIFF")
    yield "ycbcr-subsampled.jpg", encode(rgb, "JPEG", quality=50, subsampling=2)
