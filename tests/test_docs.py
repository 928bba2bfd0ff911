"""Docs cannot drift: every shell block of README.md and WORKSPACE.md runs in CI, every Python block
runs here."""

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ("README.md", "WORKSPACE.md")
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
  assert "pip install" in main_cmd and "python -m launch." in main_cmd
  assert "pip install -q '.[test]'" in test_cmd and "pytest" in test_cmd


def test_ci_runs_the_doc_commands():
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  assert "doc_commands.py README.md WORKSPACE.md" in ci


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
    "README.md",
    "WORKSPACE.md",
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
