"""Several processes of one run on this machine, as a cluster would start them:
`python -m launch.local_cluster --num_processes=2 [--devices_per_process=1] -- <launch.train flags>`.

Starts `python -m launch.train` (or `--module=launch.sweep`) N times with the same flags plus
`--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I`, each process with
`--devices_per_process` forced CPU devices, so the run sees N x that many devices in all. Process 0's
output is this command's; process I's goes to WORKDIR/process_I.log. When one process fails the
others are stopped, and the exit status is the first failure's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from absl import flags

from launch import run, start_quietly

_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start.")
_DEVICES = flags.DEFINE_integer("devices_per_process", 1, "Forced CPU devices of each process.")
_MODULE = flags.DEFINE_enum("module", "launch.train", ["launch.train", "launch.sweep"], "What runs.")
_PORT = flags.DEFINE_integer("port", 0, "The coordinator's port on 127.0.0.1 (0: a free one).")


def free_port() -> int:
  """A port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _workdir(args: list[str]) -> str | None:
  for arg in args:
    if arg.startswith("--workdir="):
      return arg.removeprefix("--workdir=")
  return None


def check_workdir(workdir: str | None) -> None:
  """Exits with one line when the run's --workdir cannot be a folder (the processes' logs go there)."""
  if workdir is None:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    sys.exit(f"error: --workdir: {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    sys.exit(f"error: --workdir: cannot create {workdir}: {e.strerror}")


def check_port(port: int) -> None:
  """Exits with one line when --port is taken on 127.0.0.1 (0 picks a free one)."""
  if not port:
    return
  if not 0 < port < 65536:
    sys.exit(f"error: --port: {port} is not a port number (1-65535, or 0 for a free one)")
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    try:
      s.bind(("127.0.0.1", port))
    except OSError as e:
      sys.exit(
        f"error: --port: cannot listen on 127.0.0.1:{port} ({e.strerror}); give another, or 0 for "
        "a free one"
      )


def start(args: list[str], num_processes: int, devices_per_process: int, module: str, port: int):
  """The N processes (Popen), started."""
  address = f"127.0.0.1:{port or free_port()}"
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": " ".join(
      [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices_per_process}"]
    ).strip(),
  }
  workdir = _workdir(args)
  processes = []
  for i in range(num_processes):
    command = [
      sys.executable,
      "-m",
      module,
      *args,
      f"--coordinator_address={address}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
    ]
    if i == 0:
      processes.append(subprocess.Popen(command, env=env))
    else:
      log_path = os.path.join(workdir or ".", f"process_{i}.log")
      with open(log_path, "w", encoding="utf-8") as log:
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def wait(processes) -> int:
  """Waits for every process; the first non-zero exit status stops the others and is returned."""
  while True:
    codes = [p.poll() for p in processes]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
      for p in processes:
        if p.poll() is None:
          p.terminate()
      for p in processes:
        p.wait()
      return failed[0]
    if all(c == 0 for c in codes):
      return 0
    time.sleep(0.2)


def main(argv):
  start_quietly()
  args = argv[1:]
  if _NUM_PROCESSES.value < 1 or _DEVICES.value < 1:
    sys.exit("error: --num_processes and --devices_per_process must be at least 1")
  if not args:
    sys.exit("error: give the run's flags after --, e.g. -- --config=experiments/base.py --workdir=DIR")
  check_workdir(_workdir(args))
  check_port(_PORT.value)
  processes = start(args, _NUM_PROCESSES.value, _DEVICES.value, _MODULE.value, _PORT.value)
  try:
    code = wait(processes)
  except KeyboardInterrupt:  # Each process stops at its own Ctrl-C (the terminal sends it to all).
    for p in processes:
      p.wait()
    raise
  if code:
    sys.exit(code)


if __name__ == "__main__":
  run(main)
