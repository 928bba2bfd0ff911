"""Does dividing the logits by sqrt(K) matter, and at which head dims?

Question: the paper scales q.k by 1/sqrt(K) "to avoid vanishing gradients": with unit-variance q and k
the logits have std sqrt(K), softmax saturates onto one key, and its gradient vanishes. This sweep
trains the reverse task with scale "sqrt_d", "none", "d" (1/K, muP), "learned" (a per-head multiplier
learned from 1/sqrt(K)) and "init_folded" (1/sqrt(K) folded into the query initialisation, T5) at head
dims K = 16, 64 and 256 (2 heads, head_dim_policy="fixed_head_dim"), three seeds each. Its `probe` lines
log, at initialisation and at each evaluation, every attention layer's logit std and attention entropy
on unit-variance inputs over T=64 keys.

Command: python -m launch.sweep --config=experiments/sqrt_d.py --workdir=runs/sqrt_d
Time on a 2-core CPU: see WORKSPACE.md (measured with the command above).
Findings: see WORKSPACE.md, "What the sweeps found".
"""

from experiments import base

SCALES = ("sqrt_d", "none", "d", "learned", "init_folded")
HEAD_DIMS = (16, 64, 256)


def get_config(preset: str = ""):
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task.name = "reverse"
  config.model.num_heads = 2
  config.model.head_dim_policy = "fixed_head_dim"
  config.model.head_dim = 64
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config


def get_sweep(preset: str = ""):
  if preset == "smoke":
    return [{"model.scale": s, "model.head_dim": 16} for s in ("sqrt_d", "none")]
  return [{"model.scale": s, "model.head_dim": k} for k in HEAD_DIMS for s in SCALES]
