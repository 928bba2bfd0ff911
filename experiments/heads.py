"""How many heads, and does it matter how the head dim follows from them?

Question: the notes give each head one job (names, places, organisations). With the model dim fixed
(K = D/H, the paper) more heads also means smaller heads and a different sqrt(K); with the head dim
fixed (K = 16) more heads means more attention parameters. This sweep trains the sort task with
1, 2, 4, 8 and 16 heads under both policies, D = 64, three seeds each.

Command: python -m launch.sweep --config=experiments/heads.py --workdir=runs/heads
Time on a 2-core CPU: 20.6 min (1237 s, measured while other jobs shared the CPU).

Found (sort task, 600 steps, sequence accuracy, mean ± std over 3 seeds):
  heads                 1             2             4             8             16
  fixed_model_dim  0.72 ± 0.06   0.73 ± 0.09   0.78 ± 0.03   0.88 ± 0.02   0.91 ± 0.02   (K = 64/H)
  fixed_head_dim   0.85 ± 0.03   0.85 ± 0.04   0.78 ± 0.03   0.85 ± 0.02   0.85 ± 0.02   (K = 16)
  With the attention parameters fixed (168,320 per model), splitting D = 64 into more, smaller heads
  helps steadily, even down to K = 4. With K fixed at 16, adding heads adds parameters (93,728 to
  466,688) but not accuracy: the differences are within about two standard deviations. The 4-head
  points of both arms are the same model and agree exactly, a check on the sweep itself.
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
