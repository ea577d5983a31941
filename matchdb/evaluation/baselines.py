"""Other libraries' perceptual hashes, measured next to bmh1/phash in the same run for the accuracy table.

They are optional (``pip install 'matchdb[accuracy]'``) and imported only when a run asks for them, so matchdb
itself never depends on them. Each baseline is fed the same decoded pixels as matchdb's hashes, as the PIL image a
user of that library would pass it, and returns its bits as a boolean vector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from matchdb.errors import MatchdbError


class BaselineUnavailable(MatchdbError):
    """A baseline was asked for but its package is not installed."""


@dataclass(frozen=True)
class Baseline:
    name: str
    nbits: int
    package: str  # the module to import, also named in the error message
    compute: Callable[[Image.Image], np.ndarray]
    description: str
    #: The library's own 8-orientation hashing, when it has one (PDQ does); else the 8 transposed images are hashed.
    compute_dihedral: Callable[[Image.Image], list[np.ndarray]] | None = None
    #: The hash starts by converting to grey, so orientation variants can be made of the grey image (3x cheaper).
    greys_first: bool = False


def _imagehash_phash(image: Image.Image) -> np.ndarray:
    import imagehash

    return np.asarray(imagehash.phash(image).hash, dtype=bool).ravel()


def _imagehash_dhash(image: Image.Image) -> np.ndarray:
    import imagehash

    return np.asarray(imagehash.dhash(image).hash, dtype=bool).ravel()


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _pdq(image: Image.Image) -> np.ndarray:
    import pdqhash

    bits, _quality = pdqhash.compute(_rgb_array(image))
    return np.asarray(bits, dtype=bool)


def _pdq_dihedral(image: Image.Image) -> list[np.ndarray]:
    import pdqhash

    hashes, _qualities = pdqhash.compute_dihedral(_rgb_array(image))
    return [np.asarray(bits, dtype=bool) for bits in hashes]


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "imagehash-phash", 64, "imagehash", _imagehash_phash, "imagehash.phash, 8x8 DCT (64 bits)", greys_first=True
        ),
        Baseline(
            "imagehash-dhash",
            64,
            "imagehash",
            _imagehash_dhash,
            "imagehash.dhash, 8x8 gradients (64 bits)",
            greys_first=True,
        ),
        Baseline("pdq", 256, "pdqhash", _pdq, "Meta's PDQ via the pdqhash package (256 bits)", _pdq_dihedral),
    )
}


def require(names: tuple[str, ...] | list[str]) -> list[Baseline]:
    """The named baselines, after checking that their packages import (a clear error now, not in a worker)."""
    out = []
    for name in names:
        if name not in BASELINES:
            raise BaselineUnavailable(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
        baseline = BASELINES[name]
        try:
            importlib.import_module(baseline.package)
        except ImportError as exc:
            raise BaselineUnavailable(
                f"baseline {name!r} needs the {baseline.package!r} package ({exc}); "
                "install it with: pip install 'matchdb[accuracy]'"
            ) from exc
        out.append(baseline)
    return out


_TRANSPOSES = tuple(Image.Transpose)  # the 7 non-identity elements of the dihedral group


def baseline_hashes(name: str, image: Image.Image, dihedral: bool) -> list[bytes]:
    """The named baseline's hash of ``image`` (and of its 7 other orientations if ``dihedral``), each packed like
    matchdb's hashes (bit ``i`` in byte ``i // 8``, LSB first); element 0 is the image as given."""
    baseline = BASELINES[name]
    if not dihedral:
        vectors = [baseline.compute(image)]
    elif baseline.compute_dihedral is not None:
        vectors = baseline.compute_dihedral(image)
    else:
        if baseline.greys_first:
            image = image.convert("L")
        vectors = [baseline.compute(image)] + [baseline.compute(image.transpose(t)) for t in _TRANSPOSES]
    out = []
    for bits in vectors:
        if bits.shape != (baseline.nbits,):
            raise ValueError(f"{name} returned {bits.shape} bits, expected {baseline.nbits}")
        out.append(np.packbits(bits.astype(np.uint8), bitorder="little").tobytes())
    return out
