"""The visual hash value type: kind, packed bytes, bit string, Hamming and percent distance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Real bit length of each hash kind (bmh1: 31 x 31 blocks; phash: 8 x 8 DCT coefficients).
NBITS = {"bmh1": 961, "phash": 64}

#: Every stored hash records this, so a future change of algorithm can be detected and rehashed.
ALGORITHM_VERSION = {"bmh1": 1, "phash": 1}

HASH_TYPES = tuple(NBITS)


def packed_size(kind: str) -> int:
    """Bytes of the packed form: OpenCV's layout, one byte per started group of 8 bits (121 for bmh1, 8 for phash)."""
    if kind not in NBITS:
        raise ValueError(f"unknown hash type {kind!r}; expected one of {', '.join(HASH_TYPES)}")
    return (NBITS[kind] + 7) // 8


@dataclass(frozen=True)
class VisualHash:
    """One hash of one image. Bit ``i`` lives in byte ``i // 8`` at position ``i % 8`` (LSB first), as in OpenCV."""

    kind: str
    data: bytes
    _int: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in NBITS:
            raise ValueError(f"unknown hash type {self.kind!r}; expected one of {', '.join(HASH_TYPES)}")
        if len(self.data) != packed_size(self.kind):
            raise ValueError(f"{self.kind} hash must be {packed_size(self.kind)} bytes, got {len(self.data)}")
        object.__setattr__(self, "_int", int.from_bytes(self.data, "little"))

    @classmethod
    def from_bits(cls, kind: str, bits: np.ndarray) -> VisualHash:
        """Pack a boolean vector of ``NBITS[kind]`` bits."""
        if bits.shape != (NBITS[kind],):
            raise ValueError(f"{kind} needs {NBITS[kind]} bits, got shape {bits.shape}")
        return cls(kind, np.packbits(bits.astype(np.uint8), bitorder="little").tobytes())

    @classmethod
    def from_string(cls, kind: str, text: str) -> VisualHash:
        """Parse the API's string form (8 binary digits per byte, most significant first)."""
        size = packed_size(kind)
        if len(text) != size * 8 or text.strip("01"):
            raise ValueError(f"{kind} string must be {size * 8} characters of 0 and 1")
        return cls(kind, bytes(int(text[i : i + 8], 2) for i in range(0, len(text), 8)))

    @property
    def nbits(self) -> int:
        return NBITS[self.kind]

    def to_string(self) -> str:
        """The API's string form, as Ximilar prints it: each byte as 8 binary digits, most significant first."""
        return "".join(format(b, "08b") for b in self.data)

    def as_int(self) -> int:
        """The hash as one integer (bit ``i`` of the hash is bit ``i`` of the integer)."""
        return self._int

    def hamming(self, other: VisualHash) -> int:
        """Number of differing bits."""
        if other.kind != self.kind:
            raise ValueError(f"cannot compare a {self.kind} hash with a {other.kind} hash")
        return (self._int ^ other._int).bit_count()

    def distance(self, other: VisualHash) -> float:
        """Percentage of differing bits over the real bit length, in [0, 100] (API.md section 4)."""
        return percent(self.hamming(other), self.nbits)

    def __str__(self) -> str:
        return self.to_string()


def percent(hamming: int, nbits: int) -> float:
    """Hamming distance as the percentage of the hash's real length."""
    return 100.0 * hamming / nbits


def pack_strings(kind: str, texts: Sequence[object]) -> tuple[np.ndarray, list[str | None]]:
    """Many hashes in the API's string form at once (:meth:`VisualHash.from_string`'s format), parsed with numpy:
    a bulk import of precomputed hashes parses a million of them, which one at a time took longer than storing them.

    Returns the packed hashes, one row per text (zeros where the text is bad), and for each text ``None`` or why it
    is not a ``kind`` hash: not a string, the wrong length, characters other than 0 and 1, or padding bits set (the
    bits past ``NBITS[kind]`` in the last byte are always 0: a 1 there would count in every distance)."""
    size = packed_size(kind)
    width = size * 8
    errors: list[str | None] = [None] * len(texts)
    blank = "0" * width
    parts: list[str] = []
    # The usual batch (every text a string of the right length, all ASCII) is checked whole, not text by text.
    joined = "".join(texts) if all(type(text) is str and len(text) == width for text in texts) else None  # type: ignore[arg-type]
    whole = joined is not None and joined.isascii()
    for index, text in enumerate(() if whole else texts):
        if not isinstance(text, str):
            errors[index] = f"{kind} must be a string of {width} characters 0 and 1, not {type(text).__name__}"
        elif len(text) != width:
            errors[index] = f"{kind} must be {width} characters 0 and 1, got {len(text)}"
        elif not text.isascii():
            errors[index] = f"{kind} must be {width} characters 0 and 1, got other characters"
        else:
            parts.append(text)
            continue
        parts.append(blank)
    if joined is None or not whole:
        joined = "".join(parts)
    characters = np.frombuffer(joined.encode("ascii"), np.uint8).reshape(len(texts), width)
    bad = np.asarray(((characters | 1) != ord("1")).any(axis=1))  # only "0" and "1" become "1" with bit 0 set
    packed = np.packbits(characters == ord("1"), axis=1, bitorder="big")  # 8 digits a byte, most significant first
    used = NBITS[kind] - 8 * (size - 1)  # bits of the last byte that belong to the hash (LSB first)
    padded: np.ndarray = (packed[:, -1] >> used) != 0 if used < 8 else np.zeros(len(texts), bool)
    for found in np.flatnonzero(bad | padded):
        at = int(found)
        if errors[at] is None:
            errors[at] = (
                f"{kind} must be {width} characters 0 and 1, got other characters"
                if bad[at]
                else f"{kind} has padding bits set (the first {8 - used} of its last 8 characters must be 0)"
            )
    packed[[error is not None for error in errors]] = 0
    return packed, errors
