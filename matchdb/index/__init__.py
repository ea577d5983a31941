"""In-memory Hamming search over one collection's hashes of one type: a cache the database can always rebuild."""

from matchdb.index.base import HammingIndex, Hit
from matchdb.index.bktree import BKTreeIndex
from matchdb.index.numpy_tree import NumpyTreeIndex

__all__ = ["BKTreeIndex", "HammingIndex", "Hit", "NumpyTreeIndex"]
