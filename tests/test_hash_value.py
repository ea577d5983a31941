"""The hash value type: packing, string form, distances (API.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest

from matchdb.hashing import NBITS, VisualHash, percent

# The bmh1 string from Ximilar's visual_hash example: 968 characters, the last byte holding only bit 960.
SPEC_BMH1 = (
    "11111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "11111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "11111111111111111111111111111111111111111111111111110011111111111111111111111111111100001111111111111111"
    "01111111111110001111111101111111000000001111110011111111001111110000000011111110111111110001111100000000"
    "11111111111111110000111100000000111111111111111100000111100000001111111111111111000000111000000011111111"
    "11111111000000011000000011111111011111110000000010000000111111110011111100000000100000001111111100011111"
    "00000000100000001111111100001111000000001100000011111111000001110000000000000000111111110000001100000000"
    "00000000110000000000000100000000000000001100000000000000000000000000000000100000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000010011000000000000011100000000000111"
    "11111000000000111111110000000001"
)


def test_spec_example_round_trips() -> None:
    assert len(SPEC_BMH1) == 968
    value = VisualHash.from_string("bmh1", SPEC_BMH1)
    assert value.to_string() == SPEC_BMH1
    assert len(value.data) == 121
    phash = VisualHash.from_string("phash", "1111110000001011010000111110110010111001000101100010010110001010")
    assert phash.to_string() == "1111110000001011010000111110110010111001000101100010010110001010"


def test_bit_order_is_lsb_first_within_each_byte() -> None:
    bits = np.zeros(64, dtype=bool)
    bits[0] = True  # bit 0 -> byte 0, lowest bit -> the string shows it last in the first 8 characters
    bits[9] = True
    value = VisualHash.from_bits("phash", bits)
    assert value.data[:2] == bytes([0b00000001, 0b00000010])
    assert value.to_string()[:16] == "0000000100000010"
    assert value.as_int() == 1 | (1 << 9)


def test_bmh1_last_byte_holds_only_bit_960() -> None:
    bits = np.ones(961, dtype=bool)
    value = VisualHash.from_bits("bmh1", bits)
    assert value.data[-1] == 1
    assert value.to_string().endswith("11111111" + "00000001")


def test_hamming_and_percent_distance() -> None:
    a = VisualHash.from_bits("bmh1", np.zeros(961, dtype=bool))
    one = np.zeros(961, dtype=bool)
    one[960] = True
    b = VisualHash.from_bits("bmh1", one)
    assert a.hamming(b) == 1
    assert round(a.distance(b), 1) == 0.1  # the spec's example: 1 bit of 961 shows as 0.1
    assert a.distance(a) == 0.0
    assert percent(250, NBITS["bmh1"]) == pytest.approx(26.01456)
    full = VisualHash.from_bits("phash", np.ones(64, dtype=bool))
    assert VisualHash.from_bits("phash", np.zeros(64, dtype=bool)).distance(full) == 100.0


@pytest.mark.parametrize(
    ("kind", "text"),
    [("phash", "01" * 31), ("phash", "2" * 64), ("bmh1", "0" * 961), ("sha1", "0" * 64)],
)
def test_bad_strings_are_refused(kind: str, text: str) -> None:
    with pytest.raises(ValueError):
        VisualHash.from_string(kind, text)


def test_kinds_do_not_compare() -> None:
    with pytest.raises(ValueError, match="cannot compare"):
        VisualHash("phash", bytes(8)).hamming(VisualHash("bmh1", bytes(121)))
