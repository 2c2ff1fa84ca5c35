"""The worker's end of the link to the real-time process (``realtime``): ports that hand everything over.

In the worker (the process that runs the model), ``open_output`` and ``open_input`` return these
instead of JACK ports when ``link()`` is set (by the worker's entry point, once):

- ``RemoteOutput.send(msg, at=t)`` packs the message with its time and writes it to the socket at once;
  the real-time process writes it on the frame of ``t``. It has the ``lead``, ``hop`` and ``period`` of
  ``jack_midi.JackOutput`` (the real-time side's), so the engine hands messages over just as early.
- ``RemoteInput``: the real-time process stamps each input event with its frame's time; the link's reader
  thread parses it and calls the listener's ``callback(msg, t)``, as ``jack_midi.JackInput`` does.
- ``beat(due)`` after every step says by when the next one will come (the real-time side silences a
  stalled worker); ``journal(spec)`` at every session's start says where its file goes, so the real-time
  side can write what was played if this process dies.

Threads: the engine's sender, the stop path and a listener all call ``Link.send`` (a lock keeps records
whole); the reader thread is the only one that reads the socket. If the real-time process goes away, the
ports are gone with it: the reader says so in one line and ends this process at once (exit code 1),
leaving the files already written as they are.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import mido

from ..errors import PortError
from . import wire
from .jack_midi import deliver

log = logging.getLogger(__name__)

REPLY_SECONDS = 3.0  # the longest wait for the real-time side to answer (a close drains up to 1 s)
COUNTS_SECONDS = 0.05  # counts younger than this are not asked for again

_link: Link | None = None  # the worker's one link, set by ``connect`` at its entry point


def link() -> Link | None:
    """The link to the real-time process when this process is its worker, else None."""
    return _link


def connect(fd: int) -> dict:
    """Take the socket ``fd`` the real-time process gave this worker; returns its HELLO (the command to run)."""
    global _link
    _link = Link(Connection(fd))
    return _link.hello


class Link:
    """The socket to the real-time process: records out under a lock, records in on a reader thread."""

    def __init__(self, conn: Connection):
        self.conn = conn
        try:
            record = conn.recv_bytes()
        except (EOFError, OSError):  # the real-time side could not open its ports (and says so itself)
            raise SystemExit(1) from None
        if record[:1] != wire.HELLO:
            raise PortError("the real-time process did not say hello")
        self.hello: dict = pickle.loads(record[1:])
        self.facts: dict = self.hello["ports"]
        self.callback: Callable[[mido.Message, float], None] | None = None  # RemoteInput's (set, then read)
        self.garbled = 0  # input events mido could not parse (reader thread)
        self.closing = False  # the output was closed: an end of the socket is expected
        self._lock = threading.Lock()  # one record at a time on the socket
        self._request_lock = threading.Lock()  # one question in flight at a time
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="improviser-link-read", daemon=True)
        self._reader.start()

    def send(self, record: bytes) -> None:
        with self._lock:
            try:
                self.conn.send_bytes(record)
            except (OSError, ValueError):
                self._lost()

    def request(self, record: bytes, timeout: float = REPLY_SECONDS) -> dict:
        """Send a QUERY or CLOSE and wait for its REPLY."""
        with self._request_lock:
            self.send(record)
            try:
                return self._replies.get(timeout=timeout)
            except queue.Empty:
                raise PortError("the real-time process did not answer") from None

    def _read(self) -> None:
        while True:
            try:
                record = self.conn.recv_bytes()
            except (EOFError, OSError):
                break
            kind = record[:1]
            if kind == wire.HEARD:
                self._deliver(wire.unpack_events(record))
            elif kind == wire.REPLY:
                self._replies.put(pickle.loads(record[1:]))
        self._lost()

    def _deliver(self, events: list[tuple[float, bytes]]) -> None:
        self.garbled += deliver(events, self.callback)

    def _lost(self) -> None:
        if self.closing:
            return
        self.closing = True
        print("error: the real-time process that holds the MIDI ports is gone; stopping", file=sys.stderr,
              flush=True)
        os._exit(1)


class RemoteOutput:
    """The output port of the real-time process, seen from the worker (see ``jack_midi.JackOutput``)."""

    def __init__(self, link: Link):
        self.link = link
        facts = link.facts
        self.name: str = facts["port"]
        self.target: str | None = facts["target"]
        self.lead: float = facts["lead"]
        self.hop: float = facts["hop"]
        self.period: float = facts["period"]
        self.forwards_thru: bool = facts["thru"]  # the real-time side forwards the player's notes itself
        self.closed = False
        self.final: dict | None = None  # the counts at close
        self._counts: dict = {}
        self._counts_at = -1.0

    def send(self, msg: mido.Message, at: float | None = None) -> None:
        self.link.send(wire.pack_events(wire.SEND, [(wire.ASAP if at is None else at, bytes(msg.bytes()))]))

    def beat(self, due: float) -> None:
        """The next step will be handed over by ``due`` (monotonic seconds)."""
        self.link.send(wire.pack_time(wire.BEAT, due))

    def journal(self, spec: dict) -> None:
        """The session now playing: where its file goes and how to write it (see ``live.split``)."""
        self.link.send(wire.JOURNAL + pickle.dumps(spec))

    def counts(self) -> dict:
        """The real-time side's counts: late, written, dropped, xruns, thru, garbled, stalls."""
        if self.final is not None:
            return self.final
        if time.monotonic() - self._counts_at > COUNTS_SECONDS:
            self._counts = self.link.request(wire.QUERY + pickle.dumps("counts"))
            self._counts_at = time.monotonic()
        return self._counts

    @property
    def late(self) -> int:
        return int(self.counts().get("late", 0))

    @property
    def xruns(self) -> int:
        return int(self.counts().get("xruns", 0))

    def output_names(self) -> list[str]:
        return list(self.link.request(wire.QUERY + pickle.dumps("outputs"))["outputs"])

    def close(self) -> None:
        """Wait until the real-time side has written everything handed over and turned off what still sounds."""
        if self.closed:
            return
        self.closed = True
        self.final = self.link.request(wire.CLOSE)
        self.link.closing = True


class RemoteInput:
    """The input port of the real-time process: ``callback(msg, t)`` for every message, ``t`` its frame's time."""

    def __init__(self, link: Link, callback: Callable[[mido.Message, float], None]):
        self.link = link
        if link.facts["input"] is None:
            raise PortError("the real-time process has no input port")
        self.name: str = link.facts["input"]
        self.source: str | None = link.facts["source"]
        self.closed = False
        link.callback = callback

    @property
    def garbled(self) -> int:
        return self.link.garbled

    def close(self) -> None:
        self.closed = True
        self.link.callback = None
