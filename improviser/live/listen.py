"""Listening: a player's MIDI input primes the model, call and response or accompaniment, live CC controls.

The data path, one direction:

- ``InputListener.on_message`` runs on the MIDI system's thread. It only reads
  the clock (or takes the time the port stamped the message with: the JACK
  backend gives each its frame's time) and sorts: notes and control changes go
  into a bounded queue (never blocks; overflow is counted), MIDI clock/start/
  stop/continue/song position go to the ``ClockFollower`` (``sync.py``), anything
  else (sysex, pitch bend, aftertouch, ...) is counted and dropped.
- ``Listening`` is the engine's listening part (``live.LiveEngine(listening=...)``).
  On the producer thread, just before a step is computed, ``before_step`` drains
  the queue: the notes heard become a ``Frame`` for that step (struck notes are
  onsets, held notes keep sounding across steps) fed to ``generator.step(heard=...)``,
  so every heard note moves the hidden state; control changes set temperature,
  note stability, tempo or reset everything (panic). Controls from the web page and OSC
  (``InputListener.control``: key, key hold and mode too) come through the same queue, in
  order with the notes, and are applied by the same ``Listening.apply``.
- On the internal clock the producer waits until half a step before a step's
  deadline before draining, so a note is heard by the step nearest to it (the
  quantisation) and the model still has half a step to run.
- On the sending thread ``vetoes`` checks two counters the input thread bumps: a
  panic or (in respond mode) a new note from the player since the step was computed
  turns the step into note-offs, so both take effect within one step; and
  ``record_player`` puts the player's notes on the ``player`` track with their
  arrival times.

Modes: ``respond`` listens while the player plays and answers after
``respond_after`` beats without a note from the player (and without a held
note), continuing from the primed state; ``accompany`` always plays.

``--bpm auto`` (``tempo``, a ``tempo.PlayerTempo``): the tempo is the player's. Responding, the model does
not step while a phrase is played (the engine sends silent steps); when the phrase has ended (``respond_after``
beats of its own tempo without a note) the phrase's grid is taken, the model hears the phrase on it, and the
engine's grid (``TempoGrid.retime``) moves so the answer starts on a beat of that grid continued. Accompanying,
it plays at the starting tempo until it locks onto the player's beat, then follows it step by step. Tempo
controls are then ignored (and counted), as under a MIDI clock.

Shared state, and who owns it:
- the input queue: input thread -> producer (``queue.Queue``, bounded);
- ``InputListener.panics``, ``note_ons``, ``counts``: written by the input thread only
  (one writer; the others read a plain int, a single atomic load under the GIL);
- the player's notes to record: producer -> sender (a ``collections.deque``, whose
  append and popleft are atomic);
- everything else in ``Listening`` (heard notes, respond state, the generator's controls):
  the producer thread only. ``reactions`` and ``controls_applied`` are bounded.
- ``Listening.watch`` (the web page and OSC, ``face.Face``): set before the run, then called on the
  producer thread with each heard message and after each step is heard; it must not block.
"""

from __future__ import annotations

import collections
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mido
import numpy as np

from ..errors import ImproviserError
from ..model.generator import MAX_STABILITY
from ..music.encoding import N_MIDI, Frame
from .recorder import PLAYER

log = logging.getLogger(__name__)

QUEUE_SIZE = 20_000  # heard notes and CCs waiting for the producer: seconds of a flood
MODES = ("respond", "accompany")

# Default live controls: controller numbers on any channel. Knobs most keyboards send by default:
# 74 (brightness / filter cutoff) and 71 (resonance), 76 (vibrato rate) for tempo; 119 is an
# undefined controller a spare button can be set to (value >= 64 presses it).
DEFAULT_CC = {"temperature": 74, "stability": 71, "tempo": 76, "panic": 119}
TEMPERATURE_RANGE = (0.0, 2.0)  # CC 0..127 -> temperature 0..2
TEMPO_RANGE = (40.0, 240.0)  # CC 0..127 -> bpm 40..240
STABILITY_MAX = 16  # CC 0..127 -> note stability 1..16 steps

MUSIC = frozenset(("note_on", "note_off", "control_change"))
CONTROLS = ("temperature", "stability", "tempo", "panic", "key", "key_hold", "mode")  # what ``control`` takes


