"""Image bytes -> 8-bit pixels, exactly as ``cv2.imdecode(data, cv2.IMREAD_COLOR)`` would see them.

The visual hashes are defined on OpenCV's decoding, so this module reproduces it: colour and grey JPEGs through
libjpeg-turbo directly (:mod:`.jpeg`, the same library as OpenCV's), plain 8-bit PNGs through libpng (:mod:`.png`),
everything else with Pillow: EXIF orientation applied, alpha dropped, grey kept as one channel (OpenCV expands it to
three equal ones, which hash the same), 16-bit samples reduced to their high byte, first frame only.

Speed matters here: the common modes (RGB, RGBA, L) are decoded straight into a numpy buffer that this module
owns, and orientation is applied as a numpy view, so no full-image copy is ever made. The hashes then read only
the few rows and columns they need.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from matchdb.errors import ImageError
from matchdb.hashing.jpeg import decode_jpeg, exif_orientation
from matchdb.hashing.png import decode_png

#: Formats matchdb accepts (Pillow names; the JPEG plugin also opens MPO, the multi-picture JPEG of some cameras).
FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "GIF", "BMP")

#: Default cap on decoded pixels (width * height): 100 megapixels, about 400 MB of RGBX buffer.
DEFAULT_MAX_PIXELS = 100_000_000
# Named in the error, so whoever meets the limit knows which setting raises it (matchdb.config reads it).
_LIMIT_SETTING = "the limit is MATCHDB_MAX_PIXELS"

_ORIENTATION_TAG = 0x0112

# Modes whose Pillow storage is a plain row-major block we can decode into directly: bytes per pixel.
_DIRECT_MODES = {"RGB": 4, "RGBA": 4, "RGBX": 4, "RGBa": 4, "L": 1}


@dataclass(frozen=True)
class Pixels:
    """Decoded 8-bit pixels and the EXIF orientation to view them in.

    ``buffer`` is C-contiguous: ``(rows, cols)`` for grey images, else ``(rows, cols, 3)`` holding red, green and
    blue (the libjpeg-turbo and libpng paths) or ``(rows, cols, 4)`` with one more, ignored byte (alpha or padding:
    Pillow's own layout). ``array`` is the oriented view.
    """

    buffer: np.ndarray
    orientation: int = 1

    def __post_init__(self) -> None:
        shape = self.buffer.shape
        if self.buffer.dtype != np.uint8 or not self.buffer.flags.c_contiguous:
            raise ValueError("pixel buffer must be C-contiguous uint8")
        if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))) or not 1 <= self.orientation <= 8:
            raise ValueError(f"bad pixel buffer shape {shape} or orientation {self.orientation}")

    @property
    def array(self) -> np.ndarray:
        """The pixels as the viewer sees them: a (possibly strided) view of ``buffer``."""
        return _orient(self.buffer, self.orientation)

    @property
    def height(self) -> int:
        return int(self.buffer.shape[1 if self.orientation >= 5 else 0])

    @property
    def width(self) -> int:
        return int(self.buffer.shape[0 if self.orientation >= 5 else 1])

    @property
    def is_grey(self) -> bool:
        return self.buffer.ndim == 2


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Pixels:
    """Decode image bytes; raise :class:`ImageError` with a user-readable message on any failure."""
    if not data:
        raise ImageError("cannot identify image: empty data")
    jpeg = decode_jpeg(data, max_pixels)
    if jpeg is not None:
        return Pixels(*jpeg)
    png = decode_png(data, max_pixels)
    if png is not None:
        return Pixels(*png)
    return decode_with_pillow(data, max_pixels)


def decode_with_pillow(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Pixels:
    """Pillow's path: every format, and the JPEGs :mod:`.jpeg` leaves (or all of them without simplejpeg)."""
    image = _open(data, max_pixels)
    try:
        array = _load_array(image)
        if image.format == "TIFF" and image.mode == "RGBA":
            array = _premultiply(array, image)
        orientation = exif_orientation(data) if image.format in ("JPEG", "MPO") else _orientation(image)
    except ImageError:
        raise
    except _DECODER_ERRORS as exc:
        raise _image_error(exc) from exc
    finally:
        image.close()
    return Pixels(array, orientation)


# What Pillow's plugins raise on malformed input (they are not consistent about it).
_DECODER_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError)


def _image_error(exc: Exception) -> ImageError:
    if "truncated" in str(exc).lower():
        return ImageError("image truncated: the file ends before the image data does")
    return ImageError(f"corrupt image: {exc}")


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own, higher guard (2 x Image.MAX_IMAGE_PIXELS) fired first; say it in our words.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else "too many"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageError(f"image too large: {pixels} pixels > limit {limit} ({_LIMIT_SETTING})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("cannot identify image: the data is not a JPEG, PNG, TIFF, WebP, GIF or BMP file") from exc
    except _DECODER_ERRORS as exc:
        raise _image_error(exc) from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(f"image too large: {width * height} pixels > limit {max_pixels} ({_LIMIT_SETTING})")
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"corrupt image: size {width}x{height}")
    return image


