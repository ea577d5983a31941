"""The named edits ``matchdb eval`` applies to each original, made in memory and returned as encoded bytes.

Each transform returns a file's bytes, not pixels, so a copy goes through the same decode -> hash pipeline as an
uploaded image. Edits that are not about compression are saved losslessly (uncompressed TIFF: 40x cheaper to
write and read than PNG, and decoded by the same Pillow path), so a row of the accuracy table measures that one
edit and not a JPEG re-encode on top of it. Everything is deterministic: the only randomness
(noise) comes from a generator seeded by the run's seed, the source's name and the transform's name, so a copy can
be made again later (for the HTML report's thumbnails) and does not depend on which other images are in the run.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Apply = Callable[[Image.Image, np.random.Generator], bytes]


@dataclass(frozen=True)
class Transform:
    """One named edit. ``category`` groups rows in reports; ``geometric`` marks edits these hashes are not built
    to survive (crops, rotations, flips), which reports keep apart from the rest."""

    name: str
    category: str
    description: str
    apply: Apply

    @property
    def geometric(self) -> bool:
        return self.category == "geometry"


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _lossless(image: Image.Image) -> bytes:
    return _save(image, "TIFF")


def _jpeg(quality: int) -> Apply:
    return lambda image, _rng: _save(image, "JPEG", quality=quality)


def _scale(factor: float) -> Apply:
    def apply(image: Image.Image, _rng: np.random.Generator) -> bytes:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        method = Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BICUBIC
        return _lossless(image.resize(size, method))

    return apply


class _Enhancer(Protocol):
    def enhance(self, factor: float) -> Image.Image: ...


def _enhance(kind: Callable[[Image.Image], _Enhancer], factor: float) -> Apply:
    return lambda image, _rng: _lossless(kind(image).enhance(factor))


def _gamma(gamma: float) -> Apply:
    table = [round(255 * (v / 255) ** gamma) for v in range(256)]
    return lambda image, _rng: _lossless(image.point(table * len(image.getbands())))


def _noise(sigma: float) -> Apply:
    def apply(image: Image.Image, rng: np.random.Generator) -> bytes:
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
        return _lossless(Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))

    return apply


def _blur(image: Image.Image, _rng: np.random.Generator) -> bytes:
    radius = max(1.0, 0.005 * max(image.size))  # relative, so a 1600 px photo is blurred as visibly as a 256 px one
    return _lossless(image.filter(ImageFilter.GaussianBlur(radius)))


def _crop(fraction: float) -> Apply:
    def apply(image: Image.Image, _rng: np.random.Generator) -> bytes:
        dx, dy = round(image.width * fraction / 2), round(image.height * fraction / 2)
        box = (dx, dy, max(dx + 1, image.width - dx), max(dy + 1, image.height - dy))
        return _lossless(image.crop(box))

    return apply


def _rotate(degrees: float) -> Apply:
    # Same canvas, corners filled black: what an editor's "straighten" without auto-crop produces.
    return lambda image, _rng: _lossless(image.rotate(degrees, Image.Resampling.BICUBIC, expand=False))


def _crop_box(left: float, top: float, right: float, bottom: float) -> Apply:
    """Cut the given fractions off each side (one-sided and corner crops: what a user framing a detail does)."""

    def apply(image: Image.Image, _rng: np.random.Generator) -> bytes:
        x0, y0 = round(image.width * left), round(image.height * top)
        x1, y1 = image.width - round(image.width * right), image.height - round(image.height * bottom)
        return _lossless(image.crop((x0, y0, max(x0 + 1, x1), max(y0 + 1, y1))))

    return apply


def _rotate_cropped(degrees: float) -> Apply:
    """Rotated, then cut to the largest centred rectangle of the original's shape with no black corner: an
    editor's "straighten" with auto-crop."""

    def apply(image: Image.Image, _rng: np.random.Generator) -> bytes:
        theta = math.radians(abs(degrees))
        aspect = image.width / image.height
        scale = 1.0 / (math.cos(theta) + max(aspect, 1 / aspect) * math.sin(theta))
        turned = image.rotate(degrees, Image.Resampling.BICUBIC, expand=False)
        dx, dy = round(image.width * (1 - scale) / 2), round(image.height * (1 - scale) / 2)
        return _lossless(turned.crop((dx, dy, max(dx + 1, image.width - dx), max(dy + 1, image.height - dy))))

    return apply


