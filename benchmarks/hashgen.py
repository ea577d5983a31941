"""Realistic bmh1 and phash hashes for the index benchmark: a few thousand hashed from real photos, a million derived.

Hashing a million real images takes hours, so the generator hashes a few thousand and derives the rest in a way that
keeps what matters to an index: the per-bit statistics and the spread of distances between unrelated hashes, and the
number of bits that copies of one image differ by. Everything is drawn from one ``numpy.random.Generator`` seeded
with ``seed`` (default :data:`DEFAULT_SEED`), and the corpus files are read in sorted order, so one corpus and one
seed always give the same hashes. Exactly:

1. Real variants (``real_variants``, default 3,000). Each corpus photo is decoded once and shrunk to at most
   ``WORK_SIDE`` px. A variant is a random crop of 35-100% of each side, then with probability 0.4 a blend with a
   crop of another photo (weight 0.15-0.6 of the other), then a rescale to 40-100% (at least 32 px per side), then
   JPEG at quality 75-95; it is hashed with :func:`matchdb.hashing.hash_image`. These are unrelated hashes of real
   images (variants of one photo can be close, which real collections also have).
2. Copy statistics (``measure_copy_flips``, default 400 measurements). A photo is hashed as stored, then as a
   re-encode (JPEG quality 60-95) or a resize (to 30-90%, Lanczos or bilinear, saved as PNG) or both; the number of
   differing bits of each kind is recorded. On the shared corpus (seed 20260601) the median is 1 of 961 bmh1 bits
   and 1 of 64 phash bits, the 90th percentile 5 and 4. Near-duplicates below flip a number of bits drawn from
   these measured counts, at uniformly random positions.
3. Derived unrelated hashes (``BitModel``): a Gaussian copula of each kind's bits, fitted on the real variants.
   Each bit is one when a latent Gaussian value exceeds the threshold that gives that bit's measured frequency of
   ones; the latent values are correlated as the bits are (the measured Pearson correlation of each pair of bits,
   turned into a Gaussian one by Sheppard's formula ``sin(pi/2 * r)``, kept to its ``MODEL_RANK`` main factors plus
   independent noise per bit). Photos also share layouts (horizons, centred subjects): each draw mixes a share
   ``a`` of one of ``SCENES`` random latent "scene" draws (``a**2`` uniform in [0, ``SCENE_SHARE``]) with its own.
   This keeps every bit's frequency, the correlation of bits, and roughly the spread of distances between
   unrelated real hashes (``distance_profile``; the benchmark prints real and derived side by side: the median and
   upper percentiles match, the derived set has somewhat fewer very close unrelated pairs than the real one).
4. Collection (``generate``): near-duplicate groups whose sizes follow a Zipf law of exponent ``GROUP_ZIPF``
   (about 60% of records are singletons; at 1M records the largest group has about a thousand members; sizes
   are capped at ``GROUP_MAX``). Each group has a derived base hash; its first member is the base (from step 3)
   and every other member the base with measured copy flips (bmh1 and phash drawn independently). Records are
   shuffled, so a group's members are spread over row ids as they would be in a collection that grows over time.
5. Queries: half are fresh copies of a random stored record (so popular groups are queried more), half fresh
   derived hashes that are not stored.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from matchdb.hashing import hash_image

DEFAULT_SEED = 20_260_601
WORK_SIDE = 384
MODEL_RANK = 64
SCENES = 30
SCENE_SHARE = 0.95
GROUP_ZIPF = 3.0
GROUP_MAX = 2000
GRID = {"bmh1": 31, "phash": 8}
NBITS = {"bmh1": 961, "phash": 64}
NBYTES = {"bmh1": 121, "phash": 8}
KINDS = ("bmh1", "phash")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True)
class HashSet:
    """Packed hashes (LSB first, as stored) of both kinds, one row per image, and the photo each came from."""

    bmh1: np.ndarray  # (n, 121) uint8
    phash: np.ndarray  # (n, 8) uint8
    source: np.ndarray  # (n,) int32: corpus photo index (-1 when derived)

    def packed(self, kind: str) -> np.ndarray:
        return self.bmh1 if kind == "bmh1" else self.phash

    def __len__(self) -> int:
        return len(self.source)


@dataclass(frozen=True)
class Collection:
    """What the benchmark indexes and asks: records (row id = position), group of each, and queries."""

    records: HashSet
    group: np.ndarray  # (n,) int64: near-duplicate group of each record
    queries: HashSet  # source: the record a query copies, or -1 for an unrelated query
    real: HashSet
    copy_flips: dict[str, np.ndarray]


def load_photos(corpus: Path) -> list[Image.Image]:
    """Every corpus photo, RGB, shrunk to at most ``WORK_SIDE`` px (variants are then cheap to make and hash)."""
    files = sorted(
        p for sub in ("photos", "large") for p in (corpus / sub).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(f"no photos under {corpus}/photos or {corpus}/large")
    photos = []
    for path in files:
        with Image.open(path) as image:
            image.draft("RGB", (WORK_SIDE, WORK_SIDE))
            rgb = image.convert("RGB")
        rgb.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.LANCZOS)
        photos.append(rgb)
    return photos


def _hash(image: Image.Image, quality: int | None = None) -> tuple[bytes, bytes]:
    buffer = io.BytesIO()
    if quality is None:
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=quality)
    hashes = hash_image(buffer.getvalue()).hashes
    return hashes["bmh1"].data, hashes["phash"].data


def _crop(image: Image.Image, rng: np.random.Generator, low: float = 0.35) -> Image.Image:
    width, height = image.size
    w = max(8, int(width * rng.uniform(low, 1.0)))
    h = max(8, int(height * rng.uniform(low, 1.0)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return image.crop((x, y, x + w, y + h))


def real_variants(photos: Sequence[Image.Image], count: int, rng: np.random.Generator) -> HashSet:
    """Hash ``count`` random crops / blends / rescales of real photos (see the module docstring, step 1)."""
    bmh1 = np.empty((count, NBYTES["bmh1"]), np.uint8)
    phash = np.empty((count, NBYTES["phash"]), np.uint8)
    source = rng.integers(0, len(photos), count).astype(np.int32)
    for i in range(count):
        image = _crop(photos[int(source[i])], rng)
        if rng.random() < 0.4:
            other = _crop(photos[int(rng.integers(0, len(photos)))], rng).resize(image.size, Image.Resampling.BILINEAR)
            image = Image.blend(image, other, float(rng.uniform(0.15, 0.6)))
        scale = rng.uniform(0.4, 1.0)
        size = (max(32, int(image.width * scale)), max(32, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        b, p = _hash(image, int(rng.integers(75, 96)))
        bmh1[i] = np.frombuffer(b, np.uint8)
        phash[i] = np.frombuffer(p, np.uint8)
    return HashSet(bmh1, phash, source)


def measure_copy_flips(photos: Sequence[Image.Image], count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Differing bits between a stored photo and a re-encoded and/or resized copy (module docstring, step 2)."""
    flips: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for _ in range(count):
        image = photos[int(rng.integers(0, len(photos)))]
        original = _hash(image)
        copy = image
        mode = int(rng.integers(0, 3))  # 0: re-encode, 1: resize, 2: both
        if mode >= 1:
            scale = rng.uniform(0.3, 0.9)
            method = Image.Resampling.LANCZOS if rng.random() < 0.5 else Image.Resampling.BILINEAR
            copy = copy.resize((max(16, int(copy.width * scale)), max(16, int(copy.height * scale))), method)
        hashed = _hash(copy, int(rng.integers(60, 96)) if mode != 1 else None)
        for kind, a, b in zip(KINDS, original, hashed, strict=True):
            flips[kind].append((int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).bit_count())
    return {kind: np.array(values, np.int32) for kind, values in flips.items()}


