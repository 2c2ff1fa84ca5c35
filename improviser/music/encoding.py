"""Notes <-> the step grid, and MIDI files in and out. Pure numpy apart from file I/O.

A piece on the grid is two boolean arrays of shape (T, 128), one row per step
(default 4 steps per beat, i.e. 16th notes in 4/4):

- ``onset[t, p]``: a note of pitch ``p`` starts (is struck) at step ``t``;
- ``sound[t, p]``: pitch ``p`` sounds during step ``t`` (an onset implies it).

Keeping both is what lets a model learn note lengths and re-struck notes: two
quarter notes on the same pitch are ``sound`` for 8 steps with two onsets,
one half note is ``sound`` for 8 steps with one.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import mido
import numpy as np

from ..errors import MidiFileError

N_MIDI = 128
STEPS_PER_BEAT = 4
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


@dataclass(frozen=True)
class Frame:
    """What happens at one step: which pitches start and which sound (both bool, shape (128,))."""

    onset: np.ndarray
    sound: np.ndarray
    velocity: int = 80  # of the notes struck at this step

    @staticmethod
    def silent() -> Frame:
        return Frame(np.zeros(N_MIDI, bool), np.zeros(N_MIDI, bool))

    @staticmethod
    def of(onset=(), held=()) -> Frame:
        """A frame from pitch lists: ``onset`` pitches are struck, ``held`` ones keep sounding."""
        f = Frame.silent()
        f.onset[list(onset)] = True
        f.sound[list(onset)] = True
        f.sound[list(held)] = True
        return f

    def union(self, other: Frame) -> Frame:
        """Both frames' notes; the velocity of whichever struck notes (the louder if both did)."""
        if not other.onset.any():
            velocity = self.velocity
        elif not self.onset.any():
            velocity = other.velocity
        else:
            velocity = max(self.velocity, other.velocity)
        return Frame(self.onset | other.onset, self.sound | other.sound, velocity)

    @property
    def pitches(self) -> list[int]:
        return np.flatnonzero(self.sound).tolist()


@dataclass(frozen=True)
class Meter:
    """A time signature: ``numerator`` beats of a ``denominator`` note in a bar (3/4, 6/8, 12/8 ...).

    On the step grid (``steps_per_beat`` steps to a quarter note): a bar is ``bar_steps`` steps, and its
    beats -- what a listener taps, and where the harmony moves -- are ``beat_steps`` apart: a dotted quarter
    in compound meters (6/8, 9/8, 12/8), else one ``denominator`` note.
    """

    numerator: int = 4
    denominator: int = 4

    def __post_init__(self) -> None:
        if self.denominator not in (1, 2, 4, 8, 16) or not 1 <= self.numerator <= 32:
            raise ValueError(f"not a time signature: {self.numerator}/{self.denominator}")

    @classmethod
    def parse(cls, text: str) -> Meter:
        """'3/4', '6/8' ... -> Meter; ValueError otherwise."""
        top, sep, bottom = str(text).strip().partition("/")
        try:
            return cls(int(top), int(bottom)) if sep else cls(int("x"))
        except ValueError:
            raise ValueError(f"{text!r} is not a time signature such as 4/4, 3/4 or 6/8") from None

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"

    @property
    def compound(self) -> bool:
        return self.denominator >= 8 and self.numerator % 3 == 0 and self.numerator > 3

    def unit_steps(self, steps_per_beat: int = STEPS_PER_BEAT) -> float:
        return steps_per_beat * 4 / self.denominator

    def bar_steps(self, steps_per_beat: int = STEPS_PER_BEAT) -> int:
        return max(1, round(self.numerator * self.unit_steps(steps_per_beat)))

    def beat_steps(self, steps_per_beat: int = STEPS_PER_BEAT) -> int:
        return max(1, round(self.unit_steps(steps_per_beat) * (3 if self.compound else 1)))

    def accent(self, position: int, steps_per_beat: int = STEPS_PER_BEAT) -> int:
        """0 on the downbeat, 1 on another beat, 2 between beats; ``position`` = steps into the bar."""
        position %= self.bar_steps(steps_per_beat)
        return 0 if position == 0 else 1 if position % self.beat_steps(steps_per_beat) == 0 else 2


