"""Keeping ``--output NAME`` connected when the program on the other end quits and comes back.

What really happens on JACK (python-rtmidi 1.5.8, mido 1.3.3): when the peer's
client goes away, JACK drops the connection and our port stays open; sends keep
succeeding and the messages go nowhere. When a port of the same name appears
again, nothing reconnects by itself. Other MIDI systems may instead raise from
``send``. So nothing on the sending side can be trusted to notice.

``ReconnectingOutput`` is an ``OutputPort`` whose underlying port can be swapped
while it plays. A watcher thread (never the sending thread) lists the output
ports every ``poll`` seconds, through the open port's own rtmidi client (about
0.1 ms; asking the backend instead opens and closes a whole JACK client, ~50 ms).
When no port matches NAME any more, or a send has failed, it says so in one
line; when a matching port is there again it opens a new connection with
``open_output``, swaps it in, and says so in one line. Meanwhile everything is
still played into the void and recorded, so the session files lose nothing.

A peer that quits and comes back within one ``poll`` is not noticed (JACK's
port list looks the same and rtmidi cannot show connections).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import mido

from ..errors import PortError
from .midi import OutputPort, find_port, open_output

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the watcher looks at the port list


class _Link:
    """One connection (a mido output port, or a ``jack_midi.JackOutput``). ``send`` never raises: a failure
    is remembered for the watcher."""

    def __init__(self, port):
        self.port = port
        self.lead = getattr(port, "lead", 0.0)  # a port that places messages in time: see midi.OutputPort
        self.hop = getattr(port, "hop", 0.0)
        self.period = getattr(port, "period", 0.0)
        self.failed: BaseException | None = None
        self._lock = threading.Lock()  # a send and close() of the same connection never overlap
        self._closed = False

    @property
    def late(self) -> int:
        return int(getattr(self.port, "late", 0))

    def send(self, msg: mido.Message, at: float | None = None) -> None:
        with self._lock:
            if self._closed or self.failed is not None:
                return  # the peer is gone: the message goes nowhere, as it would on JACK
            try:
                if at is None:
                    self.port.send(msg)
                else:
                    self.port.send(msg, at=at)
            except Exception as e:  # e.g. a backend that reports the vanished peer
                self.failed = e

    def names(self) -> list[str] | None:
        """Output port names seen through this connection's own client, or None if it cannot list them."""
        own = getattr(self.port, "output_names", None)  # the JACK backend lists through its own client
        if own is not None:
            return own()
        rt = getattr(self.port, "_rt", None)  # mido's rtmidi port keeps its rtmidi.MidiOut here
        if rt is None:
            return None
        return list(rt.get_ports())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.port.close()
            except Exception as e:  # closing a dead connection may fail too; it is gone either way
                log.debug("closing a lost MIDI connection: %s", e)


class ReconnectingOutput(OutputPort):
    """An output port connected to the existing port matching ``wanted``, reconnected whenever it comes back.

    warn(text): told, in one line, when the port is lost; info(text): when it is back.
    reopen(api, wanted): opens a new connection (default ``open_output``); list_names(api): the output
    port names, used when the open port cannot list them itself.
    """

    def __init__(self, port: OutputPort, api: str | None, wanted: str,
                 warn: Callable[[str], None] | None = None, info: Callable[[str], None] | None = None,
                 poll: float = POLL_SECONDS,
                 reopen: Callable[[str | None, str], OutputPort] = open_output,
                 list_names: Callable[[str | None], list[str]] | None = None):
        super().__init__(_Link(port._port), port.name, port.settle)
        self.api, self.wanted, self.poll = api, wanted, poll
        self.warn = warn or log.warning
        self.info = info or log.info
        self.reopen = reopen
        self.list_names = list_names
        self.connected = True
        self.reconnections = 0
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="improviser-output-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching, silence, close. Safe to call more than once."""
        self._stop.set()
        if self._watcher is not threading.current_thread():
            self._watcher.join()
        super().close()

    # ---- the watcher thread -------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.check()
            except Exception as e:  # a bug here must not end the music; say it once per kind
                log.exception("watching the MIDI output: %s", e)

    def check(self) -> None:
        """Look once: notice a lost peer, or reconnect to one that is back (called by the watcher).

        ``connected`` and ``reconnections`` are written here (watcher thread) and read by others as
        plain values; the link itself is swapped under the port's send lock.
        """
        link: _Link = self._port
        names = self._names(link)
        # Connected: the very port we play into must still be listed. Lost: any port matching NAME will do.
        present = names is not None and (self.name in names if self.connected else self._match(names) is not None)
        if self.connected:
            if link.failed is None and (names is None or present):
                return
            self.connected = False
            why = f"sending failed: {link.failed}" if link.failed is not None else "its port is gone"
            self.warn(f"lost MIDI output {self.name!r} ({why}); still playing and recording, and will "
                      f"reconnect when a port matching {self.wanted!r} is back")
        if not present and names is not None:
            return
        try:  # the same port as before if it is back, else whatever matches NAME now
            fresh = self.reopen(self.api, self.name if names and self.name in names else self.wanted)
        except PortError as e:  # not there (yet), or ambiguous: try again at the next look
            log.debug("reconnecting: %s", e)
            return
        with self._lock:  # no send is under way while the link is swapped
            self._port = _Link(fresh._port)
            self.name = fresh.name
        self.connected = True
        self.reconnections += 1
        self.info(f"reconnected to MIDI output {fresh.name!r}")
        link.close()

    def _names(self, link: _Link) -> list[str] | None:
        try:
            names = link.names()
            if names is None and self.list_names is not None:
                names = self.list_names(self.api)
            return names
        except Exception as e:  # listing failed (e.g. the MIDI system is restarting): no news this time
            log.debug("listing MIDI outputs: %s", e)
            return None

    def _match(self, names: list[str]) -> str | None:
        try:
            return find_port(names, self.wanted, "output")
        except PortError:
            return None


def open_reconnecting_output(api: str | None, wanted: str, warn: Callable[[str], None] | None = None,
                             info: Callable[[str], None] | None = None,
                             poll: float = POLL_SECONDS, jack_backend: str | None = None) -> ReconnectingOutput:
    """Connect to the existing output port matching ``wanted`` (PortError if none) and keep reconnecting
    (through the same backend: ``jack_backend`` as for ``open_output``)."""

    def reopen(api: str | None, name: str) -> OutputPort:
        return open_output(api, name, jack_backend)

    return ReconnectingOutput(reopen(api, wanted), api, wanted, warn=warn, info=info, poll=poll, reopen=reopen)
