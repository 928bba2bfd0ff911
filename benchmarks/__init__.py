"""Benchmarks, outside the package as in flax and maxtext: they use `attn` and are used by nothing
in it. `suites` (what `python -m launch.bench` runs), `cases` (shapes and the calls compared),
`timing` (timing and the machine), `memory` (peak memory in child processes), `tables` (printing)."""
