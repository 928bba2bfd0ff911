"""Run and sweep directories, the metrics writer, sweeps, comparison tables and plots.

Imports nothing else of `attn`: it reads and writes files (`files` names them all), so `launch` and
`attn.train` can both use it. `files` (names, atomic JSON writes, readers), `writer` (metrics.jsonl
and TensorBoard events), `sweep` (one child process per point), `compare` (tables and curves across
runs) and `plots` (attention heatmaps).
"""
