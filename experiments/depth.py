"""How deep: 1, 2, 4 or 6 encoder and decoder layers?

Question: the notes stack attention blocks. This sweep trains the sort task with 1, 2, 4 and 6 layers
in both the encoder and the decoder (D = 64, 4 heads, post-LN as in the paper), three seeds each.

Command: python -m launch.sweep --config=experiments/depth.py --workdir=runs/depth
Time on a 2-core CPU: see WORKSPACE.md (measured with the command above).
Findings: see WORKSPACE.md, "What the sweeps found".
"""

from experiments import base

DEPTHS = (1, 2, 4, 6)


def get_config(preset: str = ""):
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task.name = "sort"
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config


def get_sweep(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  depths = (1, 2) if preset == "smoke" else DEPTHS
  return [{"model.num_encoder_layers": n, "model.num_decoder_layers": n} for n in depths]