@dataclass(frozen=True)
class Control:
    """A control by name, from the web page or OSC (``InputListener.control``): the value is already checked."""

    name: str
    value: Any = None
CLOCK = frozenset(("clock", "start", "stop", "continue", "songpos"))


def parse_cc_map(specs: list[str] | None) -> dict[str, int]:
    """The control map: DEFAULT_CC with ``NAME=NUMBER`` overrides (e.g. ``temperature=21``)."""
    cc = dict(DEFAULT_CC)
    for spec in specs or []:
        name, sep, number = spec.partition("=")
        name = name.strip().lower()
        if not sep or name not in DEFAULT_CC or not number.strip().isdigit():
            raise ImproviserError(f"--cc {spec!r}: write NAME=NUMBER with NAME one of {', '.join(DEFAULT_CC)} "
                                  "and NUMBER a controller 0..119, e.g. --cc temperature=74")
        n = int(number)
        if not 0 <= n <= 119:  # 120..127 are channel mode messages (all notes off, ...), not controls
            raise ImproviserError(f"--cc {spec!r}: the controller number must be 0..119")
        cc[name] = n
    numbers = list(cc.values())
    if len(set(numbers)) != len(numbers):
        raise ImproviserError(f"--cc: two controls share a controller number ({cc}); give each its own")
    return cc


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ImproviserError(f"unknown --mode {mode!r}; choose respond or accompany")
    return mode


@dataclass
class InputCounts:
    """What the input thread saw. ``ignored``: not music (sysex, pitch bend, ...); ``overflow``: dropped, queue full."""

    notes: int = 0
    controls: int = 0
    clock: int = 0
    ignored: int = 0
    overflow: int = 0


class InputListener:
    """The input side: a callback that timestamps and sorts, and a queue the producer drains.

    on_clock(type, msg, t): where clock messages go (None: they are ignored and counted).
    panic_cc: the panic controller; a press bumps ``panics`` at once, so the sender can react
        even before the producer drains the queue.
    """

    def __init__(self, on_clock: Callable[[str, Any, float], None] | None = None, panic_cc: int | None = None,
                 maxsize: int = QUEUE_SIZE, now: Callable[[], float] = time.monotonic):
        self.on_clock = on_clock
        self.panic_cc = panic_cc
        self.now = now
        self.counts = InputCounts()
        self.panics = 0  # panic presses so far
        self.note_ons = 0  # note-ons so far
        self.port: Any = None
        # thru(msg, t): where the player's notes and controls are forwarded at once, t when they were heard
        # (the engine's ``forward`` with --thru), set before the input opens and then only read; its
        # failures are counted.
        self.thru: Callable[[mido.Message, float], None] | None = None
        self.thru_failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._held: tuple[float, mido.Message] | None = None  # drained too early; the producer's only

    def on_message(self, msg: mido.Message, t: float | None = None) -> None:
        """The MIDI thread's callback: only timestamp, sort and enqueue; never blocks.

        t: when the message arrived, if the port knows (the JACK backend: its frame's time); else now.
        """
        if t is None:
            t = self.now()
        kind = msg.type
        if kind in MUSIC:
            if self.thru is not None:
                try:
                    self.thru(msg, t)  # first: the player hears themselves before anything else is done
                except Exception:  # noqa: BLE001 -- a port that went away must not stop the listening
                    self.thru_failed += 1
            if kind == "control_change" and msg.control == self.panic_cc and msg.value >= 64:
                self.panics += 1  # first: a panic works even when the queue is full
            try:
                self._queue.put_nowait((t, msg))
            except queue.Full:
                self.counts.overflow += 1
                return
            if kind == "control_change":
                self.counts.controls += 1
            else:
                self.counts.notes += 1
                if kind == "note_on" and msg.velocity > 0:
                    self.note_ons += 1
        elif kind in CLOCK and self.on_clock is not None:
            self.counts.clock += 1
            self.on_clock(kind, msg, t)
        else:
            self.counts.ignored += 1

    def control(self, name: str, value: Any = None, t: float | None = None) -> bool:
        """A named control (``CONTROLS``, its value checked by the caller) into the queue the notes take, so the
        producer applies it in order with them (any thread; never blocks). False: the queue was full."""
        if name not in CONTROLS:
            raise ValueError(f"unknown control {name!r}")
        if name == "panic":
            self.panics += 1  # as a panic controller's press: the sender silences the next step at once
        try:
            self._queue.put_nowait((self.now() if t is None else t, Control(name, value)))
        except queue.Full:
            self.counts.overflow += 1
            return False
        self.counts.controls += 1
        return True

    def drain(self, until: float | None = None) -> list[tuple[float, mido.Message]]:
        """Everything queued so far that arrived by ``until`` (None: all), oldest first (producer thread).

        A message that arrived later is kept for the next drain.
        """
        out = []
        while True:
            if self._held is not None:
                got, self._held = self._held, None
            else:
                try:
                    got = self._queue.get_nowait()
                except queue.Empty:
                    return out
            if until is not None and got[0] > until:
                self._held = got
                return out
            out.append(got)

    def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None


