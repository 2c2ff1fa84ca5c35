"""Open Sound Control (``--osc PORT``, ``--osc-send HOST:PORT``): the face's controls and events over UDP.

In (python-osc's server on a thread of its own, ``improviser-osc``, in the worker process)::

    /improviser/tempo f   /improviser/temperature f   /improviser/stability i   /improviser/key s
    /improviser/key_hold f   /improviser/mode s   /improviser/panic

Each goes through ``Face.control`` (checked, rate-limited per sender, then the listening part's queue: the path
a MIDI controller's knob takes). A malformed or out-of-range one is counted, and answered with
``/improviser/error s`` to its sender; the engine never sees it.

Out (with ``--osc-send``; sent from the face's pump thread, never from the engine's)::

    /improviser/note i i i    pitch, velocity (0: a note-off), channel (1..16): every note it plays
    /improviser/state f f i s s f s i    tempo (0 following a DAW's clock), temperature, stability, the key
                          it holds ('' before it has heard one), the key setting (auto or a key), key hold,
                          mode, late steps: whenever one of them changes
"""

from __future__ import annotations

import socket
import threading

from ..errors import ImproviserError
from .face import OWN, ControlError, Face

CONTROLS = ("tempo", "temperature", "stability", "key", "key_hold", "mode", "panic")


def udp_socket_free(host: str, port: int) -> None:
    """One-line ImproviserError unless a UDP port can be bound on ``host``."""
    if not 1 <= port <= 65535:
        raise ImproviserError(f"--osc {port}: give a UDP port, 1..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
    except socket.gaierror:
        raise ImproviserError(f"--web-host {host!r}: not a name or address this machine knows") from None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as e:
            why = "the port is in use by another program" if e.errno == 98 else e.strerror
            raise ImproviserError(f"--osc {port}: {why}; give another port") from None


def parse_target(text: str) -> tuple[str, int]:
    """--osc-send HOST:PORT -> (host, port), the host resolved; one-line ImproviserError if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ImproviserError(f"--osc-send {text!r}: write HOST:PORT, e.g. 127.0.0.1:9000")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except socket.gaierror:
        raise ImproviserError(f"--osc-send {text!r}: {host!r} is not a name or address this machine knows") from None
    return host, int(port)


class OscFace:
    """The OSC server (``port``, None: none) and sender (``target``, None: none) around ``face``."""

    def __init__(self, face: Face, port: int | None = None, host: str = "127.0.0.1",
                 target: tuple[str, int] | None = None):
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer
        from pythonosc.udp_client import SimpleUDPClient

        self.face = face
        self.server = None
        self._thread: threading.Thread | None = None
        if port is not None:
            dispatcher = Dispatcher()
            for name in CONTROLS:
                dispatcher.map(f"/improviser/{name}", self._control, name, needs_reply_address=True)
            dispatcher.set_default_handler(self._unknown, needs_reply_address=True)
            try:
                self.server = BlockingOSCUDPServer((host, port), dispatcher)
            except OSError as e:
                raise ImproviserError(f"--osc {port}: {e.strerror}; give another port") from None
            self.port = self.server.server_address[1]
        self.client = SimpleUDPClient(*target) if target is not None else None
        if self.client is not None:
            face.subscribe(self._deliver)

    def start(self) -> None:
        if self.server is not None:
            self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="improviser-osc", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self.server is not None:
            if self._thread is not None:
                self.server.shutdown()
                self._thread.join(5)
            self.server.server_close()

    # ---- in: the server's thread ---------------------------------------------------------------------------

    def _control(self, sender, address: str, fixed: list, *args) -> None:
        name = fixed[0]
        value = args[0] if args else None
        if name == "stability" and isinstance(value, float) and value.is_integer():
            value = int(value)  # (a fader that sends floats)
        try:
            if name != "panic" and len(args) != 1:
                raise ControlError(f"{address} takes one argument (got {len(args)})")
            self.face.control(name, value, ("osc", sender[0]))
        except ControlError as e:
            self._reply(sender, str(e))

    def _unknown(self, sender, address: str, *args) -> None:
        self.face.refuse()
        self._reply(sender, f"unknown address {address}; the controls are "
                            + ", ".join(f"/improviser/{n}" for n in CONTROLS))

    def _reply(self, sender, text: str) -> None:
        from pythonosc.osc_message_builder import OscMessageBuilder

        msg = OscMessageBuilder("/improviser/error")
        msg.add_arg(text)
        try:
            self.server.socket.sendto(msg.build().dgram, sender)
        except OSError:
            pass

    # ---- out: the face's pump thread ---------------------------------------------------------------------

    def _deliver(self, events: list, state: dict | None) -> None:
        try:
            for _, who, pitch, velocity, channel in events:
                if who == OWN:
                    self.client.send_message("/improviser/note", [pitch, velocity, channel + 1])
            if state is not None and state.get("mode") is not None:
                self.client.send_message("/improviser/state", [
                    float(state.get("tempo") or 0.0), float(state["temperature"]), int(state["stability"]),
                    state.get("key") or "", state.get("key_setting") or "auto", float(state["key_hold"]),
                    state["mode"], int(state["late_steps"])])
        except OSError:
            pass  # a peer that is not there (UDP): the next events go again
