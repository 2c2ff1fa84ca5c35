"""Four voices on four MIDI channels: soprano, alto, tenor and bass, told apart note by note.

A four-part model plays four notes at a time. ``VoiceChannels`` turns its frames into MIDI
messages with each note on the channel of its voice (soprano on channel 1 .. bass on 4), so a
DAW can give each line its own instrument. A note keeps its channel from note-on to note-off.
When four notes sound they are the four voices from the top down; otherwise each new note takes
a free voice in the same order (the highest new note the highest free voice), or with none free
the voice whose last note was nearest.
"""

from __future__ import annotations

import mido
import numpy as np

from .encoding import Frame, Grid, TimedNote

VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
VOICE_CHANNELS = (0, 1, 2, 3)  # MIDI channels 1..4


class VoiceChannels:
    """Frame -> messages, each note on its voice's channel. One per stream of frames (it remembers them)."""

    def __init__(self, channels: tuple[int, ...] = VOICE_CHANNELS):
        self.channels = channels
        self.voice_of: dict[int, int] = {}  # sounding pitch -> its voice (0 = soprano)
        self.last_pitch: list[int | None] = [None] * len(channels)

    def messages(self, sounding: np.ndarray, frame: Frame) -> list[mido.Message]:
        """The messages that turn ``sounding`` (bool (128,)) into ``frame``: note-offs first, then note-ons."""
        off = sounding & (~frame.sound | frame.onset)
        on = frame.onset | (frame.sound & ~sounding)
        msgs = []
        for p in np.flatnonzero(off).tolist():
            voice = self.voice_of.pop(p, 0)
            msgs.append(mido.Message("note_off", channel=self.channels[voice], note=p, velocity=0))
        new = sorted(np.flatnonzero(on).tolist(), reverse=True)  # high to low
        for p, voice in self._assign(new).items():
            self.voice_of[p] = voice
            self.last_pitch[voice] = p
            msgs.append(mido.Message("note_on", channel=self.channels[voice], note=p, velocity=int(frame.velocity)))
        return msgs

    def _assign(self, new: list[int]) -> dict[int, int]:
        n = len(self.channels)
        everything = sorted(list(self.voice_of) + new, reverse=True)
        if len(everything) == n and all(everything.index(p) == v for p, v in self.voice_of.items()):
            return {p: everything.index(p) for p in new}  # four notes: the voices from the top down
        taken = set(self.voice_of.values())
        free = [v for v in range(n) if v not in taken]
        out = {}
        for p in new:
            if free:
                out[p] = free.pop(0)
            else:
                known = [v for v in range(n) if self.last_pitch[v] is not None] or [0]
                out[p] = min(known, key=lambda v: abs((self.last_pitch[v] or p) - p))
        return out

    def state(self) -> tuple:
        return dict(self.voice_of), list(self.last_pitch)

    def restore(self, state: tuple) -> None:
        self.voice_of, self.last_pitch = dict(state[0]), list(state[1])


def split_voices(notes: list[TimedNote]) -> dict[str, list[TimedNote]]:
    """Notes played on the voices' channels -> a track per voice (soprano .. bass)."""
    return {name: [n for n in notes if n.channel == ch] for name, ch in zip(VOICE_NAMES, VOICE_CHANNELS)}


def voice_tracks(grid: Grid, bpm: float | None = None) -> dict[str, list[TimedNote]]:
    """A grid's notes as four tracks (soprano .. bass), each on its channel, timed at ``bpm`` (default the grid's)."""
    step_s = 60.0 / (bpm or grid.bpm) / grid.steps_per_beat
    voices = VoiceChannels()
    tracks: dict[str, list[TimedNote]] = {name: [] for name in VOICE_NAMES}
    sounding = np.zeros(grid.sound.shape[1], bool)
    started: dict[int, tuple[int, int, int]] = {}  # pitch -> (start step, velocity, channel)
    for t in range(len(grid) + 1):
        frame = Frame(grid.onset[t], grid.sound[t], 80) if t < len(grid) else Frame.silent()
        if t < len(grid) and grid.velocity is not None and grid.onset[t].any():
            frame = Frame(frame.onset, frame.sound, int(grid.velocity[t][grid.onset[t]].max()))
        for msg in voices.messages(sounding, frame):
            if msg.type == "note_off":
                s, v, ch = started.pop(msg.note)
                tracks[VOICE_NAMES[ch]].append(TimedNote(msg.note, s * step_s, t * step_s, v, ch))
            else:
                started[msg.note] = (t, msg.velocity, msg.channel)
        sounding = frame.sound.copy()
    return tracks
