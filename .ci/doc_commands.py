"""Prints, NUL-separated, the shell blocks of markdown files that follow a `<!-- ci -->` line.

Used by .ci/run to execute the documented commands; tests/test_docs.py uses `shell_blocks` to check
that every shell block in the docs is marked, so none can drift out of CI.
"""

import re
import sys

_BLOCK = re.compile(r"(?P<marker><!-- ci -->\s*\n)?```(?:bash|sh|shell)\n(?P<body>.*?)```", re.S)


def shell_blocks(text: str) -> list[tuple[bool, str]]:
  """(marked, command) for each fenced bash/sh block; backslash-newlines are joined."""
  return [
    (bool(m.group("marker")), m.group("body").replace("\\\n", " ").strip())
    for m in _BLOCK.finditer(text)
  ]


if __name__ == "__main__":
  for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
      for marked, command in shell_blocks(f.read()):
        if marked:
          sys.stdout.write(command + "\0")
