"""Short absl entry points: `python -m launch.NAME`."""
