"""Run and sweep directories, the metrics writer, sweeps, comparison tables and plots.

Imports nothing else of `attn`: it reads and writes files (`files` names them all), so `launch` and
`attn.train` can both use it. `files` (names, atomic JSON writes, readers), `identity` (config.json,
a run's identity checked on resume, and summary.json), `metrics` (which way a metric improves: the
one rule the loop and compare follow), `writer` (metrics.jsonl and TensorBoard events), `sweep` (one
child process per point), `compare` (tables and curves across runs) and `plots` (attention heatmaps).
"""