@dataclass
class Grid:
    """A piece on the step grid.

    onset, sound: bool arrays of shape (T, 128).
    velocity: uint8 array (T, 128), the velocity of the note starting there (0 elsewhere).
    """

    onset: np.ndarray
    sound: np.ndarray
    steps_per_beat: int = STEPS_PER_BEAT
    beats_per_bar: int = 4
    bpm: float = 120.0
    velocity: np.ndarray | None = field(default=None, repr=False)
    bar_start: int = 0  # position of step 0 within its bar (non-zero for a pickup)
    meter: Meter | None = None  # the time signature (None: beats_per_bar quarters)
    tempo_map: tuple = ()  # ((step, bpm), ...) the tempo changes after the first (a file's, kept to write it back)

    def __post_init__(self) -> None:
        if self.onset.shape != self.sound.shape or self.onset.ndim != 2 or self.onset.shape[1] != N_MIDI:
            raise ValueError(f"onset and sound must both be (T, 128), got {self.onset.shape}, {self.sound.shape}")
        self.sound = self.sound | self.onset  # an onset always sounds

    def __len__(self) -> int:
        return self.onset.shape[0]

    @property
    def time_signature(self) -> Meter:
        return self.meter if self.meter is not None else Meter(self.beats_per_bar, 4)

    @property
    def steps_per_bar(self) -> int:
        return self.time_signature.bar_steps(self.steps_per_beat)

    @property
    def beat_steps(self) -> int:
        return self.time_signature.beat_steps(self.steps_per_beat)

    def seconds(self) -> float:
        """How long the piece lasts, through its tempo changes."""
        edges = [(0, self.bpm), *self.tempo_map, (len(self), 0.0)]
        return sum(max(0, min(len(self), end) - start) * 60.0 / bpm / self.steps_per_beat
                   for (start, bpm), (end, _) in zip(edges, edges[1:]))

    def tempo_beats(self) -> tuple:
        """The tempo changes as ((beat, bpm), ...), as ``write_midi`` takes them."""
        return tuple((step / self.steps_per_beat, bpm) for step, bpm in self.tempo_map)

    def transpose(self, semitones: int) -> Grid | None:
        """The piece moved by ``semitones``; None if a note would leave MIDI 0..127."""
        if semitones == 0:
            return self
        used = np.flatnonzero(self.sound.any(axis=0))
        if used.size and (used[0] + semitones < 0 or used[-1] + semitones > 127):
            return None
        vel = None if self.velocity is None else np.roll(self.velocity, semitones, axis=1)
        return replace(self, onset=np.roll(self.onset, semitones, axis=1),
                       sound=np.roll(self.sound, semitones, axis=1), velocity=vel)

    def bar_positions(self) -> np.ndarray:
        """Position of every step within its bar, int (T,)."""
        return bar_position(len(self), self.steps_per_bar, self.bar_start)

    def notes(self) -> np.ndarray:
        """All notes as an int array (N, 4): pitch, start step, end step (exclusive), velocity."""
        pitch, start, end = grid_to_notes(self.onset, self.sound)
        if self.velocity is None:
            vel = np.full(pitch.shape, 80)
        else:
            vel = self.velocity[start, pitch].astype(int)
            vel[vel == 0] = 80
        return np.stack([pitch, start, end, vel], axis=1) if pitch.size else np.zeros((0, 4), int)


