"""Playing live: one engine composed of parts, data flowing one way.

    input ──► listening part ──┐ (optional: drains the input, applies controls, says when to play)
                               ▼
    checkpoint ─► StreamingGenerator ──(producer thread, ahead)──► Conductor ◄── timing source
                                                                      │ (sender thread, on time)
                                                                      ▼
                                         frame → messages ──► sinks: MIDI port, SessionRecorder

``LiveEngine`` holds the parts; none subclasses another or rewrites its loop:

- the *timing source* (``clock.TempoGrid`` at ``bpm``, or ``sync.MidiClockSync`` following a
  DAW) says when each step is due; the ``Conductor`` runs the producer and the sender;
- the optional *listening part* (``listen.Listening``) is asked, on the producer thread, for
  the player's notes of the step and whether to play; on the sender thread it may veto a
  step (a panic, or the player starting again in respond mode) and hands the player's
  notes to the recorder;
- the *sinks*: the MIDI port (any ``OutputPort``), the session recorder and any others
  (``sinks=``, e.g. a synth), which get the same messages with the same send time, so the
  files hold exactly what was played and heard.

On the sending thread each frame becomes messages against what actually sounds,
so a skipped step never leaves a note on. A port with a ``lead`` (the JACK backend, which
writes each message on its own sample) is handed a step's messages that long before its
deadline, with the deadline; the recorder and the sinks still get the deadline as the
send time, and the sinks (which sound at once) get the messages when it comes.

Every ``session_seconds`` the recorder starts a new session and the finished one is
handed to ``on_session`` on a writer thread, so a file write never delays a note.

Every way out of ``run`` (its end, ``stop()`` from Ctrl-C or SIGTERM, an
exception) takes the same path: a note-off for every sounding note, CC 123,
a short wait so the port delivers them, then the last (partial) session.

Shared state, and who owns it (beyond the conductor's, see ``clock``):
- the generator: touched by the producer thread only (controls are applied there);
- ``_sounding``: the sender thread only (and the stop path, after the producer has ended);
- the recorder: the sender thread, then the stop path;
- finished sessions: handed to the writer thread through a queue; once written they are
  dropped (only the most recent few are kept, for the caller), so memory stays flat.

Process-wide settings (the switch interval, BLAS threads) are not changed here: the
entry point does that once (``realtime_process``).

``record`` and ``play`` from the CLI run this engine in a worker process (``split``): its port
is then a ``ports.remote.RemoteOutput`` handing each message over a socket, with its deadline,
``lead`` ahead, to a real-time process that owns the MIDI ports and sends it on time; a
``beat`` after each step promises the next, and each session's start is journalled there, so
that process can silence the port and keep the session if this one dies.

``record`` and ``play`` are the two services the CLI offers; ``accompany`` runs the same
engine on a virtual clock against a melody file.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import logging
import math
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import mido
import numpy as np

from ..model.generator import StreamingGenerator
from ..music.encoding import N_MIDI, Frame, Grid
from ..music.voices import VoiceChannels
from ..ports.midi import OutputPort
from .clock import START_DELAY, Clock, Conductor, ConductorStats, MonotonicClock, TempoGrid, TimingSource, VirtualClock
from .recorder import PLAYER, Session, SessionRecorder, session_path

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # s; how long another Python thread may hold the GIL while the sender waits for it


def frame_messages(sounding: np.ndarray, frame: Frame, channel: int = 0) -> list[mido.Message]:
    """The messages that turn ``sounding`` (bool (128,), what sounds now) into ``frame``.

    Note-offs first (notes that stop, or are struck again), then note-ons (struck
    notes, and any note the frame holds that does not sound, e.g. after a skipped step).
    """
    off = sounding & (~frame.sound | frame.onset)
    on = frame.onset | (frame.sound & ~sounding)
    msgs = [mido.Message("note_off", channel=channel, note=int(p), velocity=0) for p in np.flatnonzero(off)]
    msgs += [mido.Message("note_on", channel=channel, note=int(p), velocity=int(frame.velocity))
             for p in np.flatnonzero(on)]
    return msgs


SESSIONS_KEPT = 8  # finished sessions a run keeps for its caller; older ones are released once written


@dataclass
class LiveResult:
    """What a live run did."""

    stats: ConductorStats
    # The most recent sessions, in order (at most SESSIONS_KEPT); the last one may be partial.
    sessions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=SESSIONS_KEPT))
    n_sessions: int = 0  # every session of the run, kept or not
    paths: list[Path] = field(default_factory=list)  # files written, in order (the last ones, for play)
    n_written: int = 0  # files written
    interrupted: bool = False  # stopped before its planned end
    # Messages a port that places them in time wrote after their time (None: the port sends at once).
    port_late: int | None = None
    xruns: int | None = None  # cycles JACK reported late while playing (None: a port that does not count them)
    file_bpm: float | None = None  # the tempo ``record`` wrote its file at (--bpm auto: the player's)

    @property
    def n_notes(self) -> int:
        return sum(len(s.notes()) for s in self.sessions)


@dataclass
class _Step:
    """What the producer hands the sender for one step."""

    frame: Frame
    mark: Any = None  # the listening part's note of the input when the step was computed


class LiveEngine:
    """Plays a StreamingGenerator into ``port`` (None: no port) and records what it sends.

    bpm: the tempo of the internal grid (and of the session files).
    timing: where step times come from; default a ``TempoGrid`` at ``bpm`` on ``clock``.
    listening: a ``listen.Listening`` part (a player's input), or None to play alone.
    lookahead: steps the model may run ahead (0: inline, for an offline run on a virtual clock).
    sinks: more places every message goes, after the port, with its send time: objects with
        ``send(msg, t)`` (a synth, a logger). Called on the sender thread -- and, with ``thru``, on
        the MIDI input's thread too: they must not block, and must take calls from both.
    program: a General MIDI program (0..127) sent as a program change on ``channel`` at the start
        (and written in the session files); None sends none.
    voices: its notes as four voices, soprano to bass on channels 1-4 (``channel`` is not used), and
        the session files with a track per voice.
    thru: forward every note and control change the player plays (``listening``) to the port and
        the sinks at once, on the player's own channel, from the input's thread.
    session_seconds: cut a new session every this many seconds (rounded to whole
        steps); None: one session for the whole run.
    on_session(session): called (on a background thread) with each finished
        session except the last, which ``run`` returns.
    on_session_start(spec): called (on the sender thread) as each session begins, with what a
        ``SessionRecorder`` needs to record it (``index``, ``start``, ``voices``, ``meter``, ``bar_time``,
        ``bar_seconds``): the services pass it on to a port in another process (``split``).
    warn(text): where warnings go (late steps); default: the logging module.
    """

    def __init__(self, generator: StreamingGenerator, bpm: float, port: OutputPort | None = None,
                 clock: Clock | None = None, session_seconds: float | None = None,
                 on_session: Callable[[Session], None] | None = None,
                 warn: Callable[[str], None] | None = None, channel: int = 0,
                 listening: Any = None, timing: TimingSource | None = None, lookahead: int = 2,
                 sinks: list | None = None, program: int | None = None, thru: bool = False,
                 voices: bool = False, on_session_start: Callable[[dict], None] | None = None):
        self.generator = generator
        self.bpm = float(bpm)
        self.port = port
        self.clock = clock or getattr(timing, "clock", None) or MonotonicClock()
        self.channel = channel
        self.warn = warn or log.warning
        self.step_seconds = 60.0 / self.bpm / generator.cfg.steps_per_beat
        self.steps_per_session = (None if session_seconds is None
                                  else max(1, round(session_seconds / self.step_seconds)))
        self.on_session = on_session
        self.on_session_start = on_session_start
        self._asked_step = 0.0  # the step of the last tempo asked for (set_bpm, any thread)
        self._session_spec: dict = {}  # what each session's recorder is made with (run, then the sender)
        self.timing = timing or TempoGrid(self.step_seconds, self.clock)
        self.listening = listening
        self.sinks = list(sinks or [])
        self.program = program
        self.voices = VoiceChannels() if voices else None  # the sender's only
        # A port that places messages in time is handed them this long ahead (0: at their deadline).
        self.lead = float(getattr(port, "lead", 0.0))
        self.conductor = Conductor(self.timing, self._produce, self._prepare, self._perform, clock=self.clock,
                                   lookahead=lookahead, on_late=self._late, on_pause=self.pause, lead=self.lead)
        self.recorder: SessionRecorder | None = None
        self._sounding = np.zeros(N_MIDI, bool)  # what the improviser's notes sound at the port now (sender)
        self._handed_until = -math.inf  # the latest step time handed to the port (sender; with a lead, ahead)
        self._writer: _SessionWriter | None = None
        if listening is not None:
            listening.attach(self)
            if thru:
                listening.listener.thru = self.forward

    @property
    def follows_clock(self) -> bool:
        """True when the steps follow someone else's tempo (a MIDI clock), not ``bpm``."""
        return not isinstance(self.timing, TempoGrid)

    def stop(self) -> None:
        """End ``run`` soon and cleanly (from a signal handler or another thread)."""
        self.conductor.stop()

    def set_bpm(self, bpm: float) -> bool:
        """Change tempo while playing (any thread): the next step keeps its time, the ones after it follow.

        False (and nothing changes) when the steps follow a MIDI clock. Sessions stay a whole
        number of steps long, and their files carry the starting tempo (note times in them are
        still the true ones).
        """
        step = 60.0 / float(bpm) / self.generator.cfg.steps_per_beat
        self._asked_step = step  # (a plain value: the sender reads it for its promise, beside the grid's own)
        return self.conductor.set_step_seconds(step)

    def run(self, seconds: float | None = None) -> LiveResult:
        """Play for ``seconds`` (None: until ``stop()``); returns the sessions, the last one partial if stopped.

        On the internal grid the run ends ``seconds`` after its first step, when the last notes
        are turned off; the last session file is exactly that long. Following a MIDI clock,
        ``seconds`` is clock time, however many steps it holds. One run per engine.
        """
        grid = isinstance(self.timing, TempoGrid)
        n_steps = None if seconds is None or not grid else max(1, math.ceil(seconds / self.step_seconds - 1e-9))
        result = LiveResult(self.conductor.stats)
        self._writer = _SessionWriter(self.on_session) if self.on_session else None
        timer = None
        try:
            start = self.clock.now() + START_DELAY
            gen = self.generator
            meter = getattr(gen, "meter", None)  # (a generator that keeps no meter: 4/4 from the first step)
            self._session_spec = {"voices": self.voices is not None, "meter": meter,
                                  "bar_time": start - (gen.bar_position() if meter else 0) * self.step_seconds,
                                  "bar_seconds": gen.steps_per_bar * self.step_seconds if meter else 0.0}
            self.recorder = SessionRecorder(start, **self._session_spec)
            self._session_began(0, start)
            if self.program is not None:
                for channel in self.voices.channels if self.voices is not None else (self.channel,):
                    change = mido.Message("program_change", channel=channel, program=self.program)
                    self.forward(change)
                    self.recorder.record(change, start)
            if seconds is not None and not grid:
                timer = call_later(self.clock, seconds, self.conductor.stop)
            self.conductor.run(n_steps, start=start)
            result.interrupted = self.conductor.stopped and (timer is None or not timer.fired)
            if not result.interrupted and seconds is not None and grid:
                self.conductor.wait_until(start + seconds)  # let the last step sound to the end
                result.interrupted = self.conductor.stopped
        finally:
            if timer is not None:
                timer.cancel()
            self.conductor.close()
            last = self._silence()
            if self.lead:
                result.port_late = self.port.late
            result.xruns = getattr(self.port, "xruns", None)
            if self._writer is not None:
                done, n = self._writer.close()
                result.sessions.extend(done)
                result.n_sessions += n
            if last is not None:
                result.sessions.append(last)
                result.n_sessions += 1
        return result

    # ---- the conductor callbacks ---------------------------------------------------------------

    def _produce(self, k: int) -> _Step:
        """Producer thread, ahead of time: the listening part's input, then the model's step."""
        if self.listening is None:
            return _Step(self.generator.step())
        heard, playing, mark = self.listening.before_step(k)
        if playing is None:  # (the listening part takes the player's tempo from a phrase: the model waits)
            return _Step(Frame.silent(), mark)
        return _Step(self.generator.step(heard=heard, play=playing), mark)

    def _prepare(self, k: int, item: _Step) -> tuple[list[mido.Message], np.ndarray, _Step, Any]:
        if self.voices is None:
            return frame_messages(self._sounding, item.frame, self.channel), item.frame.sound, item, None
        before = self.voices.state()
        return self.voices.messages(self._sounding, item.frame), item.frame.sound, item, before

    def _messages(self, frame: Frame) -> list[mido.Message]:
        """The messages from what sounds now to ``frame`` (sender thread)."""
        if self.voices is None:
            return frame_messages(self._sounding, frame, self.channel)
        return self.voices.messages(self._sounding, frame)

    def _perform(self, k: int, payload: tuple, t: float) -> None:
        msgs, sound, item, voices_before = payload
        if self.listening is not None and self.listening.vetoes(item.mark):
            if voices_before is not None:
                self.voices.restore(voices_before)  # the step prepared is not played
            msgs, sound = self._messages(Frame.silent()), np.zeros(N_MIDI, bool)
        if self.port is not None:
            for msg in msgs:  # first, the deadline is now (or, with a lead, these are due at t)
                self._to_port(msg, t)
        if self.sinks and self.lead:
            self.conductor.wait_until(t)  # the sinks sound what they get at once
        for sink in self.sinks:
            for msg in msgs:
                sink.send(msg, t)
        self._sounding = sound
        self._handed_until = max(self._handed_until, t)
        if hasattr(self.port, "beat") and isinstance(self.timing, TempoGrid):
            # By when the next step's messages come: a real-time process silences a worker that misses it (a
            # DAW's clock may slow down at any time: following one, no promise is made).
            # (The next step's own deadline too: a tempo taken from the player may move it a beat away.)
            self.port.beat(max(t - self.lead + max(self.timing.step_seconds, self._asked_step),
                               self.timing.deadline(k + 1) - self.lead))
        cut = None
        if self.steps_per_session and k > 0 and k % self.steps_per_session == 0:
            cut = self.timing.deadline(k)  # step k opens a new session: cut at its deadline
        later = self.listening.record_player(self.recorder, before=cut) if self.listening is not None else []
        if cut is not None:
            session = self.recorder.split(cut)
            self._session_began(session.index + 1, cut)
            if self._writer is not None:
                self._writer.put(session)
        for msg in msgs:
            self.recorder.record(msg, t)
        for when, msg in later:  # the player's notes heard after the cut belong to the new session
            self.recorder.record(msg, when, PLAYER)

    def _session_began(self, index: int, start: float) -> None:
        if self.on_session_start is not None:
            self.on_session_start({**self._session_spec, "index": index, "start": start})

    def _to_port(self, msg: mido.Message, at: float | None = None) -> None:
        if self.lead and at is not None:
            self.port.send(msg, at=at)
        else:
            self.port.send(msg)

    def forward(self, msg: mido.Message, heard_at: float | None = None) -> None:
        """Send one message now to the port and every sink (any thread: the port and the sinks lock).

        heard_at: when the input it answers was heard; a port that places messages in time sends it its
        ``hop`` after that, so the delay is the same for every message (thru).
        """
        if self.port is not None and not (heard_at is not None and getattr(self.port, "forwards_thru", False)):
            self._to_port(msg, None if heard_at is None else heard_at + getattr(self.port, "hop", 0.0))
        t = self.clock.now()
        for sink in self.sinks:
            if heard_at is None or getattr(sink, "takes_thru", True):  # (the web page hears the player elsewhere)
                sink.send(msg, t)

    def _late(self, k: int) -> None:
        n = self.conductor.stats.late_steps
        if n <= 10 or n % 100 == 0:
            self.warn(f"step {k} skipped: the model was not ready in time ({n} late so far)")

    # ---- silence: a pause, and the stop path ---------------------------------------------------

    def _now(self) -> float:
        """When a message sent now sounds: now, or after the last step handed to a port ahead of time."""
        return max(self.clock.now(), self._handed_until)

    def _offs(self) -> list[mido.Message]:
        """Turn off every note the improviser sounds (the port also sends CC 123); returns the note-offs."""
        offs = self.port.silence() if self.port is not None else self._messages(Frame.silent())
        self._sounding = np.zeros(N_MIDI, bool)
        if self.voices is not None:
            self.voices.voice_of.clear()
        t = self.clock.now()
        for sink in self.sinks:
            for msg in offs:
                sink.send(msg, t)
        return offs

    def pause(self) -> None:
        """Silence the improviser's notes now (sender thread; e.g. the DAW stopped)."""
        if self.recorder is None:
            return
        t = self._now()
        for msg in self._offs():
            self.recorder.record(msg, t)
        if self.listening is not None:
            self.listening.record_player(self.recorder)

    def _silence(self) -> Session | None:
        """Turn off every sounding note (and CC 123) and close the last session at this moment."""
        if self.recorder is None:
            return None
        if self.listening is not None:
            self.listening.flush(self.recorder)  # the producer has ended: the player's last notes
        t = self._now()
        for msg in self._offs():
            self.recorder.record(msg, t)
        return self.recorder.finish(t)


class _SessionWriter:
    """Hands finished sessions to ``write`` on its own thread, in order; keeps only the last few."""

    def __init__(self, write: Callable[[Session], None]):
        self.write = write
        self.done: collections.deque = collections.deque(maxlen=SESSIONS_KEPT)  # writer thread; read after close
        self.count = 0
        self.error: BaseException | None = None  # writer thread; read after close
        self._queue: queue.Queue = queue.Queue()  # sender -> writer
        self._thread = threading.Thread(target=self._loop, name="improviser-writer", daemon=True)
        self._thread.start()

    def put(self, session: Session) -> None:
        self._queue.put(session)

    def close(self) -> tuple[list[Session], int]:
        """Wait for every session handed in so far to be written; returns the last few and the count."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return list(self.done), self.count

    def _loop(self) -> None:
        while (session := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.write(session)
                self.done.append(session)
                self.count += 1
            except BaseException as e:  # reported by close(); the music goes on meanwhile
                self.error = e


class _Timer:
    """A one-shot call after a delay on a clock; ``fired`` says whether it ran."""

    def __init__(self):
        self.fired = False
        self.cancelled = False
        self.real: threading.Timer | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.real is not None:
            self.real.cancel()


def call_later(clock: Clock, seconds: float, fn: Callable[[], None]) -> _Timer:
    """Call ``fn`` ``seconds`` from now on ``clock`` (a virtual clock's own schedule, or a real timer)."""
    timer = _Timer()

    def fire():
        if not timer.cancelled:
            timer.fired = True
            fn()

    if hasattr(clock, "at"):
        clock.at(clock.now() + seconds, fire)
    else:
        timer.real = threading.Timer(seconds, fire)
        timer.real.daemon = True
        timer.real.start()
    return timer


# ---- the services ----------------------------------------------------------------------------------

def in_tempo_taken(session: Session, bpm: float, listening: Any) -> tuple[Session, float]:
    """(session, bpm) to write a session file in: with --bpm auto, once a tempo is taken, the player's tempo and
    meter with its bars on the player's (the notes' times are the same either way); else as it is, at ``bpm``."""
    taken = getattr(getattr(listening, "tempo", None), "taken", None)  # (read whole: another thread sets it)
    if taken is None:
        return session, bpm
    bar = taken.meter.bar_steps() * taken.step_seconds
    return replace(session, meter=taken.meter, bar_line=(taken.bar_time - session.start) % bar), taken.bpm


def record(generator: StreamingGenerator, out: str | Path, seconds: float, bpm: float,
           port: OutputPort | None = None, clock: Clock | None = None,
           warn: Callable[[str], None] | None = None, listening: Any = None,
           timing: TimingSource | None = None, **options) -> LiveResult:
    """Play ``seconds`` live into ``port`` and save what was sent to ``out``.

    options: more of ``LiveEngine``'s (channel, program, thru, sinks).

    Without a port it runs on a virtual clock, i.e. as fast as the model goes,
    and writes the same kind of file. If stopped early, the partial session is
    saved. The file's notes are timed as they were sent.
    """
    if port is None and clock is None and timing is None:
        clock = VirtualClock()
    if hasattr(port, "journal"):
        options["on_session_start"] = lambda spec: port.journal({**spec, "path": str(out), "bpm": bpm})
    engine = LiveEngine(generator, bpm, port, clock=clock, warn=warn, listening=listening, timing=timing, **options)
    with stop_on_signals(engine.stop):
        result = engine.run(seconds)
    session, bpm = in_tempo_taken(result.sessions[-1], bpm, listening)
    result.file_bpm = bpm
    result.paths.append(session.write(out, bpm))
    result.n_written = 1
    return result


def play(generator: StreamingGenerator, sessions_dir: str | Path, session_seconds: float, bpm: float,
         port: OutputPort, clock: Clock | None = None, warn: Callable[[str], None] | None = None,
         on_written: Callable[[Path, Session], None] | None = None, listening: Any = None,
         timing: TimingSource | None = None, **options) -> LiveResult:
    """The service: play until Ctrl-C or SIGTERM, writing each session back to back into ``sessions_dir``.

    The hidden state carries on from session to session; the partial last
    session is written on stop. Files are named by their local start time.
    A session that cannot be written (disk full, folder gone) is kept in memory
    and retried (see ``SessionSaver``); the music goes on meanwhile.
    """
    from .saver import SessionSaver

    folder = Path(sessions_dir)
    folder.mkdir(parents=True, exist_ok=True)
    clock = clock or getattr(timing, "clock", None) or MonotonicClock()

    # Wall-clock time of the sessions' starts, from one reading of both clocks, so names always sort in order.
    wall0, clock0 = datetime.now(), clock.now()

    def path_for(session: Session) -> Path:
        return session_path(folder, session.index, wall0 + timedelta(seconds=session.start - clock0))

    saver = SessionSaver(folder, bpm, path_for, on_written=on_written, warn=warn,
                         tempo=functools.partial(in_tempo_taken, bpm=bpm, listening=listening))

    def journal(spec: dict) -> None:
        path = session_path(folder, spec["index"], wall0 + timedelta(seconds=spec["start"] - clock0))
        port.journal({**spec, "path": str(path), "bpm": bpm})

    engine = LiveEngine(generator, bpm, port, clock=clock, session_seconds=session_seconds,
                        on_session=saver.save, warn=warn, listening=listening, timing=timing,
                        on_session_start=journal, **options)
    try:
        with stop_on_signals(engine.stop):
            result = engine.run(None)
    except BaseException:
        saver.close(raise_errors=False)  # keep what can be kept; the first error is the one to report
        raise
    last = result.sessions[-1]
    if last.length > 0:
        saver.save(last)
    else:  # stopped right at a boundary: the new session had not begun
        result.sessions.pop()
        result.n_sessions -= 1
    result.paths = list(saver.close())
    result.n_written = saver.n_written
    return result


MAX_ACCOMPANY_SECONDS = 20 * 60.0  # a melody longer than this is refused (a song, not a night's recording)


def schedule_melody(clock: VirtualClock, listener: Any, melody: Grid, start: float, step_seconds: float,
                    channel: int = 0) -> float:
    """Play ``melody`` into ``listener`` on a virtual clock, as a player would: every note-on and note-off
    is delivered to the listener's callback at its moment (its step's time from ``start``).

    Returns when the melody ends. At the same moment note-offs go before note-ons, as a player's
    re-struck note does.
    """
    events = []
    for pitch, s, e, vel in melody.notes():
        events.append((start + e * step_seconds, 0, mido.Message("note_off", channel=channel, note=int(pitch))))
        events.append((start + s * step_seconds, 1,
                       mido.Message("note_on", channel=channel, note=int(pitch), velocity=int(vel))))
    for t, _, msg in sorted(events, key=lambda ev: (ev[0], ev[1])):
        clock.at(t, functools.partial(listener.on_message, msg))
    return start + len(melody) * step_seconds


def accompany(generator: StreamingGenerator, melody: Grid, bpm: float, mode: str = "accompany",
              respond_after: float = 2.0, extra_beats: float = 4.0, tempo: Any = None,
              start_bpm: float | None = None, **options) -> Session:
    """Play along with ``melody`` exactly as the live engine would with a player, on a virtual clock.

    The melody's notes arrive at the listening part at their times at ``bpm`` (no MIDI system);
    the same engine, listening part and recorder as ``record --input`` hear them, quantise them
    and answer or accompany. The run lasts the melody plus ``extra_beats``. Returns the session:
    the improviser's notes, and the melody on the ``player`` track.

    tempo: a ``tempo.PlayerTempo`` (--bpm auto): the engine starts at ``start_bpm`` and takes the melody's
    tempo from its notes, as from a player's.
    """
    from ..errors import ImproviserError
    from .listen import InputListener, Listening

    step_seconds = 60.0 / bpm / generator.cfg.steps_per_beat
    seconds = len(melody) * step_seconds + extra_beats * 60.0 / bpm
    if seconds > MAX_ACCOMPANY_SECONDS:
        raise ImproviserError(f"the melody lasts {seconds / 60:.0f} minutes at {bpm:g} bpm; accompany takes up to "
                              f"{MAX_ACCOMPANY_SECONDS / 60:.0f} minutes: cut it into parts")
    clock = VirtualClock()
    listener = InputListener(now=clock.now)
    listening = Listening(listener, mode=mode, respond_after=respond_after, just_in_time=True, tempo=tempo)
    engine = LiveEngine(generator, start_bpm or bpm, None, clock=clock, listening=listening, lookahead=0, **options)
    schedule_melody(clock, listener, melody, clock.now() + START_DELAY, step_seconds)
    result = engine.run(seconds)
    return result.sessions[-1]


@contextlib.contextmanager
def realtime_process():
    """Process-wide settings for playing live, made once by the entry point and restored after.

    - BLAS (numpy's matrix library) on one thread: after every call its worker threads spin
      for a while waiting for more work; for one small matrix-vector product per step that
      burns half a core and competes with the sender (threadpoolctl finds the library).
    - A short GIL switch interval, so the producer and the file writer yield to the sender quickly.
    - Everything loaded so far (torch, the model: ~170,000 objects the garbage collector tracks) is frozen
      out of later collections. A full collection over them holds the GIL for ~100 ms, and one comes soon
      after start: the sender and the JACK backend's process callback would wait that long, and JACK's own
      clock takes a second to settle after such a stall (measured at 256 frames: onsets up to 17 ms off the
      grid, 11 messages past their time). Frozen, a full collection takes ~0.3 ms. (Freezing is O(1); the
      CLI collects once before it opens any port, so no garbage is frozen with them.)
    """
    from threadpoolctl import threadpool_limits

    old_interval = sys.getswitchinterval()
    with threadpool_limits(limits=1, user_api="blas"):
        sys.setswitchinterval(SWITCH_INTERVAL)
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            sys.setswitchinterval(old_interval)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]):
    """Within the block, Ctrl-C (SIGINT) and SIGTERM call ``stop`` (a clean stop); a second one interrupts hard."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
