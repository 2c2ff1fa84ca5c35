"""The service's face: what it plays and hears and how it is set, out to the web page and OSC; their controls in.

    sender thread ─── send(msg, t) ───┐ (an engine sink: its own notes)           never blocks: a bounded
    producer thread ─ heard(t, msg) ──┤ (``Listening.watch``: the player's notes)  queue, drops counted
                    ─ stepped(k) ─────┘ (its settings, swapped in when one changed)
                                      ▼
                 pump thread, every PUMP_SECONDS: the notes since the last time and the state, handed to each
                 subscriber (``subscribe``: the web server, the OSC sender), which must not block either
                                      │
    web page, OSC ─ control(name, value) / note(pitch, velocity) ─► checked here (type, range, rate) ─►
                    ``InputListener.control`` / ``on_message``: the very path a MIDI keyboard's notes and
                    controls take, applied by the listening part on the producer thread.

One source of truth: the engine's own events and the listening part's controls. The engine never waits for a
page or an OSC peer, nor they for the engine: a slow, closed or reconnecting browser costs no note (its events
are dropped and counted instead).

Shared state, and who owns it:
- ``_events``: sender and producer threads -> pump thread (``queue.Queue``, bounded; ``dropped`` counts what
  did not fit, written by those two threads: a count, not an exact figure under a race);
- ``_settings``: a dict the producer thread builds and swaps in whole; read by any thread;
- ``sessions``: a bounded deque the session writer appends to (``session_written``); read by any thread;
- ``refused``, ``_buckets``: the controlling threads (the web server's loop, the OSC server), under ``_lock``.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mido

from ..errors import ImproviserError

EVENTS_QUEUED = 8192  # notes waiting for the pump: seconds of the densest playing
PUMP_SECONDS = 0.02  # how often the pump hands out what happened (the page draws at 60 frames a second)
SESSIONS_SHOWN = 100  # the sessions of this run the face offers, most recent last
CONTROL_RATE = 100.0  # controls (and the page's notes) a second, per source, on average ...
CONTROL_BURST = 100  # ... with this many at once
OWN, PLAYER = 0, 1  # who played a note, in the events


class ControlError(ImproviserError):
    """A control the face refuses: unknown, malformed, out of range, or over the rate."""


def _number(value: Any, lo: float, hi: float, what: str, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ControlError(f"{what} takes a number, {lo:g}..{hi:g} (got {value!r})")
    if not lo <= value <= hi:
        raise ControlError(f"{what} must be {lo:g}..{hi:g} (got {value:g})")
    if integer:
        if value != int(value):
            raise ControlError(f"{what} takes a whole number, {lo:g}..{hi:g} (got {value:g})")
        return int(value)
    return float(value)


def check_control(name: str, value: Any = None) -> Any:
    """The value a named control takes, checked (ControlError if not): what the listening part then applies."""
    from ..model.generator import MAX_STABILITY, parse_key
    from .listen import MODES

    if name == "temperature":
        return _number(value, 0.0, 5.0, "temperature")
    if name == "stability":
        return _number(value, 1, MAX_STABILITY, "stability", integer=True)
    if name == "tempo":
        return _number(value, 20.0, 400.0, "tempo")
    if name == "key_hold":
        return _number(value, 0.0, 20.0, "key_hold")
    if name == "key":
        if not isinstance(value, str):
            raise ControlError(f"key takes a name such as 'D minor', or auto (got {value!r})")
        try:
            parse_key(value)
        except ImproviserError:
            raise ControlError(f"key {value!r} is not a key; give auto, or a tonic and a mode such as "
                               "'D minor'") from None
        return value
    if name == "mode":
        if value not in MODES:
            raise ControlError(f"mode takes respond or accompany (got {value!r})")
        return value
    if name == "panic":
        return None
    raise ControlError(f"unknown control {name!r}: temperature, stability, tempo, key, key_hold, mode or panic")


@dataclass
class SessionFile:
    """A session file this run wrote, as the face offers it."""

    index: int  # 0, 1, ... in the order written (the page's links name it)
    path: Path
    seconds: float
    notes: int

    def public(self) -> dict:
        return {"index": self.index, "name": self.path.name, "seconds": round(self.seconds, 2), "notes": self.notes}


class _Bucket:
    """A token bucket: ``take()`` is False when a source sends faster than CONTROL_RATE."""

    def __init__(self, now: float):
        self.tokens, self.at = float(CONTROL_BURST), now

    def take(self, now: float) -> bool:
        self.tokens = min(float(CONTROL_BURST), self.tokens + (now - self.at) * CONTROL_RATE)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Face:
    """The hub between the engine and the web page and OSC: events out, controls in (see the module docstring).

    listener, listening: the input side and the listening part (``listen``); with no MIDI input they are made
    without a port, so the page's keyboard and controls still reach the improviser.
    generator, bpm: what it plays and at what tempo, for the state before the first step.
    """

    # An engine sink (``LiveEngine(sinks=...)``) that is not given the player's notes forwarded by --thru: it hears
    # them from the listening part already.
    takes_thru = False

    def __init__(self, listener, listening, generator, bpm: float | None = None):
        self.listener = listener
        self.listening = listening
        self.generator = generator
        self.bpm = bpm
        self.dropped = 0  # events that did not fit the queue (a pump that fell behind)
        self.refused = 0  # controls refused: malformed, out of range, over the rate
        self.sessions: collections.deque = collections.deque(maxlen=SESSIONS_SHOWN)
        self._n_sessions = 0
        self._events: queue.Queue = queue.Queue(EVENTS_QUEUED)
        self._settings: dict = {}
        self._seen: tuple = ()
        self._subscribers: list[Callable[[list, dict | None], None]] = []
        self._lock = threading.Lock()  # refused, _buckets
        self._buckets: dict[Any, _Bucket] = {}
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None
        self._last: dict | None = None  # the state last handed out (pump thread)
        listening.watch = self

    # ---- from the engine (sender and producer threads): never block -----------------------------------------

    def send(self, msg: mido.Message, t: float) -> None:
        """An engine sink: the improviser's own messages, at their send time (sender thread)."""
        if msg.type in ("note_on", "note_off"):
            self._put((t, OWN, msg.note, msg.velocity if msg.type == "note_on" else 0, msg.channel))

    def heard(self, t: float, msg: mido.Message) -> None:
        """The listening part heard a note of the player's (producer thread)."""
        if msg.type in ("note_on", "note_off"):
            self._put((t, PLAYER, msg.note, msg.velocity if msg.type == "note_on" else 0, msg.channel))

    def _put(self, event: tuple) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def stepped(self, k: int) -> None:
        """After the listening part heard step k (producer thread): the settings, swapped in when one changed."""
        listening = self.listening
        gen, engine = listening.generator, listening.engine
        step = getattr(engine.timing, "step_seconds", None)
        seen = (round(step, 4) if step else None, getattr(listening.tempo, "line", None), gen.temperature,
                gen.note_stability, gen.key(), gen.pinned_key, gen.key_hold, listening.mode,
                engine.conductor.stats.late_steps)
        if seen != self._seen:
            self._seen = seen
            self._settings = self._read_settings()

    def _read_settings(self) -> dict:
        from ..music.analysis import key_name

        listening, gen = self.listening, self.generator
        engine = listening.engine
        if engine is None:  # (not playing yet)
            step = 60.0 / self.bpm / gen.cfg.steps_per_beat if self.bpm else None
        else:
            step = getattr(engine.timing, "step_seconds", None)
        key = gen.key()
        return {
            "tempo": round(60.0 / step / gen.cfg.steps_per_beat, 2) if step else None,
            "follows_clock": engine.follows_clock if engine is not None else not self.bpm,
            # --bpm auto: the tempo is the player's, and the line said when it was taken (None: not yet)
            "follows_player": listening.tempo is not None,
            "tempo_taken": listening.tempo.line if listening.tempo is not None else None,
            "temperature": round(gen.temperature, 3), "stability": gen.note_stability,
            "key": key_name(*key) if key is not None else None,
            "key_setting": key_name(*gen.pinned_key) if gen.pinned_key is not None else "auto",
            "key_hold": round(gen.key_hold, 3), "mode": listening.mode,
            "late_steps": engine.conductor.stats.late_steps if engine is not None else 0,
        }

    def session_written(self, path: Path, session) -> None:
        """A session file was written (the session writer's thread, or the command at the end)."""
        self.sessions.append(SessionFile(self._n_sessions, Path(path), session.length, len(session.notes())))
        self._n_sessions += 1

    # ---- read by the web server and OSC (any thread) --------------------------------------------------------

    def state(self) -> dict:
        """What ``GET /state`` answers: the settings as last heard, the counts, the sessions."""
        settings = self._settings
        if not settings:  # (before the first step: as it starts)
            settings = self._read_settings()
        return {**settings, "dropped": self.dropped, "refused": self.refused + self.listening.refused,
                "sessions": [s.public() for s in list(self.sessions)]}

    def session(self, index: int) -> SessionFile | None:
        """One of this run's session files (None: not one of them)."""
        return next((s for s in list(self.sessions) if s.index == index), None)

    def subscribe(self, deliver: Callable[[list, dict | None], None]) -> None:
        """``deliver(events, state)`` on the pump thread every PUMP_SECONDS that something happened: the note
        events (t, OWN or PLAYER, pitch, velocity (0: off), channel) since the last call, and the state when it
        changed (else None). It must not block. Subscribe before ``start``."""
        self._subscribers.append(deliver)

    # ---- controls in (any thread but the engine's) ----------------------------------------------------------

    def control(self, name: str, value: Any = None, source: Any = None) -> Any:
        """Check a control and hand it to the listening part; returns the value taken. ControlError (counted in
        ``refused``) if it is malformed, out of range, or ``source`` sends too fast; the engine never sees it."""
        self._admit(source)
        try:
            value = check_control(name, value)
        except ControlError:
            self.refuse()
            raise
        if not self.listener.control(name, value):
            self.refuse()
            raise ControlError("the input queue is full; try again")
        return value

    def note(self, pitch: Any, velocity: Any, source: Any = None) -> None:
        """A note of the player's from the page's keyboard (velocity 0: its end): exactly as a MIDI keyboard's,
        through the input's own callback."""
        self._admit(source)
        try:
            p = _number(pitch, 0, 127, "note", integer=True)
            v = _number(velocity, 0, 127, "velocity", integer=True)
        except ControlError:
            self.refuse()
            raise
        msg = (mido.Message("note_on", note=p, velocity=v) if v else mido.Message("note_off", note=p))
        self.listener.on_message(msg)

    def _admit(self, source: Any) -> None:
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(source)
            if bucket is None:
                if len(self._buckets) > 1000:  # sources come and go (pages reload): forget the old ones
                    self._buckets.clear()
                bucket = self._buckets[source] = _Bucket(now)
            if bucket.take(now):
                return
            self.refused += 1
        raise ControlError(f"too many controls: at most {CONTROL_RATE:g} a second")

    def refuse(self) -> None:
        """Count a control refused before it reached ``control`` (malformed)."""
        with self._lock:
            self.refused += 1

    # ---- the pump -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._pump = threading.Thread(target=self._loop, name="improviser-face", daemon=True)
        self._pump.start()

    def close(self) -> None:
        self._stop.set()
        if self._pump is not None:
            self._pump.join()
            self._pump = None
            self.pump_once()  # the last notes (the stop path's note-offs)

    def _loop(self) -> None:
        while not self._stop.wait(PUMP_SECONDS):
            self.pump_once()

    def pump_once(self) -> None:
        """Hand out what happened since the last time (the pump thread; a test may call it)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        state = self.state()
        changed = state if state != self._last else None
        self._last = state
        if not events and changed is None:
            return
        for deliver in self._subscribers:
            try:
                deliver(events, changed)
            except Exception:  # noqa: BLE001 -- a face that fails must not stop the others, nor the music
                pass
