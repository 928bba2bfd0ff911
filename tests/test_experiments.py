"""Tests for experiments/: every config loads for its presets, is lockable and valid, documents its
command; every sweep has the grid its docstring promises and every point is a valid config (checked
without training); and the smoke presets of two sweeps run end to end, one of each task kind (the
others differ only in their grids; the WORKSPACE tour, which CI runs, also sweeps depth's).

The smoke sweeps train in child processes (`python -m launch.train`, from the repository root) compiled
at XLA's lowest backend optimisation level: half the CPU time of a smoke point, the same computation.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import os
import pathlib

import ml_collections
import pytest

from attn import train
from attn.runs import compare, sweep
from attn.train import evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = (
  "base", "sqrt_d", "heads", "depth", "ner", "translate", "shakespeare_char", "prune", "ner_heads",
  "rollout", "denoise", "ner_ablation", "induction", "ner_pretrained",
)  # fmt: skip
TEXT_SWEEPS = (
  "positions",
  "stability",
  "variants_lm",
)  # Sweeps of the text task: validated on a small text file.
# Configs whose task reads config.data.path: validated on fixtures in their own tests (never on the
# shared data), e.g. tests/tasks/test_ner.py.
NER_SWEEPS = ("denoise", "ner_ablation")  # Sweeps of the NER task: validated on the NER fixture.
FILE_DATA_CONFIGS = (
  "ner",
  "ner_pretrained",
  "translate",
  "shakespeare_char",
  "ner_heads",
  *TEXT_SWEEPS,
  *NER_SWEEPS,
)
TRAIN_CONFIGS = (
  "base",
  "ner",
  "translate",
  "shakespeare_char",
  "prune",
  "ner_heads",
  "rollout",
  "induction",
  "ner_pretrained",
)  # Run by launch.train; the others by launch.sweep.
SWEEPS = ("sqrt_d", "heads", "depth")
SEED_TASK_SWEEPS = ("cue", "word_sense")  # Tagging sweeps on attn.seed_tasks (main metric: accuracy).
CONFIGS += SEED_TASK_SWEEPS + TEXT_SWEEPS
SWEEPS += SEED_TASK_SWEEPS
PRESETS = ("", "smoke")


def load(name: str):
  return importlib.import_module(f"experiments.{name}")


def with_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """The config with a sweep point's dotted overrides, set on the locked config as
  `--config.KEY=VALUE` flags would be: a key the config lacks raises."""
  config.lock()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    assert leaf in node, f"{key}: no such config field"
    node[leaf] = value
  return config


# Configs


def test_all_experiment_files_are_covered():
  files = sorted(p.stem for p in (REPO / "experiments").glob("*.py") if p.stem != "__init__")
  assert files == sorted(CONFIGS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_locks_and_validates(name, preset):
  config = load(name).get_config(preset)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()
  with pytest.raises(AttributeError):
    config.model.num_head = 8  # Misspelt: locked configs refuse new fields.
  with pytest.raises(AttributeError):
    config.num_train_step = 5
  with pytest.raises(KeyError):
    config.optimizer["learning_rat"] = 0.1
  with pytest.raises(TypeError):
    config.model.d_model = "wide"  # Fields keep their types.
  config.num_train_steps = 7  # Existing fields stay settable.
  if name in FILE_DATA_CONFIGS:
    return
  run = train.build_run(config)
  task, model_config = run.task, run.model_config
  assert len(task.vocab) == model_config.vocab_size
  assert task.name == config.task.name


@pytest.mark.parametrize("name", CONFIGS)
def test_default_preset_is_the_empty_string(name):
  module = load(name)
  assert module.get_config().to_dict() == module.get_config("").to_dict()
  smoke, full = module.get_config("smoke"), module.get_config("")
  assert smoke.num_train_steps < full.num_train_steps
  assert smoke.model.d_model <= full.model.d_model


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("preset", ["large", "Smoke", "smoke:"])
def test_unknown_preset_raises(name, preset):
  with pytest.raises(ValueError, match="preset"):
    load(name).get_config(preset)


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_gives_the_command(name):
  doc = load(name).__doc__
  assert doc and "Command:" in doc
  launcher = "launch.train" if name in TRAIN_CONFIGS else "launch.sweep"
  assert f"python -m {launcher} --config=experiments/{name}.py" in doc


# Sweeps, without training


def test_sqrt_d_grid():
  module = load("sqrt_d")
  points = module.get_sweep("")
  assert len(points) == 15
  scales = ("sqrt_d", "none", "d", "learned", "init_folded")
  assert scales == module.SCALES and module.HEAD_DIMS == (16, 64, 256)
  assert {(p["model.scale"], p["model.head_dim"]) for p in points} == set(
    itertools.product(scales, (16, 64, 256))
  )
  config = module.get_config("")
  assert (config.task.name, config.model.num_heads, config.model.head_dim_policy) == (
    "reverse",
    2,
    "fixed_head_dim",
  )


def test_heads_grid():
  module = load("heads")
  points = module.get_sweep("")
  assert len(points) == 10
  assert {(p["model.num_heads"], p["model.head_dim_policy"]) for p in points} == set(
    itertools.product((1, 2, 4, 8, 16), ("fixed_model_dim", "fixed_head_dim"))
  )
  config = module.get_config("")
  assert (config.task.name, config.model.d_model) == ("two_cue", 64)
  fixed_model_dim = [
    p["model.num_heads"] for p in points if p["model.head_dim_policy"] == "fixed_model_dim"
  ]
  assert all(config.model.d_model % h == 0 for h in fixed_model_dim)


@pytest.mark.parametrize("name", SEED_TASK_SWEEPS)
def test_seed_task_grids_compare_full_attention_with_local_windows(name):
  module = load(name)
  config = module.get_config("")
  assert config.task.name == name and config.model.num_encoder_layers == 2
  points = module.get_sweep("")
  windows = [p["model.attention_window"] for p in points]
  assert windows == [64, 4, 2]
  # 64 covers every sentence: full attention. Two layers of w = 2 reach 4 < min_distance tokens: the
  # cue is out of sight. w = 4 reaches 8, past min_distance but not across every sentence.
  assert windows[0] >= config.task.max_length - 1
  assert 2 * 2 < config.task.min_distance <= 2 * 4 < config.task.max_length - 1


def test_depth_grid():
  module = load("depth")
  points = module.get_sweep("")
  norms = [("post", "layer"), ("pre", "layer"), ("pre", "rms")]
  assert points == [
    {
      "model.num_encoder_layers": n, "model.num_decoder_layers": n, "model.norm": norm,
      "model.norm_kind": kind,
    }
    for norm, kind in norms
    for n in (1, 2, 4, 6)
  ]  # fmt: skip
  assert module.get_config("").task.name == "sort"


@pytest.mark.parametrize("name", TEXT_SWEEPS)
def test_text_sweep_points_are_valid_configs_on_a_small_text(name, tmp_path):
  """Every point of both presets validates (the task built on a small text file the test writes,
  the model config, the learned table against the evaluation lengths), and the grids are the
  docstrings'."""
  path = tmp_path / "input.txt"
  path.write_text("To be, or not to be: that is the question.\n" * 200, encoding="utf-8")
  module = load(name)
  full = {"positions": 6, "stability": 15, "variants_lm": 9}[name]
  for preset in PRESETS:
    points = module.get_sweep(preset)
    assert len(points) == (2 if preset == "smoke" else full)
    for point in points:
      config = with_overrides(module.get_config(preset), point)
      config.data.path = str(path)
      run = train.build_run(config)
      task, model_config = run.task, run.model_config
      evaluate.check_lengths(model_config, [], task.eval_lengths)
      for key, value in point.items():
        if key.startswith("model."):
          assert getattr(model_config, key.split(".")[-1]) == value
  if name == "positions":
    assert [p["model.positions"] for p in module.get_sweep("")] == list(module.KINDS)
    assert module.get_config("").task.eval_lengths == (64, 128, 256, 512)
  elif name == "variants_lm":  # Each point differs from the baseline in its own fields only.
    assert module.get_sweep("")[0] == module.BASELINE
    assert module.get_config("").task.eval_lengths == (64, 128, 256)
  else:
    rates = sorted({p["optimizer.learning_rate"] for p in module.get_sweep("")})
    assert len(rates) >= 5 and rates[-1] / rates[0] >= 30


