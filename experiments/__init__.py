"""Experiment configs (ml_collections) and their sweeps: no logic. Pass one to launch.train or
launch.sweep as `--config=experiments/NAME.py[:preset]`."""
