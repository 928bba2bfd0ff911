"""Tests for launch/distributed.py: the multi-process flags checked in one line each (in process, and
through launch.train), and which environments count as a cluster that jax starts from on its own."""

from __future__ import annotations

import pytest

from launch import distributed
from tests.launch.common import run
from tests.launch.test_local_cluster import FLAGS

ALL = {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}


@pytest.mark.parametrize(
  ("values", "message"),
  [
    ({"num_processes": 2}, "--coordinator_address: needed with --num_processes"),
    ({**ALL, "process_id": 2}, "--process_id: 2 is not in [0, 2)"),
    ({**ALL, "num_processes": 0, "process_id": 0}, "--num_processes: must be at least 1, got 0"),
    ({**ALL, "coordinator_address": "localhost"}, "--coordinator_address: 'localhost' is not HOST:PORT"),
  ],
)
def test_flags_that_do_not_fit_are_one_line_naming_the_flag(values, message):
  with pytest.raises(distributed.DistributedError) as raised:
    distributed.check(values)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_all_three_flags_or_none_are_accepted():
  distributed.check({})
  distributed.check(ALL)


def test_a_cluster_environment_is_recognised(monkeypatch):
  for name in ("SLURM_JOB_ID", "SLURM_NTASKS", *distributed._CLUSTER_VARIABLES):
    monkeypatch.delenv(name, raising=False)
  assert not distributed.in_cluster_environment()
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert not distributed.in_cluster_environment()  # One task: a one-process run.
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert distributed.in_cluster_environment()
  monkeypatch.delenv("SLURM_JOB_ID")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b")
  assert distributed.in_cluster_environment()


@pytest.mark.slow  # Starts launch.train.
def test_partial_distributed_flags_are_one_line(tmp_path):
  result = run("launch.train", *FLAGS, f"--workdir={tmp_path / 'run'}", "--num_processes=2")
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
    "error: --coordinator_address: needed with --num_processes (a multi-process run gives all of "
    "--coordinator_address, --num_processes and --process_id)"
  ]
  result = run(
    "launch.train",
    *FLAGS,
    f"--workdir={tmp_path / 'run'}",
    "--coordinator_address=127.0.0.1:1",
    "--num_processes=2",
    "--process_id=2",
  )
  assert result.returncode == 1 and result.stderr.splitlines() == [
    "error: --process_id: 2 is not in [0, 2)"
  ]
  assert not (tmp_path / "run").exists()


@pytest.mark.slow  # Starts launch.train.
def test_a_coordinator_port_in_use_names_the_address(tmp_path):
  import socket

  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    result = run(
      "launch.train", *FLAGS, f"--workdir={tmp_path / 'run'}", f"--coordinator_address={address}",
      "--num_processes=1", "--process_id=0",
    )  # fmt: skip
  assert result.returncode == 1
  # gRPC's own log line may come first; ours is the last, and no traceback.
  assert result.stderr.splitlines()[-1] == (
    f"error: --coordinator_address: cannot listen on {address} (is its port in use?)"
  )
  assert "Traceback" not in result.stderr