def _mirror(image: Image.Image, _rng: np.random.Generator) -> bytes:
    return _lossless(ImageOps.mirror(image))


def _quarter_turn(image: Image.Image, _rng: np.random.Generator) -> bytes:
    return _lossless(image.transpose(Image.Transpose.ROTATE_90))


def _overlay(image: Image.Image, draw: Callable[[ImageDraw.ImageDraw, int, int], None]) -> bytes:
    """Alpha-composite a drawing over the image (keeping grey images grey)."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw(ImageDraw.Draw(layer), base.width, base.height)
    merged = Image.alpha_composite(base, layer).convert(image.mode)
    return _lossless(merged)


def _text_watermark(image: Image.Image, _rng: np.random.Generator) -> bytes:
    def draw(canvas: ImageDraw.ImageDraw, width: int, height: int) -> None:
        size = max(8, height // 12)
        font = ImageFont.load_default(size=size)
        text = "(c) matchdb 2025"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        x, y = width - (right - left) - size // 2, height - (bottom - top) - size // 2
        canvas.text((x + 1, y + 1), text, font=font, fill=(0, 0, 0, 110))
        canvas.text((x, y), text, font=font, fill=(255, 255, 255, 170))

    return _overlay(image, draw)


def _logo_watermark(image: Image.Image, _rng: np.random.Generator) -> bytes:
    def draw(canvas: ImageDraw.ImageDraw, width: int, height: int) -> None:
        side = max(6, min(width, height) // 6)
        x0, y0 = width - side - side // 4, side // 4
        canvas.rounded_rectangle((x0, y0, x0 + side, y0 + side), radius=side // 5, fill=(255, 255, 255, 140))
        inset = side // 4
        canvas.ellipse((x0 + inset, y0 + inset, x0 + side - inset, y0 + side - inset), fill=(200, 30, 40, 170))

    return _overlay(image, draw)


def _png(image: Image.Image, _rng: np.random.Generator) -> bytes:
    return _save(image, "PNG")


def _webp(image: Image.Image, _rng: np.random.Generator) -> bytes:
    return _save(image, "WEBP", quality=80)


def _greyscale(image: Image.Image, _rng: np.random.Generator) -> bytes:
    return _lossless(image.convert("L"))


TRANSFORMS: tuple[Transform, ...] = (
    Transform("jpeg-q90", "codec", "JPEG re-encode at quality 90", _jpeg(90)),
    Transform("jpeg-q70", "codec", "JPEG re-encode at quality 70", _jpeg(70)),
    Transform("jpeg-q50", "codec", "JPEG re-encode at quality 50", _jpeg(50)),
    Transform("jpeg-q30", "codec", "JPEG re-encode at quality 30", _jpeg(30)),
    Transform("png", "codec", "PNG round trip (lossless)", _png),
    Transform("webp", "codec", "lossy WebP at quality 80", _webp),
    Transform("scale-75", "resize", "downscale to 75% (Lanczos)", _scale(0.75)),
    Transform("scale-50", "resize", "downscale to 50% (Lanczos)", _scale(0.5)),
    Transform("scale-25", "resize", "downscale to 25% (Lanczos)", _scale(0.25)),
    Transform("upscale-150", "resize", "upscale to 150% (bicubic)", _scale(1.5)),
    Transform("greyscale", "colour", "converted to greyscale", _greyscale),
    Transform("brightness+20", "colour", "brightness +20%", _enhance(ImageEnhance.Brightness, 1.2)),
    Transform("brightness-20", "colour", "brightness -20%", _enhance(ImageEnhance.Brightness, 0.8)),
    Transform("contrast+20", "colour", "contrast +20%", _enhance(ImageEnhance.Contrast, 1.2)),
    Transform("contrast-20", "colour", "contrast -20%", _enhance(ImageEnhance.Contrast, 0.8)),
    Transform("gamma-0.8", "colour", "gamma 0.8 (brighter mid-tones)", _gamma(0.8)),
    Transform("gamma-1.25", "colour", "gamma 1.25 (darker mid-tones)", _gamma(1.25)),
    Transform("noise-5", "noise", "Gaussian noise, sigma 5", _noise(5)),
    Transform("noise-10", "noise", "Gaussian noise, sigma 10", _noise(10)),
    Transform("noise-20", "noise", "Gaussian noise, sigma 20", _noise(20)),
    Transform("blur", "noise", "Gaussian blur, radius 0.5% of the long side (at least 1 px)", _blur),
    Transform("watermark-text", "overlay", "semi-transparent text in the bottom-right corner", _text_watermark),
    Transform("watermark-logo", "overlay", "semi-transparent logo in the top-right corner", _logo_watermark),
    Transform("crop-2", "geometry", "centred crop keeping 98% of width and height", _crop(0.02)),
    Transform("crop-5", "geometry", "centred crop keeping 95% of width and height", _crop(0.05)),
    Transform("crop-10", "geometry", "centred crop keeping 90% of width and height", _crop(0.10)),
    Transform("crop-15", "geometry", "centred crop keeping 85% of width and height", _crop(0.15)),
    Transform("crop-20", "geometry", "centred crop keeping 80% of width and height", _crop(0.20)),
    Transform("crop-left-10", "geometry", "10% of the width cut off the left", _crop_box(0.10, 0, 0, 0)),
    Transform("crop-right-10", "geometry", "10% of the width cut off the right", _crop_box(0, 0, 0.10, 0)),
    Transform("crop-top-15", "geometry", "15% of the height cut off the top", _crop_box(0, 0.15, 0, 0)),
    Transform("crop-bottom-15", "geometry", "15% of the height cut off the bottom", _crop_box(0, 0, 0, 0.15)),
    Transform("crop-left-20", "geometry", "20% of the width cut off the left", _crop_box(0.20, 0, 0, 0)),
    Transform("crop-top-20", "geometry", "20% of the height cut off the top", _crop_box(0, 0.20, 0, 0)),
    Transform("corner-tl-10", "geometry", "top-left 90% x 90% kept", _crop_box(0, 0, 0.10, 0.10)),
    Transform("corner-br-15", "geometry", "bottom-right 85% x 85% kept", _crop_box(0.15, 0.15, 0, 0)),
    Transform("corner-tr-20", "geometry", "top-right 80% x 80% kept", _crop_box(0.20, 0, 0, 0.20)),
    Transform("corner-bl-15", "geometry", "bottom-left 85% x 85% kept", _crop_box(0, 0.15, 0.15, 0)),
    Transform("flip", "geometry", "horizontal mirror", _mirror),
    Transform("rotate-1", "geometry", "rotated 1 degree, same canvas, black corners", _rotate(1)),
    Transform("rotate-2", "geometry", "rotated 2 degrees, same canvas, black corners", _rotate(2)),
    Transform("rotate-3", "geometry", "rotated 3 degrees, same canvas, black corners", _rotate(3)),
    Transform("rotate-5", "geometry", "rotated 5 degrees, same canvas, black corners", _rotate(5)),
    Transform("rotate-cw-4", "geometry", "rotated 4 degrees clockwise, same canvas, black corners", _rotate(-4)),
    Transform("rotate-7", "geometry", "rotated 7 degrees, same canvas, black corners", _rotate(7)),
    Transform("rotate-crop-2", "geometry", "rotated 2 degrees, corners cropped away", _rotate_cropped(2)),
    Transform("rotate-crop-cw-3", "geometry", "rotated 3 degrees clockwise, corners cropped away", _rotate_cropped(-3)),
    Transform("rotate-crop-5", "geometry", "rotated 5 degrees, corners cropped away", _rotate_cropped(5)),
    Transform("rotate-crop-7", "geometry", "rotated 7 degrees, corners cropped away", _rotate_cropped(7)),
    Transform("rotate-90", "geometry", "rotated 90 degrees (counter-clockwise)", _quarter_turn),
)

BY_NAME = {transform.name: transform for transform in TRANSFORMS}
NAMES = tuple(BY_NAME)


def rng_for(seed: int, source_key: str, transform_name: str) -> np.random.Generator:
    """The generator of one copy: fixed by the seed and the two names, independent of run order or ``--limit``."""
    return np.random.default_rng(
        [seed, zlib.crc32(source_key.encode("utf-8", "surrogateescape")), zlib.crc32(transform_name.encode())]
    )


def make_copy(image: Image.Image, transform_name: str, seed: int, source_key: str) -> bytes:
    """The encoded bytes of ``image`` after the named transform."""
    return BY_NAME[transform_name].apply(image, rng_for(seed, source_key, transform_name))
