"""How many heads, and does it matter how the head dim follows from them?

Question: the notes give each head one job (names, places, organisations). With the model dim fixed
(K = D/H, the paper) more heads also means smaller heads and a different sqrt(K); with the head dim
fixed (K = 16) more heads means more attention parameters. This sweep trains the sort task with
1, 2, 4, 8 and 16 heads under both policies, D = 64, three seeds each.

Command: python -m launch.sweep --config=experiments/heads.py --workdir=runs/heads
Time on a 2-core CPU: see WORKSPACE.md (measured with the command above).
Findings: see WORKSPACE.md, "What the sweeps found".
"""

from experiments import base

HEADS = (1, 2, 4, 8, 16)
POLICIES = ("fixed_model_dim", "fixed_head_dim")


def get_config(preset: str = ""):
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task.name = "sort"
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config


def _point(heads: int, policy: str) -> dict:
  point = {"model.num_heads": heads, "model.head_dim_policy": policy}
  if policy == "fixed_head_dim":
    point["model.head_dim"] = 16  # K = 16 for every H; under "fixed_model_dim" K = 64 / H.
  return point


def get_sweep(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  if preset == "smoke":
    return [_point(1, "fixed_model_dim"), _point(2, "fixed_head_dim")]
  return [_point(h, p) for p in POLICIES for h in HEADS]