class HeardNotes:
    """Quantises the player's notes to steps: ``feed`` messages as they come, ``frame()`` once per step.

    A note struck during the step is an onset (even if already released); a note still held sounds
    on in the following steps until its note-off. Channels are kept apart for the bookkeeping.
    """

    def __init__(self):
        self.held = np.zeros((16, N_MIDI), bool)
        self.struck = np.zeros(N_MIDI, bool)
        self.loudest = 0  # the highest velocity struck this step

    def feed(self, msg: mido.Message) -> None:
        if msg.type == "note_on" and msg.velocity > 0:
            self.struck[msg.note] = True
            self.loudest = max(self.loudest, msg.velocity)
            self.held[msg.channel, msg.note] = True
        elif msg.type in ("note_on", "note_off"):  # note_on with velocity 0 is a note-off
            self.held[msg.channel, msg.note] = False

    def frame(self) -> Frame:
        """This step's heard frame; starts the next step."""
        onset, loudest = self.struck, self.loudest
        self.struck = np.zeros(N_MIDI, bool)
        self.loudest = 0
        if not onset.any():
            return Frame(onset, self.held.any(axis=0))
        return Frame(onset, onset | self.held.any(axis=0), loudest)

    def clear(self) -> None:
        self.held[:] = False
        self.struck[:] = False
        self.loudest = 0


@dataclass
class Mark:
    """The input's counters when a step was computed: what the sender compares against."""

    panics: int
    note_ons: int


STEPS_PER_BEAT_FALLBACK = 4  # (--bpm auto, no tempo taken yet: a beat of the engine's grid)
LISTEN_MARGIN = 0.005  # s: the model's time for a step, at the least, between listening and handing it over
REACTIONS_KEPT = 10_000  # (arrival, step) of the most recent heard notes, for the listening benchmark
CONTROLS_KEPT = 1_000  # the most recent controls applied


