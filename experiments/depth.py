"""How deep: 1, 2, 4 or 6 encoder and decoder layers, under post-LN, pre-LN and pre-RMSNorm?

Question: the notes stack attention blocks. This sweep trains the sort task with 1, 2, 4 and 6 layers
in both the encoder and the decoder (D = 64, 4 heads) under three block norms: post-LN as in the
paper, pre-LN (Xiong et al. 2020) and pre-RMSNorm, three seeds each.

Command: python -m launch.sweep --config=experiments/depth.py --workdir=runs/depth_norms
Presets: "" (the 12 points above) and "smoke" (two tiny points, for tests).
Time on a 2-core CPU: 17 min for the 12 points (runs/depth_norms, shared with another sweep); the 4
post-LN points alone, as this sweep first ran (runs/depth), 5.7 min (341 s, measured while other jobs
shared the CPU).

Found (sort task, 600 steps, sequence accuracy, mean ± std over 3 seeds):
  layers (encoder = decoder)   1             2             4             6
  post, layer                  0.79 ± 0.04   0.78 ± 0.03   0.74 ± 0.05   0.44 ± 0.12
  pre, layer                   0.81 ± 0.02   0.82 ± 0.03   0.82 ± 0.03   0.79 ± 0.07
  pre, rms                     0.85 ± 0.04   0.74 ± 0.07   0.76 ± 0.15   0.81 ± 0.05
  parameters (post, layer)     84,608        168,320       335,744       503,168
  Sorting ten symbols needs no depth within this budget: one layer is as good as two, and deeper
  post-LN stacks train worse and less reliably (6 layers: half the accuracy, three times the spread)
  at the same learning rate and warmup.
Per-block gradient norms at initialisation, 6 + 6 layers (launch.compare --split=diagnostics
--step=0 --series=decoder/layer_0/grad_norm,...): post-LN's decoder grows toward the output, 0.44,
0.64, 0.89, 1.13, 1.77, 2.62 (6x); pre-LN's is flat to falling, 1.50, 1.28, 1.21, 1.08, 1.06, 1.00,
as Xiong et al. 2020 report. With pre-LN the 6-layer stack trains (0.79) where post-LN's fails
(0.44): the depth sweep's inversion of the paper's direction is post-LN's at this learning rate and
warmup, not depth's. Still, no arm gains from depth on this task. Figures:
experiments/figures/depth_grad_norms_at_init.png, depth_sequence_accuracy.png.
"""

from experiments import base

DEPTHS = (1, 2, 4, 6)
# The block norms: the paper's post-LN, pre-LN (Xiong et al. 2020) and pre-RMSNorm.
NORMS = {
  "post_layer": {"model.norm": "post", "model.norm_kind": "layer"},
  "pre_layer": {"model.norm": "pre", "model.norm_kind": "layer"},
  "pre_rms": {"model.norm": "pre", "model.norm_kind": "rms"},
}


def get_config(preset: str = ""):
  config = base.get_config("smoke" if preset == "smoke" else "")
  config.task.name = "sort"
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config


def get_sweep(preset: str = ""):
  if preset not in ("", "smoke"):
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  if preset == "smoke":
    return [
      {"model.num_encoder_layers": n, "model.num_decoder_layers": n, **NORMS[norm]}
      for n, norm in ((1, "post_layer"), (2, "pre_rms"))
    ]
  return [
    {"model.num_encoder_layers": n, "model.num_decoder_layers": n, **overrides}
    for overrides in NORMS.values()
    for n in DEPTHS
  ]
