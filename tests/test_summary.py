"""Tests for attn.summary: CRC32C, TFRecord framing, Event encoding, EventWriter and read_events."""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import struct
from pathlib import Path

import pytest

from attn import summary
from attn.summary import EventWriter, read_events

# Golden bytes, made by TensorBoard's own protobuf classes (event_pb2.Event(...).SerializeToString()) and
# its pure-Python RecordWriter, so these tests pin the wire format without TensorBoard installed.
_GOLDEN_SCALARS_EVENT = (  # Event(wall_time=1.5, step=2**40, summary={"héllo": 0.5, "a/b": -2.0})
  b"\t\x00\x00\x00\x00\x00\x00\xf8?\x10\x80\x80\x80\x80\x80 *\x1b\n\r\n\x06h\xc3\xa9llo\x15\x00\x00\x00?"
  b"\n\n\n\x03a/b\x15\x00\x00\x00\xc0"
)
_GOLDEN_VERSION_RECORD = (  # TFRecord of Event(wall_time=1.5, file_version="brain.Event:2")
  b'\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK"\t\x00\x00\x00\x00\x00\x00\xf8?\x1a\rbrain.Event:2*(dl'
)


def _write(logdir, events):
  """Writes [(step, {tag: value})] with one EventWriter; returns the file's path."""
  with EventWriter(str(logdir)) as writer:
    for step, values in events:
      writer.scalars(values, step)
  return writer.path


def _record_offsets(path):
  """Returns the byte offset of each record of a well-formed event file, and the file's size."""
  data = Path(path).read_bytes()
  offsets, offset = [], 0
  while offset < len(data):
    offsets.append(offset)
    offset += 12 + struct.unpack_from("<Q", data, offset)[0] + 4
  return offsets, len(data)


# CRC32C and the TFRecord framing


@pytest.mark.parametrize(
  ("data", "expected"),
  [
    (b"", 0),
    (b"123456789", 0xE3069283),  # The standard check value.
    (bytes(32), 0x8A9136AA),  # RFC 3720 (iSCSI) test vectors.
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
  ],
)
def test_crc32c_known_values(data, expected):
  assert summary.crc32c(data) == expected


def test_masked_crc32c_formula():
  for data in (b"", b"123456789", b"\x00" * 8, bytes(range(256))):
    crc = summary.crc32c(data)
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32
    assert summary.masked_crc32c(data) == expected


def test_record_framing_matches_tensorboard():
  event = summary._encode_event(1.5, file_version="brain.Event:2")
  assert summary._frame(event) == _GOLDEN_VERSION_RECORD


def test_event_encoding_matches_protobuf():
  event = summary._encode_event(1.5, step=2**40, values={"héllo": 0.5, "a/b": -2.0})
  assert event == _GOLDEN_SCALARS_EVENT


# EventWriter and read_events round trip


def test_round_trip_of_scalars(tmp_path):
  events = [
    (0, {"train/loss": 2.5}),
    (1, {"train/loss": 1.25, "eval/accuracy/seed_0": 0.75}),
    (2**40, {"héllo": -3.0}),
    (7, {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}),
  ]
  path = _write(tmp_path, events)
  read = read_events(path)
  assert len(read) == 1 + len(events)
  for (step, values), event in zip(events, read[1:], strict=True):
    assert event["step"] == step
    assert event["file_version"] is None
    assert list(event["values"]) == list(values)
    for tag, value in values.items():
      if math.isnan(value):
        assert math.isnan(event["values"][tag])
      else:
        assert event["values"][tag] == value  # All exactly representable in float32.


def test_values_are_float32(tmp_path):
  with EventWriter(str(tmp_path)) as writer:
    writer.scalar("third", 1 / 3, step=1)
    writer.scalar("huge", 1e39, step=2)  # Beyond float32's range: inf, as a float32 cast gives.
    writer.scalar("-huge", -1e39, step=3)
  values = [event["values"] for event in read_events(writer.path)[1:]]
  assert values == [
    {"third": struct.unpack("<f", struct.pack("<f", 1 / 3))[0]},
    {"huge": math.inf},
    {"-huge": -math.inf},
  ]


def test_scalar_accepts_numpy_values_and_steps(tmp_path):
  np = pytest.importorskip("numpy")
  with EventWriter(str(tmp_path)) as writer:
    writer.scalar("x", np.float32(0.5), step=np.int64(3))
    writer.scalar("y", np.array(1.5), step=np.int32(4))
  assert [(e["step"], e["values"]) for e in read_events(writer.path)[1:]] == [
    (3, {"x": 0.5}),
    (4, {"y": 1.5}),
  ]


def test_wall_times_are_now(tmp_path):
  import time

  before = time.time()
  path = _write(tmp_path, [(1, {"x": 1.0})])
  after = time.time()
  for event in read_events(path):
    assert before <= event["wall_time"] <= after


def test_int64_step_range(tmp_path):
  with EventWriter(str(tmp_path)) as writer:
    writer.scalar("x", 1.0, step=2**63 - 1)
    writer.scalar("x", 2.0, step=-1)  # int64 allows it; encoded as ten-byte two's complement.
    with pytest.raises(ValueError, match="int64"):
      writer.scalar("x", 3.0, step=2**63)
  assert [event["step"] for event in read_events(writer.path)[1:]] == [2**63 - 1, -1]


def test_first_record_carries_file_version(tmp_path):
  path = _write(tmp_path, [(5, {"x": 1.0})])
  first = read_events(path)[0]
  assert first["file_version"] == "brain.Event:2"
  assert first["values"] == {}
  assert first["step"] == 0
  assert first["wall_time"] > 0