def _unpack(packed: np.ndarray, kind: str) -> np.ndarray:
    return np.unpackbits(packed, axis=1, bitorder="little")[:, : NBITS[kind]]


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, axis=1, bitorder="little")


@dataclass(frozen=True)
class BitModel:
    """A Gaussian copula of one kind's bits, fitted on real hashes (module docstring, step 3)."""

    kind: str
    loadings: np.ndarray  # (nbits, rank) float32: latent factors of each bit
    residual: np.ndarray  # (nbits,) float32: standard deviation of each bit's own noise
    threshold: np.ndarray  # (nbits,) float32: a bit is one when its latent value exceeds this
    scenes: np.ndarray  # (SCENES, rank + nbits) float32: shared latent draws of the scene types

    @classmethod
    def fit(cls, packed: np.ndarray, kind: str, rng: np.random.Generator) -> BitModel:
        bits = _unpack(packed, kind).astype(np.float64)
        ones = bits.mean(axis=0).clip(0.005, 0.995)
        pearson = np.asarray(np.nan_to_num(np.corrcoef(bits.T)))
        np.fill_diagonal(pearson, 1.0)
        latent = np.sin(np.pi / 2 * pearson)  # Sheppard: the Gaussian correlation behind a binary one
        values, vectors = np.linalg.eigh(latent)
        order = np.argsort(values)[::-1][:MODEL_RANK]
        loadings = vectors[:, order] * np.sqrt(values[order].clip(1e-6, None))
        loadings /= np.maximum(1.0, np.sqrt((loadings**2).sum(axis=1)))[:, None]
        residual = np.sqrt((1.0 - (loadings**2).sum(axis=1)).clip(0.0, None))
        normal = statistics.NormalDist()
        threshold = np.array([normal.inv_cdf(1.0 - p) for p in ones])
        scenes = rng.standard_normal((SCENES, loadings.shape[1] + bits.shape[1]))
        f32 = np.float32
        return cls(kind, loadings.astype(f32), residual.astype(f32), threshold.astype(f32), scenes.astype(f32))

    def sample(self, count: int, rng: np.random.Generator, chunk: int = 65_536) -> np.ndarray:
        """``count`` new packed hashes."""
        rank = self.loadings.shape[1]
        out = np.empty((count, NBYTES[self.kind]), np.uint8)
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            share = np.sqrt(rng.uniform(0.0, SCENE_SHARE, (n, 1))).astype(np.float32)
            draw = share * self.scenes[rng.integers(0, SCENES, n)]
            draw += np.sqrt(1.0 - share * share) * rng.standard_normal(draw.shape, np.float32)
            values = draw[:, :rank] @ self.loadings.T + draw[:, rank:] * self.residual
            out[start : start + n] = _pack((values > self.threshold).astype(np.uint8))
        return out


