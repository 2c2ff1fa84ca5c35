"""The session recorder: exactly the messages that were sent, with their send times, cut into sessions.

``SessionRecorder.record(msg, t)`` is called with every message the moment it
is sent (``t`` on the conductor's clock). ``split(t)`` ends the current session
at ``t`` and starts the next one there: notes still sounding are closed at the
boundary and struck again at the start of the next session, so each file plays
on its own. The improviser's notes go to the ``improviser`` track; notes heard
from a player go to the ``player`` track (``record(msg, t, PLAYER)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import mido

from ..music.encoding import Meter, TimedNote, write_midi
from ..music.voices import VOICE_CHANNELS, VOICE_NAMES, split_voices

IMPROVISER = "improviser"
PLAYER = "player"
TRACKS = (IMPROVISER, PLAYER)


@dataclass
class Session:
    """One finished session. Note times are seconds from the session's start."""

    index: int  # 0, 1, 2, ... within one run
    start: float  # clock time of its start
    length: float  # seconds
    tracks: dict[str, list[TimedNote]] = field(default_factory=dict)
    programs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # track -> [(channel, program)]
    voices: bool = False  # its notes are four voices on channels 1-4: written as a track per voice
    meter: Meter | None = None  # the time signature it played in (None: 4/4)
    bar_line: float = 0.0  # seconds from its start to a bar line (a session that starts inside a bar)

    def notes(self, track: str = IMPROVISER) -> list[TimedNote]:
        return self.tracks.get(track, [])

    def write(self, path: str | os.PathLike, bpm: float, tempo_map: tuple = ()) -> Path:
        """Write the session as a MIDI file (atomically), every track present even if empty; ``tempo_map``:
        ((beat, bpm), ...) tempo changes to write after the first (``write_midi``)."""
        tracks = {name: self.notes(name) for name in TRACKS}
        programs = dict(self.programs)
        if self.voices:
            voices = split_voices(tracks.pop(IMPROVISER))
            tracks = {**voices, **tracks}
            own = dict(programs.pop(IMPROVISER, []))
            programs.update({name: [(ch, own[ch])] for name, ch in zip(VOICE_NAMES, VOICE_CHANNELS) if ch in own})
        write_midi(path, tracks, bpm, length=self.length, programs=programs, meter=self.meter, bar_line=self.bar_line,
                   tempo_map=tempo_map)
        return Path(path)


@dataclass
class _Open:
    start: float
    velocity: int
    carried: bool = False  # opened by a session split, not by a note-on


CARRY_EPSILON = 0.002  # s; a carried note that ends this soon after the seam really ended at the seam


class SessionRecorder:
    """Collects sent notes into sessions. Not thread-safe: call it from the sending thread only.

    start: clock time at which the first session begins.
    """

    def __init__(self, start: float, voices: bool = False, meter: Meter | None = None, bar_time: float | None = None,
                 bar_seconds: float = 0.0):
        """meter, bar_time, bar_seconds: the time signature, the clock time of a bar line and a bar's length, so
        each session's file has its bar lines where they were played."""
        self.voices = voices
        self.meter = meter
        self.bar_time = start if bar_time is None else bar_time
        self.bar_seconds = bar_seconds
        self.session_start = start
        self.index = 0
        self._open: dict[tuple[str, int, int], _Open] = {}  # (track, channel, pitch) -> its note-on
        self._notes: dict[str, list[TimedNote]] = {name: [] for name in TRACKS}
        self._programs: dict[str, dict[int, int]] = {}  # track -> channel -> program; every session starts so

    def record(self, msg: mido.Message, t: float, track: str = IMPROVISER) -> None:
        """Note a message sent (or heard) at clock time ``t``; notes and program changes, nothing else."""
        if msg.type == "program_change":
            self._programs.setdefault(track, {})[msg.channel] = msg.program
            return
        if msg.type not in ("note_on", "note_off"):
            return
        key = (track, msg.channel, msg.note)
        if key in self._open:  # a note-off, or a re-strike of a note that still sounds: the old note ends
            self._close(key, t)
        if msg.type == "note_on" and msg.velocity > 0:
            self._open[key] = _Open(max(t, self.session_start), msg.velocity)

    def sounding(self, track: str = IMPROVISER) -> list[tuple[int, int]]:
        """(channel, pitch) of the notes open on ``track``."""
        return sorted((ch, p) for (tr, ch, p) in self._open if tr == track)

    def split(self, t: float) -> Session:
        """End the session at ``t`` and begin the next one there; held notes carry over, re-struck."""
        held = dict(self._open)
        done = self._finish(t)
        self._open = {key: _Open(t, note.velocity, carried=True) for key, note in held.items()}
        return done

    def finish(self, t: float) -> Session:
        """End the last session at ``t``, closing every note still open."""
        return self._finish(t)

    def _finish(self, t: float) -> Session:
        t = max(t, self.session_start)
        for key in list(self._open):
            self._close(key, t)
        bar_line = (self.bar_time - self.session_start) % self.bar_seconds if self.bar_seconds else 0.0
        session = Session(self.index, self.session_start, t - self.session_start,
                          {name: sorted(notes, key=lambda n: (n.start, n.pitch)) for name, notes in
                           self._notes.items()},
                          {name: sorted(chans.items()) for name, chans in self._programs.items()}, self.voices,
                          self.meter, bar_line)
        self.index += 1
        self.session_start = t
        self._notes = {name: [] for name in TRACKS}
        return session

    def _close(self, key: tuple[str, int, int], t: float) -> None:
        note = self._open.pop(key)
        if note.carried and t - note.start < CARRY_EPSILON:
            # The note ended (or was struck again) on the seam step itself: the previous session
            # already holds it up to the seam, so nothing of it belongs in this one.
            return
        track, channel, pitch = key
        s0 = self.session_start
        self._notes.setdefault(track, []).append(
            TimedNote(pitch, note.start - s0, max(t, note.start) - s0, note.velocity, channel))


def session_path(folder: str | os.PathLike, index: int, when: datetime | None = None) -> Path:
    """The file for session ``index`` in ``folder``, stamped with its local start time.

    e.g. ``session-2024-05-01_12-30-00-0003.mid``: names sort in playing order,
    even for sessions shorter than a second apart.
    """
    stamp = (when or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(folder) / f"session-{stamp}-{index:04d}.mid"
    n = 1
    while path.exists():  # never overwrite an earlier run's file
        path = Path(folder) / f"session-{stamp}-{index:04d}-{n}.mid"
        n += 1
    return path