def _load_array(image: ImageFile.ImageFile) -> np.ndarray:
    """Decode the first frame into a buffer in one of the layouts :class:`Pixels` documents."""
    mode = image.mode
    if mode in _DIRECT_MODES and image.format in ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"):
        direct = _decode_into_numpy(image, _DIRECT_MODES[mode])
        if direct is not None:
            return direct
    tile_args = image.tile[0].args if image.tile else None
    cmyk_inverted = isinstance(tile_args, tuple) and tile_args[:1] == ("CMYK;I",)  # Adobe-style inverted samples
    image.load()
    if mode == "CMYK":
        return _cmyk_like_opencv(np.asarray(image), cmyk_inverted)
    if mode == "P" and image.format == "GIF" and isinstance(image.info.get("transparency"), int):
        return _gif_like_opencv(image)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: OpenCV keeps the high byte. Pillow may widen it to 32-bit "I"; same values.
        return np.ascontiguousarray(np.asarray(image).astype(np.uint32) >> 8, dtype=np.uint8)
    if mode in ("L", "1", "LA", "La"):
        return np.ascontiguousarray(np.asarray(image.convert("L") if mode != "L" else image))
    return np.ascontiguousarray(np.asarray(image.convert("RGBX")))


def _cmyk_like_opencv(cmyk: np.ndarray, inverted: bool) -> np.ndarray:
    """OpenCV's CMYK JPEG conversion on the raw (Adobe-inverted) samples: ``k - ((255 - c) * k >> 8)``."""
    raw = (255 - cmyk if inverted else cmyk).astype(np.int32)
    key = raw[..., 3:4]
    out = np.empty(cmyk.shape, dtype=np.uint8)
    out[..., :3] = key - (((255 - raw[..., :3]) * key) >> 8)
    out[..., 3] = 255
    return out


def _gif_like_opencv(image: Image.Image) -> np.ndarray:
    """OpenCV's GIF decoder paints transparent pixels with the background colour of the palette."""
    palette = np.zeros((256, 4), dtype=np.uint8)
    entries = np.frombuffer(bytes(image.getpalette("RGB") or b""), dtype=np.uint8).reshape(-1, 3)[:256]
    palette[: len(entries), :3] = entries
    background = image.info.get("background", 0)
    transparent = image.info["transparency"]
    if isinstance(background, int) and 0 <= background < 256 and 0 <= transparent < 256:
        palette[transparent] = palette[background]
    return np.ascontiguousarray(palette[np.asarray(image)])


def _premultiply(array: np.ndarray, image: Image.Image) -> np.ndarray:
    """OpenCV reads TIFFs through libtiff's RGBA interface, which premultiplies unassociated alpha (rounded)."""
    alpha = np.asarray(image.getchannel("A"), dtype=np.uint32)
    if array.ndim == 2:
        return ((array * alpha + 127) // 255).astype(np.uint8)
    out = array.copy()
    out[..., :3] = (array[..., :3] * alpha[..., None] + 127) // 255
    return out


def _decode_into_numpy(image: ImageFile.ImageFile, bytes_per_pixel: int) -> np.ndarray | None:
    """Let Pillow's decoder write straight into a numpy buffer (its own layout: 1 or 4 bytes a pixel).

    This avoids the full-image copy of ``np.asarray(image)``, a fifth of the decode time on large photos. It uses
    Pillow's buffer mapping (``Image.core.map_buffer``, as ``Image.frombuffer`` does); if a Pillow release stops
    offering it we return None and the caller takes the ordinary path.
    """
    width, height = image.size
    shape: tuple[int, ...] = (height, width) if bytes_per_pixel == 1 else (height, width, bytes_per_pixel)
    buffer = np.empty(shape, dtype=np.uint8)
    try:
        core = Image.core.map_buffer(  # type: ignore[attr-defined]
            buffer, (width, height), "raw", 0, (image.mode, width * bytes_per_pixel, 1)
        )
        image.im = core
    except (AttributeError, TypeError, ValueError):
        return None
    image.load()
    if image.im is not core:  # the plugin replaced our buffer (it should not); trust only what it decoded into
        return None
    return buffer


def _orientation(image: Image.Image) -> int:
    if image.format not in ("TIFF", "PNG", "WEBP"):
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation as a numpy view (no copy): the 8 flips and rotations of the dihedral group."""
    if orientation == 1:
        return array
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1, :]
    transposed = array.swapaxes(0, 1)
    if orientation == 5:
        return transposed
    if orientation == 6:
        return transposed[:, ::-1]
    if orientation == 7:
        return transposed[::-1, ::-1]
    return transposed[::-1, :]