def notes_to_grid(pitch, start, end, n_steps: int | None = None, velocity=None) -> tuple[np.ndarray, ...]:
    """Notes in steps -> (onset, sound, velocity) arrays of shape (T, 128).

    A note lasts at least one step. A note struck while the same pitch still
    sounds ends the earlier one there (a re-strike).
    """
    pitch = np.asarray(pitch, int)
    start = np.asarray(start, int)
    end = np.maximum(np.asarray(end, int), start + 1)
    if n_steps is None:
        n_steps = int(end.max()) if end.size else 0
    onset = np.zeros((n_steps, N_MIDI), bool)
    sound = np.zeros((n_steps, N_MIDI), bool)
    vel = np.zeros((n_steps, N_MIDI), np.uint8)
    keep = start < n_steps
    pitch, start, end = pitch[keep], start[keep], np.minimum(end[keep], n_steps)
    onset[start, pitch] = True
    if velocity is not None:
        vel[start, pitch] = np.clip(np.asarray(velocity)[keep], 1, 127)
    # Mark the sounding span of every note with a +1/-1 difference array, then a running sum.
    diff = np.zeros((n_steps + 1, N_MIDI), np.int32)
    np.add.at(diff, (start, pitch), 1)
    np.add.at(diff, (end, pitch), -1)
    sound = np.cumsum(diff[:-1], axis=0) > 0
    return onset, sound | onset, vel