def test_empty_scalars_write_nothing(tmp_path):
  path = _write(tmp_path, [(1, {})])
  assert len(read_events(path)) == 1


# Files


def test_file_name_and_location(tmp_path):
  logdir = tmp_path / "new" / "nested"  # Created by the writer.
  path = _write(logdir, [])
  assert os.path.dirname(path) == str(logdir)
  assert glob.glob(str(logdir / "events.out.tfevents.*")) == [path]
  name = os.path.basename(path)
  assert fnmatch.fnmatch(name, "events.out.tfevents.*")
  _, _, _, timestamp, *_, pid, counter = name.split(".")
  assert timestamp.isdigit() and counter.isdigit()
  assert pid == str(os.getpid())


def test_two_writers_in_the_same_second_write_two_files(tmp_path, monkeypatch):
  monkeypatch.setattr(summary.time, "time", lambda: 1_700_000_000.25)
  with EventWriter(str(tmp_path)) as first, EventWriter(str(tmp_path)) as second:
    first.scalar("x", 1.0, step=1)
    second.scalar("x", 2.0, step=1)
  assert first.path != second.path
  assert os.path.basename(first.path).startswith("events.out.tfevents.1700000000.")
  assert sorted(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == sorted([first.path, second.path])
  assert read_events(first.path)[1]["values"] == {"x": 1.0}
  assert read_events(second.path)[1]["values"] == {"x": 2.0}


def test_flush_makes_records_visible_before_close(tmp_path):
  writer = EventWriter(str(tmp_path))
  writer.scalar("x", 1.0, step=1)
  writer.flush()
  assert [event["values"] for event in read_events(writer.path)] == [{}, {"x": 1.0}]
  writer.close()


def test_close_is_idempotent_and_later_writes_raise(tmp_path):
  writer = EventWriter(str(tmp_path))
  writer.close()
  writer.close()
  writer.flush()
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("x", 1.0, step=1)


def test_context_manager_closes_on_error(tmp_path):
  with pytest.raises(RuntimeError), EventWriter(str(tmp_path)) as writer:
    writer.scalar("x", 1.0, step=1)
    raise RuntimeError
  assert writer._file.closed
  assert len(read_events(writer.path)) == 2


# Corrupt and truncated files


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_corrupt_byte_raises_with_offset(tmp_path, where):
  path = _write(tmp_path, [(step, {"loss": float(step)}) for step in range(5)])
  offsets, _ = _record_offsets(path)
  record = offsets[3]  # A record in the middle.
  next_record = offsets[4]
  position = {
    "length": record,
    "length_crc": record + 9,
    "data": record + 15,
    "data_crc": next_record - 2,
  }
  data = bytearray(Path(path).read_bytes())
  data[position[where]] ^= 0x10
  Path(path).write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f"offset {record}\\b") as error:
    read_events(path)
  assert path in str(error.value)


def test_valid_crc_but_undecodable_event_raises(tmp_path):
  path = str(tmp_path / "events.out.tfevents.0.host.1.0")
  payload = b"\x0a\x05ab"  # Field 1 says 5 bytes follow; 2 do.
  with open(path, "wb") as f:
    f.write(
      summary._frame(summary._encode_event(1.0, file_version="brain.Event:2")) + summary._frame(payload)
    )
  offsets, _ = _record_offsets(path)
  with pytest.raises(ValueError, match=f"offset {offsets[1]}\\b"):
    read_events(path)


def test_truncated_final_record_is_ignored(tmp_path):
  path = _write(tmp_path, [(step, {"loss": float(step)}) for step in range(3)])
  offsets, size = _record_offsets(path)
  data = Path(path).read_bytes()
  last = offsets[-1]
  # Cut inside the length, the length CRC, the data and the data CRC of the final record.
  for cut in (last + 1, last + 8, last + 11, last + 12, last + 20, size - 4, size - 1):
    Path(path).write_bytes(data[:cut])
    events = read_events(path)
    assert [event["step"] for event in events[1:]] == [0, 1], cut
  Path(path).write_bytes(data[:last])  # Cut exactly between records: nothing is lost.
  assert len(read_events(path)) == len(offsets) - 1


def test_reader_skips_unknown_fields(tmp_path):
  path = str(tmp_path / "events.out.tfevents.0.host.1.0")
  event = (
    summary._encode_event(2.0, step=3, values={"x": 1.5})
    + b"\x22\x03abc"  # Event.graph_def (field 4, bytes).
    + b"\x30\x01"  # A varint field 6.
    + b"\x3d\x00\x00\x00\x00"  # A fixed32 field 7.
  )
  with open(path, "wb") as f:
    f.write(summary._frame(event))
  assert read_events(path) == [{"wall_time": 2.0, "step": 3, "file_version": None, "values": {"x": 1.5}}]


# TensorBoard itself


def test_tensorboard_reads_the_same_values(tmp_path):
  pytest.importorskip("tensorboard")
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.util import tensor_util

  events = [
    (1, {"train/loss": 0.5, "héllo": -2.0}),
    (2**40, {"eval/accuracy/seed_0": 0.75, "inf": math.inf}),
  ]
  path = _write(tmp_path, events)
  loaded = list(EventFileLoader(path).Load())
  assert loaded[0].file_version == "brain.Event:2"
  for (step, values), event in zip(events, loaded[1:], strict=True):
    assert event.step == step
    read = {}
    for value in event.summary.value:
      # EventFileLoader migrates simple_value into a scalar tensor; older loaders keep it.
      if value.HasField("simple_value"):
        read[value.tag] = value.simple_value
      else:
        read[value.tag] = float(tensor_util.make_ndarray(value.tensor))
    assert read == values
