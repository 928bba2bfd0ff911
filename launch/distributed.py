"""Multi-process runs: the flags of `jax.distributed` for `launch.train` and `launch.sweep`.

`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` start process I of N. Without them
(the default), a run is one process, unless the environment is a cluster's that
`jax.distributed.initialize()` recognises on its own (SLURM's `SLURM_JOB_ID` with more than one task,
a Cloud TPU slice's worker variables, Open MPI's): then it is started with no arguments and jax reads
the rest from there, as on a TPU pod or under `srun`.

On a CPU the processes talk through gloo (`jax_cpu_collectives_implementation`), which is how
`python -m launch.local_cluster` runs several processes on one machine.
"""

from __future__ import annotations

import os
import socket

import jax
from absl import flags

COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process runs)."
)
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (with the others).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_NAMES = ("coordinator_address", "num_processes", "process_id")

# Variables by which jax's own cluster detection (jax._src.clusters) recognises where it runs.
_CLUSTER_VARIABLES = (
  "TPU_WORKER_HOSTNAMES",  # Cloud TPU slices (with TPU_WORKER_ID).
  "MEGASCALE_COORDINATOR_ADDRESS",  # Multi-slice TPU.
  "OMPI_MCA_orte_hnp_uri",  # Open MPI's mpirun.
)


class DistributedError(ValueError):
  """Flags that do not describe a multi-process run; names the flag."""


def given() -> dict:
  """The distributed flags given on the command line ({} for a one-process run)."""
  values = {
    "coordinator_address": COORDINATOR_ADDRESS.value,
    "num_processes": NUM_PROCESSES.value,
    "process_id": PROCESS_ID.value,
  }
  return {k: v for k, v in values.items() if v is not None}


def check(values: dict) -> None:
  """Raises DistributedError for a partial or inconsistent set of flags."""
  if not values:
    return
  missing = [name for name in _NAMES if name not in values]
  if missing:
    raise DistributedError(
      f"--{missing[0]}: needed with --{next(n for n in _NAMES if n in values)} (a multi-process run "
      "gives all of --coordinator_address, --num_processes and --process_id)"
    )
  if values["num_processes"] < 1:
    raise DistributedError(f"--num_processes: must be at least 1, got {values['num_processes']}")
  if not 0 <= values["process_id"] < values["num_processes"]:
    raise DistributedError(
      f"--process_id: {values['process_id']} is not in [0, {values['num_processes']})"
    )
  host, _, port = values["coordinator_address"].rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator_address: {values['coordinator_address']!r} is not HOST:PORT")


def in_cluster_environment() -> bool:
  """Whether this process was started by a cluster jax recognises (see the module docstring)."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  return any(name in os.environ for name in _CLUSTER_VARIABLES)


def initialize() -> bool:
  """Starts `jax.distributed` from the flags or the cluster's environment; returns whether this is
  a multi-process run. Call before anything touches a device.

  Raises:
    DistributedError: for flags that do not fit together.
  """
  values = given()
  check(values)
  if not values and not in_cluster_environment():
    return False
  # CPU processes need a collectives backend to talk (GPUs and TPUs have their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if values and values["coordinator_address"].rpartition(":")[0] in ("127.0.0.1", "localhost"):
    # A run on this machine: the coordinator listens on the loopback only, not on every interface.
    values["coordinator_bind_address"] = values["coordinator_address"]
  if values and values["process_id"] == 0:
    # jaxlib 0.10 crashes (SIGSEGV) rather than raising when the coordinator cannot listen: ask first.
    _check_can_listen(values["coordinator_address"], values.get("coordinator_bind_address"))
  try:
    jax.distributed.initialize(**values)
  except jax.errors.JaxRuntimeError as e:
    if "Failed to start RPC server" not in str(e):
      raise
    raise _cannot_listen(values.get("coordinator_address", "the coordinator's address")) from None
  # orbax's barriers (the checkpoint manager's first act is one) over the coordination service, which
  # waits as long as they need, rather than as gloo collectives, whose context gives up when one
  # process reaches it 30 s after another (seen on a loaded 2-core machine).
  if "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True
  return True


def _cannot_listen(address: str) -> DistributedError:
  return DistributedError(f"--coordinator_address: cannot listen on {address} (is its port in use?)")


def _check_can_listen(address: str, bind_address: str | None) -> None:
  """Raises DistributedError when process 0's coordinator could not listen on `address`'s port: as
  gRPC binds it (SO_REUSEADDR, so a port in TIME_WAIT is free), on the bind address or every
  interface. A port taken between this check and jax's own bind still meets jaxlib's crash."""
  host, _, port = (bind_address or address).rpartition(":")
  host = host.strip("[]") if bind_address else ""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind((host, int(port)))
    except OSError:
      raise _cannot_listen(address) from None


def forwarded() -> list[str]:
  """The distributed flags as given, for the `launch.train` processes a sweep starts."""
  return [f"--{name}={value}" for name, value in given().items()]
