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
  config.model.head_dim = 16  # Used by the "fixed_head_dim" arm only.
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config


def get_sweep(preset: str = ""):
  if preset == "smoke":
    return [{"model.num_heads": h, "model.head_dim_policy": "fixed_model_dim"} for h in (1, 2)]
  return [{"model.num_heads": h, "model.head_dim_policy": p} for p in POLICIES for h in HEADS]