def derive_unrelated(models: dict[str, BitModel], count: int, rng: np.random.Generator) -> HashSet:
    """``count`` new unrelated hashes of both kinds drawn from the fitted models."""
    return HashSet(models["bmh1"].sample(count, rng), models["phash"].sample(count, rng), np.full(count, -1, np.int32))


def flip_bits(packed: np.ndarray, kind: str, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of ``packed`` rows with ``counts[i]`` distinct random bits of row ``i`` flipped."""
    out = packed.copy()
    nbits = NBITS[kind]
    for flips in np.unique(counts):
        if flips == 0:
            continue
        rows = np.flatnonzero(counts == flips)
        positions = rng.integers(0, nbits, (len(rows), flips))
        while True:  # redraw the rows that hit one position twice, so exactly ``flips`` distinct bits change
            ordered = np.sort(positions, axis=1)
            again = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
            if not len(again):
                break
            positions[again] = rng.integers(0, nbits, (len(again), flips))
        masks = np.zeros((len(rows), nbits), np.uint8)
        np.put_along_axis(masks, positions, 1, axis=1)
        out[rows] ^= _pack(masks)
    return out


def group_sizes(records: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed near-duplicate group sizes (Zipf, exponent ``GROUP_ZIPF``, capped) summing to ``records``."""
    sizes = np.minimum(rng.zipf(GROUP_ZIPF, records), GROUP_MAX)
    ends = np.cumsum(sizes)
    cut = int(np.searchsorted(ends, records))
    sizes = sizes[: cut + 1].copy()
    sizes[-1] -= int(ends[cut]) - records
    return sizes[sizes > 0]


def generate(
    corpus: Path, records: int, queries: int, seed: int = DEFAULT_SEED, real_count: int = 3000, flip_count: int = 400
) -> Collection:
    """The benchmark's records and queries (module docstring, steps 1-5)."""
    rng = np.random.default_rng(seed)
    photos = load_photos(corpus)
    real = real_variants(photos, real_count, rng)
    copy_flips = measure_copy_flips(photos, flip_count, rng)
    sizes = group_sizes(records, rng)
    models = {kind: BitModel.fit(real.packed(kind), kind, rng) for kind in KINDS}
    bases = derive_unrelated(models, len(sizes), rng)
    group = np.repeat(np.arange(len(sizes)), sizes)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    is_copy = np.ones(records, bool)
    is_copy[first] = False
    packed = {}
    for kind in KINDS:
        rows = bases.packed(kind)[group]
        counts = np.where(is_copy, rng.choice(copy_flips[kind], records), 0)
        packed[kind] = flip_bits(rows, kind, counts, rng)
    order = rng.permutation(records)
    stored = HashSet(packed["bmh1"][order], packed["phash"][order], np.full(records, -1, np.int32))
    copies = queries // 2
    copied = rng.integers(0, records, copies)
    fresh = derive_unrelated(models, queries - copies, rng)
    query_packed = {
        kind: np.concatenate(
            [
                flip_bits(stored.packed(kind)[copied], kind, rng.choice(copy_flips[kind], copies), rng),
                fresh.packed(kind),
            ]
        )
        for kind in KINDS
    }
    source = np.concatenate([copied.astype(np.int32), fresh.source])
    shuffle = rng.permutation(queries)
    query_set = HashSet(query_packed["bmh1"][shuffle], query_packed["phash"][shuffle], source[shuffle])
    return Collection(stored, group[order].astype(np.int64), query_set, real, copy_flips)


def distance_profile(packed: np.ndarray, kind: str, pairs: int, rng: np.random.Generator) -> dict[str, float]:
    """Percentiles of the distance of random pairs (in bits) and the share within 5% and 10% of the bits."""
    first = rng.integers(0, len(packed), pairs)
    second = rng.integers(0, len(packed), pairs)
    keep = first != second
    bits = _unpack(packed[first[keep]] ^ packed[second[keep]], kind).sum(axis=1)
    nbits = NBITS[kind]
    out = {f"p{q}": float(np.percentile(bits, q)) for q in (1, 10, 50, 90)}
    out["within_5pct"] = float(np.mean(bits <= 0.05 * nbits))
    out["within_10pct"] = float(np.mean(bits <= 0.10 * nbits))
    out["mean_ones"] = float(_unpack(packed, kind).mean())
    return out
