"""The numpy tree's size limits and thresholds, in one module so that tests (and future tuning) can change them.

Every module of the tree reads them as ``tuning.NAME`` at call time, never by ``from ... import``, so a changed
value takes effect everywhere. Break-even points were measured on a 2-core AMD EPYC with
``benchmarks/bench_index.py``.
"""

FANOUT = 16  # at most this many children per inner node (fewer when the distances do not spread)
LEAF_SIZE = 48  # target records per leaf
FIRST_LEAVES = 2048  # k nearest: records in the first leaves scanned, to tighten the radius early
BLOCK_BYTES = 2  # bytes of a one-word hash per block table (1, 2 or 4)
NEAR_SHARE = 0.05  # long hashes: the block tables are sized for radii up to this share of the bits ...
TABLE_RADIUS = 2  # ... at which each table is probed up to about this many differing bits (sets how many tables)
KEY_SLACK = 3  # a table's key has log2(n) - KEY_SLACK bits (rounded down): 8 to 16 records per bucket ...
KEY_MIN = 8  # ... but at least this many (fewer tables' worth of probes than records at small sizes) ...
KEY_MAX = 24  # ... and at most this many (the bucket offsets take 4 bytes per key value)
CHUNK_ROWS = 4096  # rows per vectorised distance step: temporaries stay in the CPU cache ...
WORD_CHUNK_ROWS = 65536  # ... (for one-word hashes)
LINEAR_SHARE = 0.3  # scan everything when the pivot tree keeps more than this share of the records ...
LEAF_SCAN_SHARE = 0.85  # ... or its leaves, before their per-record filter, hold more than this share ...
BLOCK_LINEAR_SHARE = 0.1  # ... or the block tables this share (reading a bucket row costs more than scanning one)
BLOCK_TREE_SHARE = 0.03  # long hashes: leave the block tables for the pivot tree past this share of entries read
BLOCK_TREE_MIN = 65_536  # ... or this many, if more (near-duplicate queries among random hashes read about 40k) ...
GATHER_COST = 16  # ... where a hash compared after the entries' filter counts as this many entries
# Below these many records a plain scan answers (radius search, k nearest): the filters' fixed cost is larger
# there. Measured break-even points on a 2-core AMD EPYC (benchmarks/bench_index.py data, subsets).
SMALL_BLOCKS = (30_000, 150_000)  # one-word hashes' block tables
SMALL_NEAR = (10_000, 10_000)  # long hashes' block tables (a scan of long hashes costs far more)
SMALL_PIVOTS = (3_000, 100_000)
# k nearest: after this many pivot walks in a row that ended in a scan, scan at once, but walk every
# PIVOT_PROBE_EVERY th query to see whether walks pay again (layout.WalkHistory).
PIVOT_FUTILE_WALKS = 3
PIVOT_PROBE_EVERY = 16
DELTA_MIN = 2048  # the delta may always hold this many records before a rebuild ...
DELTA_SHARE = 1 / 32  # ... or this share of the tree
DEAD_SHARE = 0.25  # rebuild once this share of the tree is tombstones
COMPILED_SCAN = True  # scan with the compiled kernel (matchdb.index.scan) when numba is there; else with numpy