@pytest.mark.parametrize("name", NER_SWEEPS)
def test_ner_sweep_points_are_valid_configs_on_the_ner_fixture(name, tmp_path):
  from tests.tasks.test_ner import DEV, TEST, TRAIN, write

  folder = write(tmp_path / "data", {"train": TRAIN, "dev": DEV, "test": TEST})
  module = load(name)
  full = {"denoise": 3, "ner_ablation": 4}[name]
  for preset in PRESETS:
    points = module.get_sweep(preset)
    assert len(points) == ({"denoise": 1, "ner_ablation": 2}[name] if preset == "smoke" else full)
    for point in points:
      config = with_overrides(module.get_config(preset), point)
      config.data.path, config.data.unlabelled = str(folder), ""
      run = train.build_run(config)
      task, model_config = run.task, run.model_config
      for key, value in point.items():
        if key.startswith("model."):
          assert getattr(model_config, key.split(".")[-1]) == value
      if name == "denoise":
        assert task.num_classes == len(task.vocab) == model_config.num_classes
  assert load("denoise").get_config().data.unlabelled.endswith("tatoeba_fra_eng/train.tsv")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_point_is_a_valid_config(name, preset):
  module = load(name)
  points = module.get_sweep(preset)
  counts = {"sqrt_d": 15, "heads": 10, "depth": 12, "cue": 3, "word_sense": 3}
  assert len(points) == (2 if preset == "smoke" else counts[name])
  names = [sweep.point_name(p) for p in points]
  assert len(set(names)) == len(names)
  failures = []
  for point in points:
    config = with_overrides(module.get_config(preset), point)
    try:
      model_config = train.build_run(config).model_config
    except train.ConfigError as e:
      failures.append(f"{sweep.point_name(point)}: {e}")
      continue
    K = model_config.resolved_head_dim
    if point.get("model.head_dim") is not None:
      assert point["model.head_dim"] == K
    if model_config.head_dim_policy == "fixed_model_dim":
      assert config.model.d_model // model_config.num_heads == K
    else:
      assert config.model.head_dim == K
      if name == "heads":
        assert K == 16  # The docstring's fixed head dim.
    for key, value in point.items():
      assert getattr(model_config, key.split(".")[-1]) == value
  assert not failures, "\n".join(failures)


