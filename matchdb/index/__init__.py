"""In-memory Hamming search over one collection's hashes of one type: a cache the database can always rebuild."""

from matchdb.index.base import HammingIndex, Hit
from matchdb.index.bktree import BKTreeIndex

__all__ = ["BKTreeIndex", "HammingIndex", "Hit"]
