"""``matchdb eval``: how well the visual hashes find edited copies of a folder's own images, and at which ``range``.

Modules, in pipeline order: :mod:`transforms` (the edits), :mod:`baselines` (other libraries' hashes, optional),
:mod:`runner` (hashing in worker processes), :mod:`groups` (known duplicates to exclude), :mod:`distances` (bulk
Hamming distances), :mod:`metrics` (thresholds, recall, intervals), :mod:`pipeline` (one run end to end), and the
reports: :mod:`report_text`, :mod:`report_html` with :mod:`svg`; JSON is :meth:`metrics.EvalReport.to_dict`.
"""