# Smoke sweeps, end to end: one test per sweep, so each trains once even when tests are spread over
# several pytest-xdist workers.


def read_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# One sweep end to end (a tagging one; sequence-to-sequence training is the loop's tests' default).
# Every other sweep's points are resolved without training (test_every_sweep_point_is_a_valid_config).
END_TO_END_SWEEPS = ("heads",)


@pytest.mark.parametrize("name", END_TO_END_SWEEPS)
@pytest.mark.slow  # Trains a sweep in child processes.
def test_smoke_sweep_runs_end_to_end(name, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)  # Children run `python -m launch.train` from here.
  config_arg = f"experiments/{name}.py:smoke"
  workdir = tmp_path / name
  module = load(name)
  points = module.get_sweep("smoke")
  names = [sweep.point_name(p) for p in points]
  smoke = module.get_config("smoke")

  with pytest.MonkeyPatch.context() as patch:  # This process compiles nothing meanwhile.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    patch.setenv("XLA_FLAGS", flags)
    log = []
    results = sweep.run_sweep(config_arg, str(workdir), echo=log.append)
  failed = {r.name: r.error for r in results if r.status != "done"}
  assert not failed, failed
  assert [r.name for r in results] == names
  assert [line.split(":")[0] for line in log] == [
    f"[{i + 1}/{len(names)}] {n}" for i, n in enumerate(names) for _ in range(2)
  ]

  manifest = json.loads((workdir / "sweep.json").read_text())
  assert manifest == {
    "config": config_arg,
    "points": [{"name": n, "overrides": p} for n, p in zip(names, points, strict=True)],
  }
  for point_name, overrides in zip(names, points, strict=True):
    run = workdir / point_name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done"
    assert summary["num_seeds"] == smoke.num_seeds == 2
    tagging = name in (*SEED_TASK_SWEEPS, "heads")  # heads runs the two_cue tagging task.
    assert summary["main_metric"] == ("accuracy" if tagging else "sequence_accuracy")
    resolved = json.loads((run / "config.json").read_text())
    for key, value in overrides.items():
      section, field = key.split(".")
      assert resolved[section][field] == value
      assert resolved["resolved_model"][field] == value
    lines = read_lines(run / "metrics.jsonl")
    evals = [line for line in lines if line["split"] == "eval"]
    assert [line["step"] for line in evals] == [0, smoke.num_train_steps]
    assert all(len(line["loss"]) == 2 for line in evals)
    assert {line["split"] for line in lines} == {"train", "eval", "diagnostics", "probe"}
    assert list(run.glob("events.out.tfevents.*"))

  markdown = compare.compare(workdir)
  assert (workdir / "compare.md").read_text(encoding="utf-8") == markdown
  assert "Points: 2 (2 done, 0 failed, 0 incomplete)" in markdown
  rows = [line for line in markdown.splitlines() if line.startswith("| ")][1:]  # After the header.
  assert len(rows) == len(points)
  for row, point_name in zip(rows, names, strict=True):
    assert row.startswith(f"| {point_name} |") and "| done |" in row
  with open(workdir / "compare.csv", newline="", encoding="utf-8") as f:
    assert [row["name"] for row in csv.DictReader(f)] == names
