"""A held-out test set of melody *files*: folk tunes written as a notation program exports them.

``improviser accompany`` and ``harmonise`` are measured the way a user meets them: a MIDI file in, a MIDI
file out. The tunes are the held-out folk melodies of :mod:`improviser.music.melodies` (the five music21
collections that are evaluation material only, never trained on); each one's first 8 full bars, with its
pickup, become a type-1 MIDI file:

- a conductor track with the tempo (80-120 bpm, random per tune) and the tune's own time signature;
- a pickup as a notation program writes an anacrusis: a short first bar (a time signature at tick 0 giving
  the pickup's length in the meter's unit, 1/4 or 2/8, then the real one where the pickup ends); for about a
  third of the tunes with a pickup, the real signature at tick 0 and rests before the pickup instead;
- one melody track, in a random key in a soprano range (:func:`~improviser.music.melodies.place`), velocities
  60-100.

The set has two disjoint parts, split by a hash of the tune's name: ``tune`` (for tuning constants) and
``report`` (for the figures). Everything about a tune (key, tempo, velocities, how its pickup is written)
comes from a generator seeded by its name and ``seed``, so a set is the same on every machine, and the
first ``n`` tunes of a part are the same whatever larger ``n`` is asked for later. Files are written once
into :func:`improviser.music.cache.cache_dir`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import cache_dir
from .encoding import STEPS_PER_BEAT, Meter
from .melodies import Melody, load_heldout_melodies, place

PARTS = ("tune", "report")
FILES_VERSION = 1
BARS = 8
BPM_RANGE = (80, 120)
VELOCITY_RANGE = (60, 100)
RESTS_SHARE = 1 / 3  # of the tunes with a pickup, those written as rests before it in a full first bar
TICKS_PER_BEAT = 480
POOL = 20  # tunes parsed at first; doubled until a part has enough (the round robin keeps earlier tunes first)


@dataclass(frozen=True)
class MelodyFile:
    """One file of the test set.

    path: the MIDI file. melody: the tune as written (placed in its key; its first 8 bars and pickup).
    pickup_as_rests: the pickup sits at the end of a full first bar of rests (else a short first bar).
    """

    path: Path
    melody: Melody
    part: str
    bpm: float
    pickup_as_rests: bool

    @property
    def meter(self) -> Meter:
        return self.melody.meter

    @property
    def bar_start(self) -> int:
        """Where step 0 of the file falls in its bar, as the file says (0 when the pickup follows rests)."""
        return 0 if self.pickup_as_rests else self.melody.grid.bar_start


def part_of(name: str) -> str:
    """'tune' or 'report', fixed for a tune by a hash of its name."""
    return PARTS[hashlib.sha1(name.encode()).digest()[0] & 1]


def melody_files(n: int, part: str = "report", seed: int = 0) -> list[MelodyFile]:
    """The first ``n`` tunes of ``part`` as MIDI files (written on first use, then read from the cache)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    folder = cache_dir() / f"melody-files-s{seed}-v{FILES_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    pool = POOL
    while True:
        melodies = load_heldout_melodies(pool, seed)
        chosen = [m for m in melodies if part_of(m.name) == part and m.whole_bars >= BARS]
        out = []
        for m in chosen:
            f = _prepare(m, part, seed, folder)
            if f is not None:
                out.append(f)
            if len(out) == n:
                return out
        pool *= 2  # load_heldout_melodies raises a DataError when the corpus runs out


def _prepare(melody: Melody, part: str, seed: int, folder: Path) -> MelodyFile | None:
    """The tune's file (written if missing); None if the tune cannot be placed in a soprano range."""
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha1(melody.name.encode()).digest()[:8], "little")])
    try:
        placed = place(melody, rng)
    except ValueError:
        return None
    excerpt = Melody(melody.name, placed.phrase(BARS), melody.bar_steps, melody.first_bar)
    bpm = float(rng.integers(BPM_RANGE[0], BPM_RANGE[1] + 1))
    rests = bool(melody.first_bar and rng.random() < RESTS_SHARE)
    velocities = rng.integers(VELOCITY_RANGE[0], VELOCITY_RANGE[1] + 1, size=len(excerpt.grid.notes()))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", melody.name).strip("-")[:60]
    path = folder / f"{part}-{hashlib.sha1(melody.name.encode()).hexdigest()[:8]}-{slug}.mid"
    if not path.is_file():
        write_melody_file(path, excerpt, bpm, velocities, rests)
    return MelodyFile(path, excerpt, part, bpm, rests)


def write_melody_file(path: Path, melody: Melody, bpm: float, velocities: np.ndarray, pickup_as_rests: bool) -> None:
    """One tune as a type-1 MIDI file: a conductor track (tempo, time signatures) and one melody track."""
    import mido

    meter, pickup = melody.meter, melody.first_bar
    tick = TICKS_PER_BEAT // STEPS_PER_BEAT  # ticks per step
    shift = (melody.bar_steps - pickup) if pickup and pickup_as_rests else 0
    conductor = [(0, mido.MetaMessage("track_name", name="Conductor")),
                 (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))]
    sig = [(0, meter.numerator, meter.denominator)]
    if pickup and not pickup_as_rests:
        unit = int(meter.unit_steps())  # the pickup's length in the meter's unit, else in 16ths
        numerator, denominator = (pickup // unit, meter.denominator) if pickup % unit == 0 else (pickup, 16)
        sig = [(0, numerator, denominator), (pickup * tick, meter.numerator, meter.denominator)]
    conductor += [(t, mido.MetaMessage("time_signature", numerator=a, denominator=b)) for t, a, b in sig]
    notes = melody.grid.notes()
    events = [(0, 1, mido.MetaMessage("track_name", name="Melody")),
              (0, 1, mido.Message("program_change", channel=0, program=73))]  # a flute, as a score's default
    for (pitch, start, end, _), velocity in zip(notes.tolist(), velocities.tolist()):
        events.append(((start + shift) * tick, 2, mido.Message("note_on", note=pitch, velocity=velocity)))
        events.append(((end + shift) * tick, 0, mido.Message("note_off", note=pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))  # at the same tick a note-off goes before a note-on
    end_tick = (len(melody.grid) + shift) * tick

    mid = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    for timed in (conductor, [(t, m) for t, _, m in events]):
        track, now = mido.MidiTrack(), 0
        for t, msg in timed:
            track.append(msg.copy(time=t - now))
            now = t
        track.append(mido.MetaMessage("end_of_track", time=max(0, end_tick - now)))
        mid.tracks.append(track)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mid.save(str(tmp))
    os.replace(tmp, path)
