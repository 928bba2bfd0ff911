"""pytest options shared by the test files.

--attention-default=NAME sets attn.core.attention.DEFAULT_IMPLEMENTATION, the path `implementation=None`
resolves to, for the whole run, and the environment variable ATTN_DEFAULT_IMPLEMENTATION for the
subprocesses that tests start: `pytest --attention-default=flash` runs every test with the fast path
as the default.

Every test session shares one persistent JAX compilation cache (in pytest's base temporary folder, so
xdist workers and the child processes tests start reuse each other's compiled programs): the suite
compiles the same smoke models in dozens of places. Programs are cached only when they took over a
second to compile (jax's default threshold), so small ones are compiled as always.

XLA's CPU backend compiles at LLVM optimisation level 0 here (`--xla_backend_optimization_level=0`,
appended to XLA_FLAGS before JAX starts, and inherited by child processes): the suite is dominated by
compiling small programs, which this makes about a quarter faster (tests/nn: 286 s -> 211 s on 2
cores). The HLO is the same; only the machine code is less optimised. Give XLA_FLAGS a level of your
own to test another. Benchmarks (launch.bench) run at XLA's default level.
"""

import os

if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

import jax  # After XLA_FLAGS is set.
import pytest

from attn.core import attention


def pytest_addoption(parser):
  parser.addoption(
    "--attention-default",
    choices=attention.IMPLEMENTATIONS,
    default=None,
    help="the attention implementation that implementation=None resolves to (default: automatic)",
  )


@pytest.fixture(autouse=True, scope="session")
def _attention_default(request):
  forced = request.config.getoption("--attention-default")
  if forced is None:
    yield
    return
  previous = attention.DEFAULT_IMPLEMENTATION
  attention.DEFAULT_IMPLEMENTATION = forced
  os.environ["ATTN_DEFAULT_IMPLEMENTATION"] = forced
  yield
  attention.DEFAULT_IMPLEMENTATION = previous
  os.environ.pop("ATTN_DEFAULT_IMPLEMENTATION")


@pytest.hookimpl(trylast=True)  # After pytest's tmpdir plugin has made its factory.
def pytest_configure(config):
  # Set once, by the process that configures first (the xdist controller, whose environment its
  # workers inherit), in its base temporary folder (removed with pytest's old ones); a cache the
  # caller set is left alone.
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  directory = str(config._tmp_path_factory.getbasetemp() / "jax_compilation_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory  # For the child processes tests start.
  jax.config.update("jax_compilation_cache_dir", directory)


# Property tests (hypothesis, a test-only dependency): a few fixed examples in every run, so the
# suite is deterministic and fast; HYPOTHESIS_PROFILE=long draws many random ones for an occasional
# search (`HYPOTHESIS_PROFILE=long pytest -m property`).
try:
  import hypothesis
except ImportError:  # Not installed: the property tests skip themselves.
  pass
else:
  hypothesis.settings.register_profile(
    "default", max_examples=6, deadline=None, derandomize=True, database=None, print_blob=True
  )
  hypothesis.settings.register_profile("long", max_examples=300, deadline=None, database=None)
  hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
