"""Executes the notebooks under notebooks/, every code cell in order in one namespace, as Jupyter
would run them top to bottom, so they cannot rot. No kernel is needed: the cells are plain Python."""

from __future__ import annotations

import json
import pathlib

import matplotlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def code_cells(path: pathlib.Path) -> list[str]:
  notebook = json.loads(path.read_text(encoding="utf-8"))
  return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_there_are_notebooks_and_none_carries_outputs():
  assert NOTEBOOKS
  for path in NOTEBOOKS:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert all(not cell.get("outputs") for cell in notebook["cells"]), f"{path.name}: clear outputs"


@pytest.mark.slow  # Trains a smoke run, then analyses it.
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, monkeypatch, capsys):
  matplotlib.use("Agg")
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv("ATTN_INDUCTION_RUN", raising=False)
  namespace = {"__name__": "__main__"}
  for i, source in enumerate(code_cells(path)):
    try:
      exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    except Exception as e:
      raise AssertionError(f"{path.name}: code cell {i} failed: {e!r}") from e
  out = capsys.readouterr().out
  assert "Spearman correlation over heads" in out and "layer 1 zeroed" in out
