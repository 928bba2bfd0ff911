"""A small, dependency-free TensorBoard event-file writer and reader for scalar summaries.

An event file is a sequence of TFRecords, each holding one serialized `tensorflow.Event` protobuf. The
first record carries `file_version = "brain.Event:2"`; each later record carries a wall time, a step
and a `Summary` of `simple_value` scalars. Only the few protobuf fields needed here are encoded by hand,
so neither TensorFlow, TensorBoard nor protobuf is needed to write or read these files.

TFRecord framing, all integers little-endian:

  uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

Example:

  with EventWriter("runs/exp1") as writer:
    writer.scalar("train/loss", 0.25, step=100)
    writer.scalars({"eval/accuracy": 0.9, "eval/loss": 0.3}, step=100)

  events = read_events(writer.path)  # [{"wall_time": ..., "step": 100, "values": {...}, ...}, ...]

Local paths only (no `gs://`); a writer is safe to share between threads.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

FILE_VERSION = "brain.Event:2"

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_HEADER = 12  # uint64 length + uint32 crc of the length.
_FOOTER = 4  # uint32 crc of the data.

# Protobuf wire types.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _crc32c_table() -> tuple[int, ...]:
  """Returns the 256-entry table of the reflected Castagnoli polynomial 0x82F63B78."""
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """Returns the CRC32C (Castagnoli) checksum of `data`, as used by TFRecord.

  Args:
    data: The bytes to checksum.

  Returns:
    The checksum, an int in [0, 2**32). `crc32c(b"123456789") == 0xE3069283`.
  """
  table = _CRC32C_TABLE
  crc = _U32
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
  """Returns the masked CRC32C that TFRecord stores: rotate right by 15 bits, then add 0xA282EAD8.

  Args:
    data: The bytes to checksum.

  Returns:
    `((crc >> 15) | (crc << 17)) + 0xA282EAD8`, mod 2**32, where `crc = crc32c(data)`.
  """
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def _frame(data: bytes) -> bytes:
  """Wraps `data` in a TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return (
    length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))
  )


# Protobuf encoding of the few fields used.


def _varint(value: int) -> bytes:
  """Encodes a non-negative int as a protobuf varint."""
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
  return _key(field, _LEN) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
  """Packs `value` as a little-endian float32; finite values beyond its range become +-inf."""
  try:
    return struct.pack("<f", value)
  except OverflowError:
    return struct.pack("<f", math.copysign(math.inf, value))


def _encode_event(
  wall_time: float,
  step: int | None = None,
  file_version: str | None = None,
  values: Mapping[str, float] | None = None,
) -> bytes:
  """Serializes a `tensorflow.Event` with the given fields (None fields are left out)."""
  out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
  if step is not None:
    out += _key(2, _VARINT) + _varint(step & _U64)  # int64: negatives are ten-byte two's complement.
  if file_version is not None:
    out += _len_field(3, file_version.encode("utf-8"))
  if values is not None:
    summary = b"".join(
      _len_field(1, _len_field(1, tag.encode("utf-8")) + _key(2, _FIXED32) + _float32(value))
      for tag, value in values.items()
    )
    out += _len_field(5, summary)
  return out


# The writer.

_file_counter = itertools.count()
_file_counter_lock = threading.Lock()


def _check_step(step: Any) -> int:
  step = int(step)
  if not -(2**63) <= step < 2**63:
    raise ValueError(f"step must fit in an int64, got {step}")
  return step


class EventWriter:
  """Appends scalar summaries to a new TensorBoard event file in `logdir`.

  The file is named `events.out.tfevents.<int(time)>.<hostname>.<pid>.<counter>`, where the counter
  grows with every writer opened by this process, so two writers never share a file. Records go through a
  buffered file: call `flush()` to make them visible to TensorBoard before `close()`.

  Attributes:
    path: The path of the event file.
  """

  def __init__(self, logdir: str):
    """Creates `logdir` if needed, opens a new event file there and writes the file-version record.

    Args:
      logdir: The directory to write to; TensorBoard's `--logdir` or a subdirectory of it.
    """
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    hostname = socket.gethostname().replace(os.sep, "_")
    while True:
      with _file_counter_lock:
        counter = next(_file_counter)
      name = f"events.out.tfevents.{int(time.time())}.{hostname}.{os.getpid()}.{counter}"
      self.path = os.path.join(logdir, name)
      try:
        self._file = open(self.path, "xb")  # noqa: SIM115 (closed by close()).
        break
      except FileExistsError:  # Another process with the same pid (a container) wrote it: try the next.
        continue
    self._lock = threading.Lock()
    self._write(_encode_event(time.time(), file_version=FILE_VERSION))

  def _write(self, event: bytes) -> None:
    with self._lock:
      if self._file.closed:
        raise ValueError(f"EventWriter for {self.path} is closed")
      self._file.write(_frame(event))

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Appends one scalar summary.

    Args:
      tag: The name TensorBoard shows, e.g. "train/loss"; "/" groups the charts.
      value: The value, stored as float32 (NaN and +-inf are kept; larger finite values become +-inf).
        Anything `float()` accepts works: Python and NumPy numbers, 0-d or 1-element JAX arrays.
      step: The global step, an int64.
    """
    self.scalars({tag: value}, step)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Appends several scalar summaries at one step, as one event (one wall time). No-op when empty.

    Args:
      values: Maps each tag to its value; see `scalar`.
      step: The global step, an int64.
    """
    step = _check_step(step)
    values = {str(tag): float(value) for tag, value in values.items()}
    if values:
      self._write(_encode_event(time.time(), step=step, values=values))

  def flush(self) -> None:
    """Writes the buffered records to disk."""
    with self._lock:
      if not self._file.closed:
        self._file.flush()

  def close(self) -> None:
    """Flushes and closes the file. Idempotent; later writes raise ValueError."""
    with self._lock:
      self._file.close()

  def __enter__(self) -> EventWriter:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  def __repr__(self) -> str:
    return f"EventWriter({self.path!r})"


