"""The logit scale of dot-product attention, as a named choice resolved in one place.

The paper divides logits by sqrt(K) so that, for unit-variance queries and keys, the logits keep unit
variance whatever the head dim and softmax does not saturate. The other choices exist to ablate that.
"""

from __future__ import annotations

import numbers

# Every named choice the pure functions accept; a positive float is also accepted, as a multiplier.
SCALE_CHOICES = ("sqrt_d", "none", "d")

Scale = str | float


def resolve_scale(scale: Scale, head_dim: int) -> float:
  """Returns the multiplier applied to the logits q.k for a scale choice.

  Args:
    scale: "sqrt_d" (1/sqrt(K), the paper), "none" (1), "d" (1/K, as muP does), or a positive float
      used as the multiplier itself.
    head_dim: K, the query and key head dimension.

  Raises:
    ValueError: for an unknown name or a non-positive number.
  """
  if isinstance(scale, str):
    if scale == "sqrt_d":
      return float(head_dim) ** -0.5
    if scale == "none":
      return 1.0
    if scale == "d":
      return 1.0 / float(head_dim)
    raise ValueError(
      f"scale: unknown choice {scale!r}; expected one of {', '.join(map(repr, SCALE_CHOICES))} "
      "or a positive float"
    )
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
    raise ValueError(
      f"scale: expected one of {', '.join(map(repr, SCALE_CHOICES))} or a positive float, "
      f"got {scale!r} of type {type(scale).__name__}"
    )
  if not scale > 0 or scale == float("inf"):
    raise ValueError(f"scale: a numeric scale must be a positive finite float, got {scale!r}")
  return float(scale)
