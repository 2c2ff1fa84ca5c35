"""Playing live in two processes: the real-time side (this process) and the worker (the model).

``record`` and ``play`` on the JACK backend run so (``cli``): the process the user started opens the
ports (``ports.realtime.RealtimeSide``), starts a worker process (``python -m improviser worker FD``)
that runs the very same command with ports that hand everything over the socket (``ports.remote``),
and waits for it. Why: see ``ports.realtime``.

The real-time side answers for the worker's end:
- Ctrl-C and SIGTERM reach the real-time side (the worker runs in a session of its own, so a terminal's
  Ctrl-C is not delivered twice) and are forwarded to the worker, which stops as it always has.
- The worker ends cleanly: it closed its port (the real-time side drained what it handed over and turned
  off what still sounded); its exit code is the command's.
- The worker dies (killed, crashed) or its socket ends without a close: the real-time side has already
  turned off every sounding note in the next period (the reader thread saw the socket end); it writes
  the session that was playing from its own journal of what it wrote and heard (the worker's earlier
  sessions are the worker's files), says so in one line, and exits with 1.
"""

from __future__ import annotations

import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import mido

from ..ports import wire
from ..ports.realtime import RealtimeSide
from .recorder import SessionRecorder


class Worker:
    """The worker process (``python -m improviser worker FD``) and this side's end of its socket."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "improviser", "worker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], start_new_session=True)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())

    def cancel(self) -> None:
        """Never mind: the worker reads the end of its socket and exits without a word."""
        self.conn.close()
        self.proc.wait()


def supervise(side: RealtimeSide, worker: Worker, command: str, arguments: dict,
              say: Callable[[str], None]) -> int:
    """Run ``command`` (with ``arguments``) in ``worker``, playing through ``side``; returns the exit code.

    say(text): the one line when the worker dies.
    """
    conn = worker.conn
    worker = worker.proc
    conn.send_bytes(wire.HELLO + pickle.dumps({"command": command, "arguments": arguments, "ports": side.facts()}))
    side.serve(conn)
    started = time.monotonic()

    def forward(signum, frame):
        try:
            worker.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = worker.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    try:
        if side.clean:
            return code
        if side.lost_at is None:  # it ended, but its socket has not been seen to end yet
            side.lost_at = time.monotonic()
            side._silence(everything=True)
        if side.session is None and code > 0:
            return code  # it stopped before playing (and said why)
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 else
               f"ended without closing its port (exit code {code})")
        written = write_journal(side)
        where = f"; wrote {written} with what was played up to then" if written else ""
        say(f"the worker process {how} after {side.lost_at - started:.1f} s; every sounding note was turned "
            f"off{where}")
        return code if code > 0 else 1
    finally:
        side.close()
        conn.close()


def write_journal(side: RealtimeSide) -> Path | None:
    """Write the session that was playing when the worker died, from what the real-time side wrote and heard
    up to then; returns the path (None if no session had begun)."""
    spec = side.session
    if spec is None:
        return None
    end = side.lost_at if side.lost_at is not None else time.monotonic()
    rec = SessionRecorder(spec["start"], voices=spec.get("voices", False), meter=spec.get("meter"),
                          bar_time=spec.get("bar_time"), bar_seconds=spec.get("bar_seconds", 0.0))
    for t, data, track in sorted(side.journal, key=lambda e: e[0]):
        if spec["start"] <= t <= end:
            try:
                rec.record(mido.Message.from_bytes(data), t, track)
            except (ValueError, TypeError):
                continue
    session = rec.finish(max(end, spec["start"]))
    session.index = spec.get("index", 0)
    path = Path(spec["path"])
    return session.write(path, spec["bpm"])


def worker_arguments(fd: int) -> dict:
    """In the worker: take the real-time side's socket; the HELLO's command and arguments."""
    from ..ports import remote

    return remote.connect(fd)
