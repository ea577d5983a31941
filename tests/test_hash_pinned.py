"""Hash values of committed images, pinned. A change in Pillow, libjpeg or numpy that moves a single bit fails
here loudly, whether or not OpenCV is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from matchdb.hashing import hash_image

DATA = Path(__file__).parent / "data"

# file: (width, height, phash bits, bmh1 bytes as hex)
PINNED = {
    "astronaut-128.jpg": (
        128,
        128,
        "0100001101001001001100101011101001001100101111011111101100010011",
        "fcffff79fcffff3cfe997f1e7f8ebf0fbfc7cfc7cfe3efe3fff3e7f1fffff3f8fffff9f8fcff7c38fc7f7e1cc0ff3f16e0ff3f03e0ff"
        "fb01f0e3f901f0f1fc017800fc013c00ff010fa0ffa307f0ffdd00f8f97e3cfc7c07327e9e03301fc701308fe000104f6000001f18"
        "0400ff0d0080f704008031060000",
    ),
    "chelsea-150x100.png": (
        150,
        100,
        "1010010010111010011001110110001010001010100000001110100101011010",
        "e701c0877100e0c13800f0600e00383003001cd801001ffc8c84070e7fe30303a1ff8741e0ffc760e0ff233cf0e30017f861c0037c"
        "f0f0013efcf1001ffe30188f7f0080470000801bc004c2016cfcc17077fc61fc7b3e30ff399f80ff3cdfc07f3e7ff03fff73fc9fff"
        "3dfccfff01fee7ff80fff3fff0df01",
    ),
    "coffee-120x80-rotated.jpg": (
        80,
        120,
        "1010100000111010011001110110001110011011010100100100000100000001",
        "ffff6380ffff33c0ffff33e01ffe33f00100311800007804000038000000780000f07f0000fe3f0080ff1f00e0fb0700f8f90700fc"
        "f90300fefc01007fff0080bf7f80c1ff3fe0c0ff1f00e0ff0f00c0ff070080ff0300c0ff0100f8ff0300ffff03f8ffff03fcffff00"
        "f8ff7f00fcff7f3cfeff333effff01",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_hashes(name: str) -> None:
    width, height, phash, bmh1_hex = PINNED[name]
    result = hash_image((DATA / name).read_bytes())
    assert (result.width, result.height) == (width, height)
    assert result.hashes["phash"].to_string() == phash
    assert result.hashes["bmh1"].data.hex() == bmh1_hex
    assert len(result.hashes["bmh1"].to_string()) == 968
