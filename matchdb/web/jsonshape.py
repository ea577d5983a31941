"""A cheap look at a JSON body's shape before it is parsed: how many values it holds and how deeply it nests.

Why: ``json.loads`` builds a Python object of 30 to 200 bytes per value, so 64 MB of ``[{}, {}, ...]`` became 1.7 GB
before any check could see that a legal request holds at most a hundred records. :class:`JsonShape` counts the
structural characters outside strings (``{``, ``[`` and ``,`` begin a value; ``}`` and ``]`` end a container)
with numpy, a slice at a time as the body arrives, keeping only a few integers between slices; a body past the
limits is refused before anything is built from it.

The count is exact for valid JSON, and for the valid prefix of invalid JSON, which is all a parser materialises
before it fails: so it bounds what ``json.loads`` will build. A value is an array element or an object member
(its key and value); every one but the first of a container follows a comma, the first follows its opening bracket.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SLICE = 256 * 1024  # bytes scanned at once: bounds the temporary arrays (about 40 bytes per byte scanned)
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPENS, _CLOSES = (ord("{"), ord("[")), (ord("}"), ord("]"))


class ShapeLimit(ValueError):
    """The body holds more values, or nests deeper (``depth``), than the limits allow."""

    def __init__(self, text: str, depth: bool) -> None:
        super().__init__(text)
        self.depth = depth


class JsonShape:
    """Feed a JSON text's bytes in any split; :meth:`feed` raises :class:`ShapeLimit` as soon as a limit is passed."""

    def __init__(self, max_values: int, max_depth: int) -> None:
        self.max_values = max_values
        self.max_depth = max_depth
        self.values = 1  # the top-level value
        self.depth = 0
        self._in_string = False
        self._backslashes = 0  # the run of backslashes that ended the previous slice

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), SLICE):
            self._scan(bytes(view[start : start + SLICE]))

    def _scan(self, piece: bytes) -> None:
        if not piece:
            return
        plain = b"\\" not in piece and not self._backslashes  # no escapes to work out (base64, most text)
        if plain and self._in_string and b'"' not in piece:
            return  # inside one long string (an image's base64): nothing here is structure
        data = np.frombuffer(piece, np.uint8)
        real_quotes = data == _QUOTE
        if not plain:
            real_quotes &= ~self._escaped(data)
        quotes_before = np.cumsum(real_quotes, dtype=np.int64) + self._in_string
        outside = (quotes_before & 1) == 0  # (a quote itself is never structural, whatever this says of it)
        opens = outside & ((data == _OPENS[0]) | (data == _OPENS[1]))
        closes = outside & ((data == _CLOSES[0]) | (data == _CLOSES[1]))
        self.values += int(np.count_nonzero(opens)) + int(np.count_nonzero(outside & (data == _COMMA)))
        depth = np.cumsum(opens.astype(np.int32) - closes, dtype=np.int64) + self.depth
        self._in_string = bool(quotes_before[-1] & 1)
        self.depth = int(depth[-1])
        if self.values > self.max_values:
            raise ShapeLimit(f"more than {self.max_values} values", depth=False)
        if int(depth.max()) > self.max_depth:
            raise ShapeLimit(f"nested deeper than {self.max_depth} levels", depth=True)

    def _escaped(self, data: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        """Which bytes follow an odd run of backslashes (an escaped quote is part of its string)."""
        backslash = data == _BACKSLASH
        positions = np.arange(len(data), dtype=np.int64)
        # The last byte at or before each position that is not a backslash (-1 - carry: none in this slice).
        last_other = np.maximum.accumulate(np.where(backslash, -1 - self._backslashes, positions))
        run_before = np.empty(len(data), np.int64)
        run_before[0] = self._backslashes
        run_before[1:] = positions[:-1] - last_other[:-1]
        self._backslashes = int(positions[-1] - last_other[-1])
        escaped: npt.NDArray[np.bool_] = (run_before & 1) == 1
        return escaped
