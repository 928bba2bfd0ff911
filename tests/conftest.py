"""pytest options shared by the test files.

--attention-default=NAME sets attn.core.attention.DEFAULT_IMPLEMENTATION, the path `implementation=None`
resolves to, for the whole run, and the environment variable ATTN_DEFAULT_IMPLEMENTATION for the
subprocesses that tests start: `pytest --attention-default=flash` runs every test with the fast path
as the default.
"""

import os

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