class Listening:
    """The engine's listening part: hears ``listener`` before each step, and can veto a step at send time.

    mode: respond or accompany. respond_after: beats without the player before an answer.
    cc: the control map (``parse_cc_map``). primed: the generator has listened to a primer already,
        so respond mode may answer before the player has played.
    just_in_time: wait to hear until half a step before each step is due (default: on the
        internal grid with a real clock, or with an inline conductor on a virtual clock).
    """

    def __init__(self, listener: InputListener, mode: str = "respond", respond_after: float = 2.0,
                 cc: dict[str, int] | None = None, primed: bool = False, just_in_time: bool | None = None,
                 tempo: Any = None):
        self.listener = listener
        self.mode = check_mode(mode)
        self.respond_after = respond_after
        self.cc = dict(cc or DEFAULT_CC)
        self.heard = HeardNotes()
        self.heard_anything = primed
        self.last_heard_step = -10**9  # the last producer step in which the player was heard
        self._echo: np.ndarray | None = None  # the player's last sounding notes, while waiting (older models)
        self.reactions: collections.deque = collections.deque(maxlen=REACTIONS_KEPT)  # (arrival, step fed into)
        self.controls_applied: collections.deque = collections.deque(maxlen=CONTROLS_KEPT)  # (step, name, value)
        self.tempo_ignored = 0  # tempo controls received while following a MIDI clock or the player (--bpm auto)
        self._to_record: collections.deque = collections.deque()  # producer -> sender: the player's notes
        self._just_in_time = just_in_time
        self.engine = None
        self.refused = 0  # controls that could not be applied (a key this checkpoint cannot hold, ...)
        # Told of each heard message (heard(t, msg)) and of each step heard (stepped(k)), on the producer
        # thread: the web page and OSC (``face.Face``). Set before the run.
        self.watch: Any = None
        # --bpm auto: a ``tempo.PlayerTempo`` that takes the tempo from the player and moves the grid to it.
        # Responding, the model then waits while a phrase is played and hears it when it ends, on its grid.
        self.tempo = tempo
        self._answering = primed  # (--bpm auto, respond) playing an answer, or (primed) playing before any phrase

    def attach(self, engine) -> None:
        """Called by the engine that holds this part."""
        from .clock import MonotonicClock, TempoGrid

        self.engine = engine
        self.generator = engine.generator
        if self.tempo is not None and not hasattr(engine.timing, "retime"):
            raise ImproviserError("--bpm auto takes the tempo from the player; it cannot also follow a MIDI clock")
        self.respond_steps = max(1, round(self.respond_after * self.generator.cfg.steps_per_beat))
        if self._just_in_time is None:
            # On a virtual clock with a producer thread (tests) the producer must not sleep: that would
            # move the sender's time too. Inline, it may: the sender has played the step before.
            self._just_in_time = isinstance(engine.timing, TempoGrid) and (
                isinstance(engine.clock, MonotonicClock) or engine.conductor.inline)

    # ---- producer thread -----------------------------------------------------------------------

    def before_step(self, k: int) -> tuple[Frame, bool, Mark]:
        """Hear what the player played for step k; returns (heard frame, play or listen, the counters)."""
        until = None
        if self._just_in_time:
            until = self._wait_to_listen(k)
        listener = self.listener
        mark = Mark(listener.panics, listener.note_ons)  # before draining: nothing missed
        watch = self.watch
        for t, msg in listener.drain(until):
            if isinstance(msg, Control):
                self.apply(k, msg.name, msg.value)
            elif msg.type == "control_change":
                self._control(k, msg)
            else:
                self.heard.feed(msg)
                if self.tempo is not None:
                    self.tempo.feed(t, msg)
                self._to_record.append((t, msg))
                if msg.type == "note_on" and msg.velocity > 0:
                    self.reactions.append((t, k))
                if watch is not None:
                    watch.heard(t, msg)
        heard = self.heard.frame()
        if self.tempo is not None:
            heard, playing = self._by_ear(k, heard, until)
            if watch is not None:
                watch.stepped(k)
            return heard, playing, mark
        if heard.sound.any():
            self.last_heard_step = k
            self.heard_anything = True
            self._echo = heard.sound
        playing = self.mode == "accompany" or (
            self.heard_anything and k - self.last_heard_step > self.respond_steps)
        if (not playing and not heard.sound.any() and self._echo is not None
                and not self.generator.cfg.key_memory):
            # A model without a key memory forgets the key it just heard within a few steps of
            # silence (steps of pure silence are all but absent from Bach): while it waits to
            # answer, the player's last notes ring on in its ears, like a sustain pedal.
            heard = Frame(np.zeros(N_MIDI, bool), self._echo)
        if playing:
            self._echo = None
        if watch is not None:
            watch.stepped(k)
        return heard, playing, mark

    def _by_ear(self, k: int, heard: Frame, until: float | None) -> tuple[Frame, bool | None]:
        """--bpm auto: (heard, play) for step k; play None: the model waits (a phrase is being played)."""
        engine, tempo = self.engine, self.tempo
        now = until if until is not None else engine.clock.now()
        if heard.sound.any():
            self.last_heard_step = k
            self.heard_anything = True
        if self.mode == "accompany":
            tempo.follow(k, now, engine.timing, self.generator, engine.lead)
            return heard, True
        if heard.onset.any() or tempo.sounding:  # a phrase: listen to it whole, then answer on its grid
            self._answering = False
            return heard, None
        if self._answering:
            return heard, True
        if not tempo.notes:
            return heard, None  # nothing played yet: wait
        est = tempo.estimate()
        beat = 60.0 / est.bpm if est is not None else STEPS_PER_BEAT_FALLBACK * engine.timing.step_seconds
        if now - tempo.last_event() < self.respond_after * beat:
            return heard, None
        tempo.answer(k, now, engine.timing, self.generator, engine.lead)
        self._answering = True
        return Frame.silent(), None  # step k stays silent; the answer begins with the next, on a beat

    def _wait_to_listen(self, k: int) -> float:
        """Sleep until half a step before step k is due: what is heard by then belongs to step k - 1.

        (Earlier if the port's lead leaves less than LISTEN_MARGIN of the half step for the model.)
        """
        timing = self.engine.timing
        until = timing.deadline(k) - max(timing.step_seconds / 2, self.engine.conductor.lead + LISTEN_MARGIN)
        self.engine.conductor.wait_until(until, spin=0.0)  # no spin: half a step early is early enough
        return until

    def _control(self, k: int, msg: mido.Message) -> None:
        """A control change: the control mapped to it, at the value its 0..127 stands for (producer thread)."""
        x = msg.value / 127.0
        if msg.control == self.cc["temperature"]:
            lo, hi = TEMPERATURE_RANGE
            self.apply(k, "temperature", lo + x * (hi - lo))
        elif msg.control == self.cc["stability"]:
            self.apply(k, "stability", 1 + round(x * (min(STABILITY_MAX, MAX_STABILITY) - 1)))
        elif msg.control == self.cc["tempo"]:
            lo, hi = TEMPO_RANGE
            self.apply(k, "tempo", lo + x * (hi - lo))
        elif msg.control == self.cc["panic"] and msg.value >= 64:
            self.apply(k, "panic", 1.0)

    def apply(self, k: int, name: str, value: Any) -> None:
        """Apply one control (producer thread: the generator is only touched here). A value it cannot take is
        counted in ``refused`` and changes nothing; the music goes on."""
        try:
            if name == "temperature":
                self.generator.set_controls(temperature=value)
            elif name == "stability":
                self.generator.set_controls(note_stability=value)
            elif name == "key":
                self.generator.set_controls(key=value)
            elif name == "key_hold":
                self.generator.set_controls(key_hold=value)
            elif name == "mode":
                self.mode = check_mode(value)
                if self.tempo is not None:  # (the other mode hears the tempo its own way: from the next notes)
                    self.tempo.reset()
                    self._answering = False
            elif name == "tempo":
                if self.tempo is not None or not self.engine.set_bpm(value):
                    self.tempo_ignored += 1  # the DAW's clock sets the tempo (or the player's playing)
                    return
            elif name == "panic":
                self.generator.reset()  # forget the phrase and everything played: start afresh
                self.heard.clear()
                self.heard_anything = False
                self.last_heard_step = -10**9
                self._echo = None
                if self.tempo is not None:
                    self.tempo.reset()
                    self._answering = False
            else:
                return
        except (ImproviserError, ValueError, TypeError):
            self.refused += 1
            return
        self.controls_applied.append((k, name, value))

    # ---- sender thread -------------------------------------------------------------------------

    def vetoes(self, mark: Mark) -> bool:
        """A panic, or (respond mode) the player starting again, since the step was computed: silence it."""
        listener = self.listener
        return listener.panics > mark.panics or (self.mode == "respond" and listener.note_ons > mark.note_ons)

    def record_player(self, recorder, before: float | None = None) -> list:
        """Record the player's notes drained so far; returns those at or after ``before`` unrecorded."""
        later = []
        while self._to_record:
            when, msg = self._to_record.popleft()
            if before is not None and when >= before:
                later.append((when, msg))
            else:
                recorder.record(msg, when, PLAYER)
        return later

    def flush(self, recorder) -> None:
        """The stop path (the producer has ended): what it drained and what is still queued are the last notes."""
        for t, msg in self.listener.drain():
            if not isinstance(msg, Control) and msg.type != "control_change":
                self._to_record.append((t, msg))
        self.record_player(recorder)


def listening_summary(listener: InputListener) -> str:
    c = listener.counts
    return (f"heard {c.notes} note messages, {c.controls} control changes, {c.clock} clock messages; "
            f"ignored {c.ignored} other messages; {c.overflow} dropped (input queue full)")


def start_listening(listener: InputListener, api: str | None, name: str, jack_backend: str | None = None) -> str:
    """Open the input port (``virtual`` or a name to match) with the listener's callback; returns its name."""
    from ..ports.midi import open_input

    listener.port = open_input(listener.on_message, api, name, jack_backend)
    return listener.port.name
