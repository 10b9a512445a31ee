"""`python -m deploy.audit <run dir>`: check a finished run's replay against its writers' own records.

With `replay.audit` on, every writer appends a line per flush the replay acknowledged (replay_service/
writer.py): the flush's first row, its transitions and the SHA-1 of each row exactly as stored. This reads
every such line, opens the run's replay (its own embedded redis-server on the run's data directory, or
`replay.url`), and compares: an acknowledged row that is missing or differs is a lost or corrupted
acknowledged write, the one thing the replay promises never happens. Rows below the replay's tail were
evicted by capacity (FIFO) and are counted, not checked. Rows stored that no writer logged come from a
flush whose reply never reached its writer (killed mid-flush): stored, never acknowledged, not an error.

Exit 0 when nothing acknowledged is lost, 1 when something is, 2 when the run cannot be audited.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from common.config import ConfigError
from common.config_groups import is_redacted
from common.run_files import RunFiles
from replay_service import RedisServer
from replay_service.client import connect
from replay_service.schema import FLAG_TERMINATED, FLAG_TRUNCATED, KIND_STEP, STATE, row_key


class AuditError(RuntimeError):
    """The run has no audit records or no replay to check them against."""


@dataclass
class AuditReport:
    """What an audit found: the writers' acknowledged flushes, rows and transitions, and what the replay holds of them."""

    writers: int = 0
    acknowledged_flushes: int = 0
    acknowledged_rows: int = 0
    acknowledged_transitions: int = 0
    checked_rows: int = 0
    evicted_rows: int = 0
    stored_rows: int = 0
    stored_transitions: int = 0
    stored_episode_ends: int = 0
    """Stored transitions that end an episode (terminated or truncated): the episodes the replay holds whole."""
    inserted: int = 0
    sampled: int = 0
    unacknowledged_stored_rows: int = 0
    missing: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    conflicting: list[int] = field(default_factory=list)
    """Row indices two acknowledged flushes claim with different contents (two writers given one slot)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.conflicting)


def read_records(audit_dir: Path) -> tuple[dict[int, str], int, int, int]:
    """Every acknowledged row's digest by row index, plus the writer, flush and transition counts.
    A flush acknowledged twice (a retry whose first reply was lost) names the same rows again."""
    rows: dict[int, str] = {}
    conflicting: set[int] = set()
    files = sorted(audit_dir.glob("*.log"))
    flushes = transitions = 0
    seen_flushes: set[tuple[int, str]] = set()
    for path in files:
        for line in path.read_text().splitlines():
            base, n, *digests = line.split()
            if (int(base), digests[0]) in seen_flushes:
                continue
            seen_flushes.add((int(base), digests[0]))
            flushes += 1
            transitions += int(n)
            for offset, digest in enumerate(digests):
                index = int(base) + offset
                if rows.setdefault(index, digest) != digest:
                    conflicting.add(index)
    for index in conflicting:
        rows[index] = "conflict"
    return rows, len(files), flushes, transitions


def audit_replay(client: redis.Redis, audit_dir: Path) -> AuditReport:
    """Compare the replay behind `client` with the records in `audit_dir` (see the module docstring)."""
    rows, writers, flushes, transitions = read_records(audit_dir)
    report = AuditReport(writers=writers, acknowledged_flushes=flushes, acknowledged_rows=len(rows),
                         acknowledged_transitions=transitions)
    report.conflicting = sorted(i for i, d in rows.items() if d == "conflict")
    state = {k.decode(): int(v) for k, v in client.hgetall(STATE).items()}
    head, tail = state.get("head", 0), state.get("tail", 0)
    report.inserted, report.sampled = state.get("inserted", 0), state.get("sampled", 0)
    for start in range(tail, head, 512):
        indices = list(range(start, min(start + 512, head)))
        for index, blob in zip(indices, client.mget([row_key(i) for i in indices]), strict=True):
            if blob is None:
                continue
            report.stored_rows += 1
            report.stored_transitions += blob[0] == KIND_STEP
            report.stored_episode_ends += blob[0] == KIND_STEP and bool(blob[1] & (FLAG_TERMINATED | FLAG_TRUNCATED))
            digest = rows.get(index)
            if digest is None:
                report.unacknowledged_stored_rows += 1
            elif digest != "conflict":
                report.checked_rows += 1
                if hashlib.sha1(blob).hexdigest() != digest:
                    report.changed.append(index)
    for index in rows:
        if index < tail:
            report.evicted_rows += 1
        elif index >= head or client.exists(row_key(index)) == 0:
            report.missing.append(index)
    report.missing.sort()
    return report


def audit(run_dir: str | Path, replay_url: str | None = None) -> AuditReport:
    """Audit a run that is not running: its embedded replay is started on the run's data directory; a run on an
    external Redis is audited there (`replay_url`, needed when config.json keeps its URL without the password)."""
    path = Path(run_dir)
    files = RunFiles(path)
    try:
        cfg = files.read_config()
    except ConfigError as exc:
        raise AuditError(str(exc)) from None
    audit_dir = files.audit
    if not any(audit_dir.glob("*.log")):
        raise AuditError(f"{path}: no writer records in {audit_dir}; the run was trained without "
                         "--replay.audit (only runs with it on can be audited)")
    url = replay_url or cfg.replay.url
    if url and is_redacted(url):
        raise AuditError(f"{path} ran on an external Redis whose password config.json does not keep ({url}); "
                         "give the URL with its password: python -m deploy.audit DIR --replay-url "
                         "'redis://<user>:<password>@<host>:<port>/<db>'")
    if url:
        client = connect(url, cfg.replay.connect_timeout_s)
        try:
            return audit_replay(client, audit_dir)
        finally:
            client.close()
    with RedisServer(files.redis, cfg.replay) as server:
        client = connect(server.url, cfg.replay.connect_timeout_s)
        try:
            return audit_replay(client, audit_dir)
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory trained with --replay.audit")
    parser.add_argument("--replay-url", help="a run on an external Redis: its URL with the password, which "
                        "config.json does not keep (default: config.json's replay.url)")
    args = parser.parse_args(argv)
    try:
        report = audit(args.run_dir, args.replay_url)
    except (AuditError, OSError, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = asdict(report)
    for key in ("missing", "changed", "conflicting"):
        out[key] = out[key][:20]  # the first few; the counts say how many
        out[f"{key}_count"] = len(getattr(report, key))
    out["ok"] = report.ok
    print(json.dumps(out, indent=2))
    if not report.ok:
        print(f"error: {len(report.missing)} acknowledged rows missing, {len(report.changed)} changed, "
              f"{len(report.conflicting)} claimed twice", file=sys.stderr)
    return 0 if report.ok else 1

