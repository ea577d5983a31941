"""matchdb: find duplicate and near-duplicate images by visual hash (a drop-in Ximilar Image Matching v2 API)."""

__version__ = "0.1.0"
