"""The defaults every experiment starts from: a small encoder-decoder on the reverse task.

Not an experiment itself: the other configs start from it.
Command: python -m launch.train --config=experiments/base.py --workdir=runs/base
Presets: "" (the default) and "smoke" (a few steps of a tiny model, for tests).
"""

import ml_collections
from ml_collections import config_dict


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.task = ml_collections.ConfigDict()
  config.task.name = "reverse"  # copy | reverse | sort (generated in code, no download).
  config.task.num_symbols = 10  # Distinct symbols in the sequences.
  config.task.min_length = 2  # Shortest sequence.
  config.task.max_length = 10  # Longest sequence (inputs are padded to it).
  config.task.eval_examples = 256  # Size of the fixed evaluation set.

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # Folder of a file-based task's data; unused by the generated tasks.

  config.model = ml_collections.ConfigDict()
  config.model.d_model = 64  # D, the residual width.
  config.model.num_heads = 4  # H.
  config.model.head_dim_policy = "fixed_model_dim"  # K = D/H, or "fixed_head_dim" (K = head_dim).
  config.model.head_dim = config_dict.placeholder(int)  # K under "fixed_head_dim".
  config.model.num_kv_heads = config_dict.placeholder(int)  # G key/value heads; None = H.
  config.model.d_ff = 128  # Feed-forward hidden width.
  config.model.num_encoder_layers = 2  # Encoder blocks.
  config.model.num_decoder_layers = 2  # Decoder blocks.
  config.model.dropout_rate = 0.1  # Residual and embedding dropout.
  config.model.attention_dropout_rate = 0.0  # Dropout on attention weights.
  config.model.scale = "sqrt_d"  # sqrt_d | none | d | learned | init_folded.
  config.model.norm = "post"  # post (the paper) | pre.
  config.model.positions = "sinusoidal"  # sinusoidal | learned | rope | alibi | t5_bias | none | xpos.
  config.model.rope_fraction = 1.0  # Share of the head dim RoPE rotates.
  config.model.rope_theta = 10000.0  # RoPE's base (Llama 3: 500000).
  config.model.t5_num_buckets = 32  # T5 bias buckets.
  config.model.t5_max_distance = 128  # T5 bias: distances beyond share the last bucket.
  config.model.qk_norm = "none"  # none | rms (q and k RMS-normalised, learned per-head scale).
  config.model.logit_soft_cap = config_dict.placeholder(float)  # cap * tanh(logits / cap); None = off.
  config.model.attention_sink = False  # A learned per-head sink logit in the denominator.
  config.model.attention_kind = "softmax"  # softmax | sigmoid | ssmax | softpick | stick_breaking.
  config.model.attention_gate = "none"  # none | headwise | elementwise: sigmoid(x W_g) on each head.
  config.model.value_residual = "none"  # none | learned (ResFormer) | shared (SVFormer): V_1 reused.
  config.model.forget_gate = False  # FoX: per-head forget gates (causal self-attention only).
  config.model.differential = False  # Differential attention: num_heads // 2 heads of two maps each.
  config.model.rope_interleaved = False  # RoPE / xPos pairs (2i, 2i + 1) (GPT-J) over rotate-half.
  config.model.mla_kv_rank = config_dict.placeholder(int)  # MLA's key/value latent width; None = off.
  config.model.mla_q_rank = config_dict.placeholder(int)  # MLA's query latent width; None = plain.
  config.model.mla_rope_dim = 0  # MLA's decoupled RoPE dims (even; > 0 exactly with positions=rope).
  config.model.norm_kind = "layer"  # layer | rms: the block norms.
  config.model.norm_epsilon = 1e-6  # Added to the variance in every norm (GPT-2: 1e-5).
  config.model.max_length = 64  # Longest sequence for learned positions.
  config.model.tie_output = True  # Output projection shares the embedding table.
  config.model.activation = "relu"  # relu | gelu (tanh form) | gelu_exact (erf) | silu.
  config.model.ff_glu = False  # Gated feed-forward wo(act(wi(x)) * wi_up(x)): SwiGLU under silu.
  config.model.init = "default"  # default (LeCun, sqrt(D)-scaled embeddings) | gpt2 (normal 0.02).
  config.model.use_bias = True  # Biases in attention, feed-forward and layer norms.
  config.model.qkv_bias = config_dict.placeholder(bool)  # q/k/v projection biases; None = use_bias.
  config.model.out_bias = config_dict.placeholder(bool)  # Attention output bias; None = use_bias.
  config.model.embed_norm = False  # A norm over the embeddings' sum (BERT).
  config.model.dtype = "float32"  # Computation dtype: float32 | bfloat16 | float16.
  config.model.attention_implementation = config_dict.placeholder(str)  # naive | flash | jax | None.
  # Encoder self-attention sees |i-j| <= w, a LanguageModel's causal one 0 <= i-j <= w; None = all.
  config.model.attention_window = config_dict.placeholder(int)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 3e-3  # Peak learning rate, reached at the end of warmup.
  config.optimizer.schedule = "rsqrt"  # rsqrt (the paper's) | cosine | constant.
  config.optimizer.warmup_steps = 100  # Linear warmup steps.
  config.optimizer.b1 = 0.9  # Adam beta1 (the paper's).
  config.optimizer.b2 = 0.98  # Adam beta2 (the paper's).
  config.optimizer.eps = 1e-9  # Adam epsilon (the paper's).
  config.optimizer.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 turns it off.
  config.optimizer.weight_decay = 0.0  # AdamW's decoupled decay on matrices only; 0 = plain Adam.
  config.optimizer.end_learning_rate = 0.0  # Where "cosine" ends at num_train_steps.

  config.label_smoothing = 0.1  # The paper's 0.1.
  config.batch_size = 32  # Training batch (split over devices).
  # The device mesh (attn.train.sharding): data parallel, FSDP and tensor (head) parallel axes; -1 =
  # the rest of the devices. E.g. --config.mesh.fsdp=2 --config.mesh.tensor=2 on 8 devices.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  config.eval_batch_size = 64  # Evaluation batch (split over devices).
  config.num_train_steps = 600  # Optimizer steps.
  config.num_train_epochs = 0.0  # > 0: that many passes over a fixed training set instead (NER).
  # > 0: stop when no seed's main metric improved for this many evaluations; the final evaluation
  # (test included) then scores each seed's best parameters.
  config.early_stopping_patience = 0
  config.log_every_steps = 50  # Train metrics, progress line and the non-finite check.
  config.eval_every_steps = 200  # Evaluation, diagnostics and the scale probe.
  config.checkpoint_every_steps = 200  # Checkpoints; a multiple of log_every_steps.
  config.checkpoints_to_keep = 2  # Older checkpoints are deleted.
  config.seed = 0  # Seed of the first model; seed i of num_seeds uses seed + i.
  config.num_seeds = 3  # Seeds trained together in one program (vmapped).
  config.data_seed = 0  # Seed of the data stream (shared by all seeds).
  # "supervised" (the task's own targets) or "denoise" (attn.tasks.denoise: restore corrupted input
  # tokens, the notes' "masking as noise"; `denoise` says how many and how).
  config.objective = "supervised"
  config.denoise = ml_collections.ConfigDict()
  config.denoise.rate = 0.15  # Share of the input tokens chosen for corruption.
  config.denoise.random_fraction = 0.1  # Of those, replaced by a random word (BERT's 10%).
  config.denoise.keep_fraction = 0.1  # Of those, left as they are (BERT's 10%); the rest masked.
  # A run directory whose parameters start this run (matched by name; see attn.train.setup.init_from).
  config.init_from = ""
  config.init_from_skip = "classifier,crf"  # Top-level parameters never taken from it (the head).

  if preset == "smoke":
    config.task.max_length = 6
    config.task.eval_examples = 32
    config.model.d_model = 32
    config.model.d_ff = 64
    config.model.num_encoder_layers = 1
    config.model.num_decoder_layers = 1
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 10
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 5
    config.num_seeds = 2
  elif preset:
    raise ValueError(f"config preset: unknown {preset!r}; expected '' or 'smoke'")
  return config
