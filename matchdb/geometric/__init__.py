"""Opt-in geometric matching: crops (centred, one-sided, corner) and small turns, which the hashes cannot see.

Each record keeps 38 window hashes (:mod:`.windows`, 304 bytes); a query tries 57 pairs of its own windows
against stored ones (:mod:`.query`); the score is the smallest Hamming distance in bits of 64, given as a
percentage like any hash distance. :class:`.index.GeometricIndex` holds a collection's signatures and scans them
with a compiled kernel (:mod:`.scan`).
"""

from matchdb.geometric.index import GeometricIndex, Snapshot
from matchdb.geometric.query import NBITS, Query
from matchdb.geometric.signature import Prepared, prepare, query, signature, signature_words, words_of
from matchdb.geometric.windows import NWINDOWS, SIGNATURE_BYTES

__all__ = [
    "NBITS",
    "NWINDOWS",
    "SIGNATURE_BYTES",
    "GeometricIndex",
    "Prepared",
    "Query",
    "Snapshot",
    "prepare",
    "query",
    "signature",
    "signature_words",
    "words_of",
]
