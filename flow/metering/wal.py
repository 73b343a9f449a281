"""The write-ahead log: every usage event is on local disk before it counts as taken.

A meter holds its events in memory for up to ``FLOW_METER_FLUSH_SECONDS`` before a
batch reaches the ledger. So that a process killed in between (kill -9, the OOM killer,
a crashed host process) loses nothing, each meter appends every event it takes to a
log file of its own, ``FLOW_SPOOL_DIR/wal/<meter id>.jsonl``, with one ``write`` to an
``O_APPEND`` descriptor: once it returns, the kernel has the line and a dead process
cannot take it back. There is no fsync per event (it would cost a disk flush per
metric): a machine that loses power can still lose what the kernel had not yet written,
at most the last ``FLOW_METER_FLUSH_SECONDS`` of usage (older events are in the ledger).

Each line is ``{"event": <row>}``, or ``{"provisional": <row>}`` for usage that is
being incurred but not yet reported (an LLM reply in progress, recorded as an estimate
with its prompt tokens): a later event with the same id supersedes it, so a reply the
process did not live to finish is replayed as one estimated event, and a finished one
counts once.

The meter holds an exclusive ``flock`` on its file while it lives and deletes the file
once every event is in the ledger (or the fsynced spool). The kernel releases the lock
when the process dies, however it dies, so :func:`dead_logs` tells a dead meter's log
(lock free) from a live one's (locked) without pids or clocks. Replaying a log twice,
or replaying events that did reach the ledger, counts nothing twice: ids are fixed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flow.metering.events import UsageEvent

log = logging.getLogger(__name__)

WAL_DIR = "wal"
EVENT, PROVISIONAL = "event", "provisional"


class WriteAheadLog:
    """One meter's log. ``append`` is one ``write`` syscall; no fsync.

    Parameters:
        spool_dir: ``FLOW_SPOOL_DIR``; the log lives in its ``wal/`` folder.
    """

    def __init__(self, spool_dir: Path) -> None:
        directory = Path(spool_dir) / WAL_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid.uuid4()}.jsonl"
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def append(self, event: UsageEvent, *, provisional: bool = False) -> None:
        if self._fd is None:
            raise ValueError("the write-ahead log is closed")
        kind = PROVISIONAL if provisional else EVENT
        line = json.dumps({kind: event.to_row()}, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())

    def discard(self) -> None:
        """Delete the log (every event is in the ledger or the spool) and let go of it."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def read_log(path: Path) -> list[UsageEvent]:
    """The events of a log: each id once, its final event over a provisional one."""
    final: dict[uuid.UUID, UsageEvent] = {}
    provisional: dict[uuid.UUID, UsageEvent] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind, row = next(iter(entry.items()))
                event = UsageEvent.from_row(row)
            except (ValueError, TypeError, StopIteration, AttributeError):
                log.error("skipping unreadable write-ahead log line %s:%d", path, n)
                continue
            (provisional if kind == PROVISIONAL else final)[event.id] = event
    return [*final.values(), *(e for i, e in provisional.items() if i not in final)]


@contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold the log's lock if its meter is gone; yields whether it was free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # a live meter holds it
            return
        yield True
    finally:
        os.close(fd)


def dead_logs(spool_dir: Path) -> list[Path]:
    """The logs of meters whose process is gone (no one holds their lock)."""
    directory = Path(spool_dir) / WAL_DIR
    if not directory.is_dir():
        return []
    dead = []
    for path in sorted(directory.glob("*.jsonl")):
        with _locked(path) as free:
            if free:
                dead.append(path)
    return dead


def remove_if_dead(path: Path) -> bool:
    """Delete a dead meter's log once its events are recorded (False if it came back to
    life, which cannot happen, or is already gone)."""
    with _locked(path) as free:
        if free:
            path.unlink(missing_ok=True)
        return free