# The reader.


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  """Returns (value, next position) of the varint at `pos`; raises ValueError if it runs off the end."""
  value = shift = 0
  while True:
    if pos >= len(buf) or shift > 63:
      raise ValueError("truncated or overlong varint")
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return value, pos


def _fields(buf: bytes):
  """Yields (field number, wire type, value) for each field of a serialized protobuf message.

  Varints are ints, fixed64 and fixed32 are their raw 8 and 4 bytes, length-delimited fields are bytes.
  """
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire_type = key >> 3, key & 7
    if wire_type == _VARINT:
      value, pos = _read_varint(buf, pos)
    elif wire_type in (_FIXED64, _FIXED32, _LEN):
      if wire_type == _LEN:
        size, pos = _read_varint(buf, pos)
      else:
        size = 8 if wire_type == _FIXED64 else 4
      if pos + size > len(buf):
        raise ValueError(f"field {field} runs past the end of its message")
      value, pos = buf[pos : pos + size], pos + size
    else:
      raise ValueError(f"unsupported wire type {wire_type} for field {field}")
    yield field, wire_type, value


def _decode_event(data: bytes) -> dict:
  """Decodes the Event fields this module writes; skips all others (graphs, tensors, metadata...)."""
  event = {"wall_time": 0.0, "step": 0, "file_version": None, "values": {}}
  for field, wire_type, value in _fields(data):
    if field == 1 and wire_type == _FIXED64:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif field == 2 and wire_type == _VARINT:
      event["step"] = value - 2**64 if value >= 2**63 else value
    elif field == 3 and wire_type == _LEN:
      event["file_version"] = bytes(value).decode("utf-8")
    elif field == 5 and wire_type == _LEN:
      for s_field, s_wire_type, summary_value in _fields(value):
        if s_field != 1 or s_wire_type != _LEN:
          continue
        tag, simple_value = None, None
        for v_field, v_wire_type, v_value in _fields(summary_value):
          if v_field == 1 and v_wire_type == _LEN:
            tag = bytes(v_value).decode("utf-8")
          elif v_field == 2 and v_wire_type == _FIXED32:
            simple_value = struct.unpack("<f", v_value)[0]
        if tag is not None and simple_value is not None:
          event["values"][tag] = simple_value
  return event


def read_events(path: str) -> list[dict]:
  """Reads every event of a TFRecord event file, verifying both CRCs of each record.

  A final record cut short (a writer killed mid-write, or one still writing) is silently ignored.

  Args:
    path: The event file.

  Returns:
    One dict per record, in file order: {"wall_time": float, "step": int, "file_version": str or None,
    "values": {tag: float}}. Fields absent from the record take their protobuf defaults (0.0, 0, None,
    {}); `values` holds the `simple_value` scalars only.

  Raises:
    ValueError: A record has a wrong CRC or cannot be decoded; the message names the file and the byte
      offset at which the record starts.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    buf = f.read()
  events = []
  offset = 0
  while offset < len(buf):
    if offset + _HEADER > len(buf):
      break  # Truncated header of the final record.
    length_bytes = buf[offset : offset + 8]
    (length_crc,) = struct.unpack_from("<I", buf, offset + 8)
    if masked_crc32c(length_bytes) != length_crc:
      raise ValueError(f"{path}: corrupt record at byte offset {offset}: length CRC mismatch")
    (length,) = struct.unpack("<Q", length_bytes)
    end = offset + _HEADER + length + _FOOTER
    if end > len(buf):
      break  # Truncated data of the final record.
    data = buf[offset + _HEADER : end - _FOOTER]
    (data_crc,) = struct.unpack_from("<I", buf, end - _FOOTER)
    if masked_crc32c(data) != data_crc:
      raise ValueError(f"{path}: corrupt record at byte offset {offset}: data CRC mismatch")
    try:
      events.append(_decode_event(data))
    except (ValueError, struct.error) as e:  # UnicodeDecodeError is a ValueError.
      raise ValueError(f"{path}: undecodable Event in the record at byte offset {offset}: {e}") from e
    offset = end
  return events