def grid_to_notes(onset: np.ndarray, sound: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset, sound) of shape (T, 128) -> notes as (pitch, start, end) int arrays, sorted by start then pitch.

    A note starts at an onset, or where a pitch begins to sound without one; it
    ends at the first later step where the pitch is silent or struck again.
    Vectorised edge detection: no Python loop over steps or pitches.
    """
    sound = sound | onset
    n_steps = sound.shape[0]
    prev = np.zeros_like(sound)
    prev[1:] = sound[:-1]
    starts = sound & (onset | ~prev)
    # Pitch-major layout with one silent row appended, so every pitch's run of
    # steps ends in a boundary and a search never crosses into the next pitch.
    padded_sound = np.vstack([sound, np.zeros((1, N_MIDI), bool)]).T  # (128, T+1)
    padded_starts = np.hstack([starts.T, np.zeros((N_MIDI, 1), bool)])
    boundary = np.flatnonzero((padded_starts | ~padded_sound).ravel())
    start_flat = np.flatnonzero(padded_starts.ravel())
    end_flat = boundary[np.searchsorted(boundary, start_flat, side="right")]
    width = n_steps + 1
    pitch, start = np.divmod(start_flat, width)
    end = end_flat - pitch * width
    order = np.lexsort((pitch, start))
    return pitch[order], start[order], end[order]


def read_midi(path: str | os.PathLike, steps_per_beat: int = STEPS_PER_BEAT) -> Grid:
    """Read any MIDI file onto the step grid, following its tempo map; drum tracks are left out.

    Raises MidiFileError if the file cannot be read or has no pitched notes.
    """
    import pretty_midi

    path = Path(path)
    if not path.is_file():
        raise MidiFileError(f"{path}: no such MIDI file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # pretty_midi/mido raise many kinds of errors on bad files
        if "largest tick" in str(e):  # pretty_midi refuses files whose last event is past 10^7 ticks
            raise MidiFileError(f"{path}: too long (hours of music, or a corrupt length); split it into "
                                "smaller files") from None
        raise MidiFileError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None
    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        raise MidiFileError(f"{path}: holds no pitched notes")
    start_s = np.array([n.start for n in notes])
    end_s = np.array([n.end for n in notes])
    # Seconds -> beats through the file's own tempo map (ticks / ticks-per-beat).
    to_beats = np.vectorize(lambda t: pm.time_to_tick(t) / pm.resolution, otypes=[float])
    start = np.round(to_beats(start_s) * steps_per_beat).astype(int)
    end = np.round(to_beats(end_s) * steps_per_beat).astype(int)
    if start.max() > 200_000:
        raise MidiFileError(f"{path}: too long ({start.max()} steps); split it into smaller files")
    pitch = np.array([n.pitch for n in notes])
    vel = np.array([n.velocity for n in notes])
    order = np.lexsort((pitch, start))
    onset, sound, velocity = notes_to_grid(pitch[order], start[order], end[order], velocity=vel[order])
    times, tempos = pm.get_tempo_changes()
    bpm = float(tempos[0]) if len(tempos) else 120.0
    tempo_map = tuple((int(s), float(b)) for s, b in zip(np.round(to_beats(times[1:]) * steps_per_beat), tempos[1:]))
    meter, bar_start = _meter_of(pm.time_signature_changes, to_beats, steps_per_beat)
    return Grid(onset, sound, steps_per_beat, max(1, meter.bar_steps(steps_per_beat) // steps_per_beat), bpm,
                velocity, bar_start, meter, tempo_map)


def _meter_of(changes, to_beats, steps_per_beat: int) -> tuple[Meter, int]:
    """A file's time signature and where its bar lines fall: (meter, bar_start). A pickup written as a short
    first bar (a time signature that lasts less than a bar of the one after it, as notation programs export an
    anacrusis: 1/4 then 3/4) puts step 0 that far before the first full bar; one written as rests before it
    needs nothing."""
    sigs = []
    for ts in changes:
        try:
            sigs.append((int(round(to_beats(ts.time) * steps_per_beat)), Meter(ts.numerator, ts.denominator)))
        except ValueError:
            continue  # a signature we cannot put on the grid (a 32nd denominator) is passed over
    if not sigs:
        return Meter(), 0
    first_at, first = sigs[0]
    if len(sigs) >= 2 and first_at == 0:
        second_at, second = sigs[1]
        if 0 < second_at < second.bar_steps(steps_per_beat) and second_at <= first.bar_steps(steps_per_beat):
            return second, second.bar_steps(steps_per_beat) - second_at
    return first, (-first_at) % first.bar_steps(steps_per_beat)


# The General MIDI program it plays with when none is asked for: String Ensemble 1 (49 in the GM list,
# counted from 1), which sustains like the chorales' voices and answers to velocity, so the dynamics carry.
DEFAULT_PROGRAM = 48


@dataclass(frozen=True)
class TimedNote:
    """A note in seconds, as played. ``end >= start`` is checked."""

    pitch: int
    start: float
    end: float
    velocity: int = 80
    channel: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pitch <= 127 or not 1 <= self.velocity <= 127:
            raise ValueError(f"bad note {self}")
        if self.end < self.start:
            raise ValueError(f"note ends before it starts: {self}")


def grid_to_timed_notes(grid: Grid, bpm: float | None = None, channel: int = 0) -> list[TimedNote]:
    """The grid's notes in seconds at a constant ``bpm`` (default: the grid's own)."""
    step_s = 60.0 / (bpm or grid.bpm) / grid.steps_per_beat
    return [TimedNote(int(p), s * step_s, e * step_s, int(v), channel) for p, s, e, v in grid.notes()]


def write_midi(path: str | os.PathLike, tracks: dict[str, list[TimedNote]], bpm: float,
               length: float | None = None, beats_per_bar: int = 4, ticks_per_beat: int = 480,
               programs: dict[str, list[tuple[int, int]]] | None = None, meter: Meter | None = None,
               bar_line: float = 0.0, tempo_map: tuple = ()) -> None:
    """Write notes (in seconds) to a type-1 MIDI file, one track per entry of ``tracks``, with the tempo.

    ``programs``: track name -> [(channel, General MIDI program)], program changes at the track's start.
    ``meter`` (default: ``beats_per_bar`` quarters) and ``bar_line``, the time (s) of a bar line: a file that
    starts partway into a bar (a pickup) opens with a short bar, as notation programs write one.
    ``tempo_map``: ((beat, bpm), ...) tempo changes after the first; the notes' seconds are read at ``bpm``
    (a note at s seconds is at beat s * bpm / 60) and the file plays them at the changed tempos.

    ``length`` (seconds) sets where the file ends, so a 30 s session is 30 s long
    even if its last note stops earlier. Written atomically: a temporary file in
    the same folder, then a rename, so a crash never leaves half a file.
    """
    tempo = mido.bpm2tempo(bpm)
    ticks_per_s = ticks_per_beat * bpm / 60.0
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    end_tick = round(length * ticks_per_s) if length is not None else 0
    conductor = mido.MidiTrack()
    meter = meter or Meter(beats_per_bar, 4)
    bar_ticks = round(meter.numerator * 4 / meter.denominator * ticks_per_beat)
    meta = [(0, mido.MetaMessage("set_tempo", tempo=tempo))]
    meta += [(round(beat * ticks_per_beat), mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(b)))
             for beat, b in tempo_map]
    short = round(bar_line * ticks_per_s) % bar_ticks
    # The pickup bar in the meter's own unit, else in the smallest note that measures it (a 16th at most).
    unit = next((ticks_per_beat * 4 // d for d in (meter.denominator, 8, 16) if d >= meter.denominator
                 and short % (ticks_per_beat * 4 // d) == 0), 0)
    if short and unit:
        meta.append((0, mido.MetaMessage("time_signature", numerator=short // unit,
                                         denominator=ticks_per_beat * 4 // unit)))
        meta.append((short, mido.MetaMessage("time_signature", numerator=meter.numerator,
                                             denominator=meter.denominator)))
    else:
        meta.append((0, mido.MetaMessage("time_signature", numerator=meter.numerator, denominator=meter.denominator)))
    meta.sort(key=lambda m: m[0])
    now = 0
    for tick, msg in meta:
        conductor.append(msg.copy(time=tick - now))
        now = tick
    mid.tracks.append(conductor)
    events_per_track = []
    for name, notes in tracks.items():
        events = []
        spans = sorted(((round(n.start * ticks_per_s), round(n.end * ticks_per_s), n) for n in notes),
                       key=lambda x: (x[0], x[1]))
        next_on: dict[tuple[int, int], int] = {}  # (channel, pitch) -> tick of the next note-on
        clipped = []
        for on, off, n in reversed(spans):
            key = (n.channel, n.pitch)
            # A note lasts at least a tick but may not run into the next note of the same pitch
            # (that would sound as one long note); one left with no length at all is dropped.
            off = max(off, on + 1)
            if key in next_on:
                off = min(off, next_on[key])
            if off > on:
                clipped.append((on, off, n))
            next_on[key] = on
        for on, off, n in clipped:
            # Sort key puts note-offs before note-ons at the same tick, so a re-strike is off-then-on.
            events.append((on, 1, mido.Message("note_on", note=n.pitch, velocity=n.velocity, channel=n.channel)))
            events.append((off, 0, mido.Message("note_off", note=n.pitch, velocity=0, channel=n.channel)))
        events.sort(key=lambda e: (e[0], e[1]))
        if length is None and events:
            end_tick = max(end_tick, events[-1][0])
        events_per_track.append((name, events))
    for name, events in events_per_track:
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=name, time=0))
        for channel, program in (programs or {}).get(name, []):
            track.append(mido.Message("program_change", channel=channel, program=program, time=0))
        now = 0
        for tick, _, msg in events:
            tick = min(tick, end_tick)
            track.append(msg.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=max(0, end_tick - now)))
        mid.tracks.append(track)
    conductor.append(mido.MetaMessage("end_of_track", time=max(0, end_tick - now)))
    atomic_write(path, mid.save)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bar_position(n_steps: int, steps_per_bar: int, start: int = 0) -> np.ndarray:
    """Position of each step within its bar, 0..steps_per_bar-1 (int array of shape (n_steps,))."""
    return (np.arange(start, start + n_steps) % steps_per_bar).astype(np.int64)
