"""Docs cannot drift: every shell block of README.md, WORKSPACE.md and RESULTS.md runs in CI, every
Python block runs here, installs take constraints.txt, and RESULTS.md points at every experiment."""

import ast
import configparser
import pathlib
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ("README.md", "WORKSPACE.md", "RESULTS.md")
sys.path.insert(0, str(ROOT / ".ci"))
from doc_commands import shell_blocks  # noqa: E402


@pytest.mark.parametrize("doc", DOCS)
def test_every_shell_block_is_run_by_ci(doc):
  blocks = shell_blocks((ROOT / doc).read_text(encoding="utf-8"))
  unmarked = [command for marked, command in blocks if not marked]
  assert not unmarked, f"{doc}: shell blocks without <!-- ci --> (CI would not run them): {unmarked}"


def test_readme_gives_exactly_two_setup_commands_install_and_test():
  blocks = shell_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
  assert len(blocks) == 2
  (_, main_cmd), (_, test_cmd) = blocks
  assert "pip install -q . -c constraints.txt" in main_cmd and "python -m launch." in main_cmd
  assert "pip install -q '.[test]' -c constraints.txt" in test_cmd and "pytest" in test_cmd


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_install_takes_the_constraints(doc):
  """What CI installs is what constraints.txt pins: every `pip install` of a shell block names it."""
  for _, command in shell_blocks((ROOT / doc).read_text(encoding="utf-8")):
    for install in re.findall(r"pip install[^&|;]*", command):
      assert "-c constraints.txt" in install, f"{doc}: {install.strip()!r} lacks -c constraints.txt"


def test_ci_runs_the_doc_commands():
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  assert "doc_commands.py README.md WORKSPACE.md RESULTS.md" in ci


def _setup_requirements() -> list[Requirement]:
  """install_requires and every extra of setup.cfg."""
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg", encoding="utf-8")
  sections = [cfg["options"]["install_requires"], *cfg["options.extras_require"].values()]
  return [Requirement(line) for text in sections for line in text.split("\n") if line.strip()]


def _pins() -> dict[str, str]:
  pins = {}
  for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
    if line.strip() and not line.startswith("#"):
      name, sep, version = line.partition("==")
      assert sep and version.strip(), f"constraints.txt: {line!r} is not NAME==VERSION"
      pins[canonicalize_name(name)] = version.strip()
  return pins


def test_constraints_pin_every_requirement_within_setup_cfg_bounds():
  """constraints.txt pins each requirement of setup.cfg (extras included) to a version its lower bound
  admits, and never attn itself; torch (a benchmark peer, and needed by the test extra's
  transformer-lens) only as the CPU wheel, with none of the CUDA packages. setup.cfg keeps its lower
  bounds and names no constraints file, so `pip install .` alone still works."""
  pins = _pins()
  assert "attn" not in pins
  assert pins.get("torch", "+cpu").endswith("+cpu")
  assert not [p for p in pins if p.startswith(("nvidia-", "cuda-")) or p == "triton"]
  for requirement in _setup_requirements():
    name = canonicalize_name(requirement.name)
    assert name in pins, f"constraints.txt: no pin for {requirement.name} (setup.cfg)"
    assert requirement.specifier.contains(pins[name]), f"constraints.txt: {name}=={pins[name]}"
  assert "constraints" not in (ROOT / "setup.cfg").read_text(encoding="utf-8")


@pytest.mark.parametrize(  # WORKSPACE.md's compiles ring and flash attention: over ~3 s on 2 cores.
  "doc", ["README.md", pytest.param("WORKSPACE.md", marks=pytest.mark.slow)]
)
def test_python_blocks_run(doc):
  text = (ROOT / doc).read_text(encoding="utf-8")
  for code in re.findall(r"```python\n(.*?)```", text, re.S):
    exec(compile(code, f"{doc}:python-block", "exec"), {})


def _inline_commands(text: str) -> list[str]:
  return re.findall(r"python -m (launch\.\w+[^`\n]*)", text)


@pytest.mark.parametrize(
  "path",
  [
    *DOCS,
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("experiments/*.py")),
  ],
)
def test_documented_launch_commands_name_real_configs_and_sweeps(path, monkeypatch):
  """Commands quoted in prose or docstrings (the full sweeps take minutes, so CI runs their smoke
  presets instead) must at least name an entry point that exists and a config whose sweep loads."""
  from attn.runs import sweep

  monkeypatch.chdir(ROOT)
  commands = _inline_commands((ROOT / path).read_text(encoding="utf-8"))
  for command in commands:
    module = command.split()[0]
    assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{path}: no entry point {module}"
    config = re.search(r"--config=(\S+)", command)
    if module == "launch.sweep" and config:
      assert sweep.sweep_points(config.group(1)), f"{path}: {command}"


def _layout_tree() -> list[str]:
  """The file paths WORKSPACE.md's layout tree draws (two-space indents, folders end with '/')."""
  text = (ROOT / "WORKSPACE.md").read_text(encoding="utf-8")
  section = text[text.index("## Layout") : text.index("## Shape legend")]
  (tree,) = re.findall(r"```text\n(.*?)```", section, re.S)
  paths, folders = [], []
  for line in tree.splitlines():
    name = line.split()[0]
    depth = (len(line) - len(line.lstrip(" "))) // 2
    folders = folders[:depth]
    if name.endswith("/"):
      folders.append(name)
    else:
      paths.append("".join(folders) + name)
  return paths


def test_layout_tree_lists_every_module_once():
  """WORKSPACE.md draws attn/ and benchmarks/ one line per file: none missing, none that is gone."""
  drawn = _layout_tree()
  assert len(drawn) == len(set(drawn))
  actual = sorted(
    str(p.relative_to(ROOT))
    for folder in ("attn", "benchmarks")
    for p in (ROOT / folder).rglob("*.py")
    if p.name != "__init__.py" or p.parent.name == "attn"
  )
  assert sorted(p for p in drawn if p.startswith(("attn/", "benchmarks/"))) == actual


def _experiments_with_findings() -> list[str]:
  """experiments/*.py whose docstring records a finding ("Found")."""
  found = []
  for path in sorted((ROOT / "experiments").glob("*.py")):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    if "Found" in doc:
      found.append(str(path.relative_to(ROOT)))
  return found


def test_results_points_at_every_experiment_once():
  """RESULTS.md is the index of the findings: one row per experiment whose docstring has one, and
  every file it points at exists."""
  text = (ROOT / "RESULTS.md").read_text(encoding="utf-8")
  rows = re.findall(r"^\| \[`(experiments/\w+\.py)`\]\((experiments/\w+\.py)\)", text, re.M)
  assert all(shown == target for shown, target in rows)
  assert sorted(shown for shown, _ in rows) == _experiments_with_findings()
  for path in re.findall(r"`((?:attn|benchmarks|experiments|tests|launch)/[\w/]+\.py)`", text):
    assert (ROOT / path).exists(), f"RESULTS.md: no {path}"


def test_workspace_quotes_no_findings():
  """A finding has one home, its experiment's docstring (RESULTS.md indexes them): the working guide
  quotes no measured mean ± std."""
  text = (ROOT / "WORKSPACE.md").read_text(encoding="utf-8")
  assert not re.findall(r"\d ± \d", text)
