"""Read back what an offline W&B run logged: the history rows of `run-<id>.wandb`.

wandb >= 0.19 writes runs with its Go core and no longer ships a Python reader. The file is a
LevelDB-style log (a 7-byte header, then 32 KiB blocks of records, each with a 7-byte
checksum/length/type header, possibly split across blocks) of `wandb_internal_pb2.Record` protobufs.
Used by the tests to assert what a run logged, and handy for quick looks without syncing.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

from common.run_files import RunFiles

_HEADER = b":W&B"
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes) -> list[bytes]:
    if not data.startswith(_HEADER):
        raise ValueError("not a W&B run file (missing the :W&B header)")
    pos, out, pending = 7, [], b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:  # the writer pads a block's tail that cannot hold a header
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            out.append(pending + payload)
            pending = b""
        else:  # zero padding or a torn tail of a run still being written
            break
    return out


def find_offline_runs(directory: str | Path) -> list[Path]:
    """`offline-run-*` folders under `<directory>/wandb`, oldest first."""
    return sorted(RunFiles(Path(directory)).wandb.glob("offline-run-*"))


def read_history(run_path: str | Path) -> list[dict[str, Any]]:
    """Every history row (one per `wandb.log` call) of an offline run folder or its .wandb file."""
    run_path = Path(run_path)
    files = [run_path] if run_path.is_file() else sorted(run_path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_path}")
    rows = []
    for file in files:
        for raw in _records(file.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def read_config(run_path: str | Path) -> dict[str, Any]:
    """The run's config as logged (nested dict), from the config records of an offline run."""
    run_path = Path(run_path)
    config: dict[str, Any] = {}
    for file in sorted(run_path.glob("run-*.wandb")):
        for raw in _records(file.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            items = record.config.update if kind == "config" else (
                record.run.config.update if kind == "run" else [])
            for item in items:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    config[key] = json.loads(item.value_json)
    return config


def read_run_info(run_path: str | Path) -> dict[str, Any]:
    """The run record's identity as W&B shows it: id, name, group, job type and tags (the last run record
    wins: a resumed run writes one per session)."""
    info: dict[str, Any] = {}
    for file in sorted(Path(run_path).glob("run-*.wandb")):
        for raw in _records(file.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "run":
                run = record.run
                info = {"id": run.run_id, "name": run.display_name, "group": run.run_group,
                        "job_type": run.job_type, "tags": list(run.tags)}
    return info
