"""The player's tempo: the beat, its phase and the meter taken from the onsets of what they play (``--bpm auto``).

Two parts, both pure (times are passed in, no clock is read):

- ``estimate_beat(notes)``: from a phrase (onset times, with their velocities and, where known, their
  note-offs), the 16th-note grid it was played on: the step's length, the time of one beat, and a guess
  at the meter and where its bars begin. Respond mode answers on this grid continued; accompany mode
  locks onto it.
- ``BeatFollower``: while accompanying, each onset the player plays is placed on the grid followed so far,
  and a line fitted through the recent ones (time against grid index, the more recent the heavier) says
  where the grid is now and how fast it goes, so the accompaniment follows an accelerando, a ritardando
  or a held note.

How a phrase's grid is found:

1. Onsets closer than ``CHORD_SECONDS`` are one onset (a chord, a flam).
2. The *tatum*, the shortest spacing every onset keeps to: for each candidate spacing (geometric,
   ``TATUM_RANGE``), each inter-onset interval is rounded to a whole number of it, and a straight line
   fitted through (index, time) refines spacing and phase; the spacing holds if at least ``FIT_SHARE`` of
   the onsets lie within ``tolerance`` of the line. The coarsest spacing that holds is the tatum (a finer one
   always fits too: the coarsest says the most).
3. How many 16ths the tatum is (1, 2 or 4): the slowest reading whose tempo is at least ``SLOWEST_BPM``. A
   phrase of eighths at 70 bpm and one of sixteenths at 140 have the same onsets; nothing in the onsets
   tells them apart, and a reading twice too slow still puts every note on the player's grid, where one
   twice too fast halves it.
4. Which of the four 16ths is the beat: the one whose onsets carry the most weight -- long notes (the
   time to the next onset) and loud ones.
5. The meter: bars of 2, 3 or 4 beats, the bar line where the heaviest notes fall most often; 3 beats
   whose weight sits on the half bar is 6/8. Where no bar length stands out by ``METER_MARGIN``, 4/4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..music.encoding import Meter

STEPS_PER_BEAT = 4
CHORD_SECONDS = 0.035  # onsets closer than this are one (a chord, or a player's spread)
TATUM_RANGE = (0.05, 1.5)  # s: the spacings tried
TATUM_RATIO = 1.015  # between one spacing tried and the next
FIT_SHARE = 0.9  # of the onsets that must lie on a grid for it to hold (an ornament or two may not)
TOLERANCE = 0.035  # s: how far from the grid an onset may lie and be on it (a player's timing)...
TOLERANCE_SHARE = 0.3  # ...and at most this share of the spacing
SLOWEST_BPM = 60.0  # the slowest tempo read from a phrase whose level is ambiguous (see step 3)
FASTEST_BPM = 240.0
MIN_ONSETS = 4  # fewer than this: no estimate
METER_MARGIN = 0.1  # how much closer than 4/4's another meter's template must follow the weights to be chosen


@dataclass(frozen=True)
class Note:
    """One note the player played: its onset, velocity and (when known) its note-off, in seconds."""

    onset: float
    velocity: int = 80
    off: float | None = None


@dataclass(frozen=True)
class BeatEstimate:
    """A grid of 16th notes: step ``n`` is at ``beat_time + n * step_seconds``; step 0 is on a beat.

    meter: the meter guessed (or told); bar_time: the time of a bar line (a step on a beat of it).
    fit: the share of the phrase's onsets within tolerance of the grid; onsets: how many it was taken from.
    """

    step_seconds: float
    beat_time: float
    meter: Meter
    bar_time: float
    fit: float = 1.0
    onsets: int = 0
    meter_guessed: bool = False

    @property
    def bpm(self) -> float:
        return 60.0 / (self.step_seconds * STEPS_PER_BEAT)

    def index(self, t: float) -> float:
        """Where ``t`` falls on the grid, in steps from ``beat_time`` (fractional)."""
        return (t - self.beat_time) / self.step_seconds

    def time_of(self, n: float) -> float:
        return self.beat_time + n * self.step_seconds

    def next_beat(self, after: float) -> tuple[float, int]:
        """The first beat at or after ``after``: (its time, its step index)."""
        n = math.ceil(self.index(after) / STEPS_PER_BEAT - 1e-9) * STEPS_PER_BEAT
        return self.time_of(n), n

    def bar_position(self, n: int) -> int:
        """Steps into its bar of grid step ``n``."""
        bar = self.meter.bar_steps(STEPS_PER_BEAT)
        return int(round(n - (self.bar_time - self.beat_time) / self.step_seconds)) % bar

    def describe(self) -> str:
        return f"{self.bpm:.1f} bpm, {self.meter}{' (guessed)' if self.meter_guessed else ''}"


def _merge(notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Onset times (sorted, chords merged), their loudest velocity, and their note-offs (nan: unknown)."""
    notes = sorted(notes, key=lambda n: n.onset)
    times, vels, offs = [], [], []
    for n in notes:
        off = np.nan if n.off is None else n.off
        if times and n.onset - times[-1] < CHORD_SECONDS:
            vels[-1] = max(vels[-1], n.velocity)
            offs[-1] = np.nanmax([offs[-1], off]) if not (np.isnan(offs[-1]) and np.isnan(off)) else np.nan
            continue
        times.append(n.onset)
        vels.append(n.velocity)
        offs.append(off)
    return np.array(times, float), np.array(vels, float), np.array(offs, float)


def _fit(times: np.ndarray, spacing: float) -> tuple[float, float, np.ndarray, float] | None:
    """Onsets on a grid of about ``spacing``: (spacing, phase, index of each onset, share on it), or None."""
    iois = np.diff(times)
    steps = np.round(iois / spacing)
    if np.any(steps < 1):
        return None  # two onsets within one spacing: too coarse
    index = np.concatenate([[0.0], np.cumsum(steps)])
    if index[-1] < 1:
        return None
    b, a = np.polyfit(index, times, 1)
    if not (0.9 * spacing < b < 1.1 * spacing):
        return None
    res = np.abs(times - (a + b * index))
    tol = min(TOLERANCE, TOLERANCE_SHARE * b)
    share = float(np.mean(res <= tol))
    if share < FIT_SHARE:
        return None
    on = res <= tol  # refit on the onsets that hold, so an ornament does not pull the line
    if on.sum() >= 2 and np.ptp(index[on]) > 0:
        b, a = np.polyfit(index[on], times[on], 1)
    return float(b), float(a), index.astype(int), share


def tatum(times: np.ndarray) -> tuple[float, float, np.ndarray, float] | None:
    """The coarsest grid the onsets keep to (see the module docstring): (spacing, phase, indices, share)."""
    if len(times) < 2:
        return None
    lo, hi = TATUM_RANGE
    hi = min(hi, float(np.max(np.diff(times))) * 1.2)
    best = None
    n = int(math.log(hi / lo) / math.log(TATUM_RATIO)) + 1
    for i in range(n, -1, -1):  # coarsest first: the first that holds is the tatum
        got = _fit(times, lo * TATUM_RATIO ** i)
        if got is not None:
            best = got
            break
    return best


def estimate_beat(notes: Sequence[Note], meter: Meter | None = None, slowest: float = SLOWEST_BPM,
                  fallback_bpm: float | None = None) -> BeatEstimate | None:
    """The 16th grid a phrase was played on (module docstring), or None with fewer than ``MIN_ONSETS`` onsets
    (or none that keep to any grid).

    meter: the meter, if the player said (``--meter``); else guessed. slowest: see ``SLOWEST_BPM``.
    """
    times, vels, offs = _merge(notes)
    if len(times) < MIN_ONSETS:
        return None
    got = tatum(times)
    if got is None:
        return None
    spacing, phase, index, share = got
    # How many 16ths to the tatum: the slowest reading at least ``slowest`` bpm (and at most FASTEST_BPM).
    per = None
    for m in (1, 2, 4, 8):
        bpm = 60.0 * m / (STEPS_PER_BEAT * spacing)
        if bpm >= slowest:
            per = m
            break
    if per is None or 60.0 * per / (STEPS_PER_BEAT * spacing) > FASTEST_BPM:
        per = per or 8
        while per > 1 and 60.0 * per / (STEPS_PER_BEAT * spacing) > FASTEST_BPM:
            per //= 2
    step = spacing / per
    steps = index * per  # each onset's 16th, from the first
    weight = _weights(times, vels, offs, step)
    guessed = meter is None
    meter, bar_line = _metre(steps, weight, meter)
    beat_time = phase + (bar_line % STEPS_PER_BEAT) * step  # a beat: the bar line, or a beat from it
    bar_time = phase + bar_line * step
    return BeatEstimate(step, beat_time, meter, bar_time, share, len(times), guessed)


def _weights(times: np.ndarray, vels: np.ndarray, offs: np.ndarray, step: float) -> np.ndarray:
    """How strongly each onset marks its place: how long it lasts in steps (to the next onset; the last one to
    its note-off, else a beat), on a log scale, and how loud it is against the phrase."""
    last = offs[-1] if not np.isnan(offs[-1]) else times[-1] + STEPS_PER_BEAT * step
    length = np.diff(np.append(times, max(last, times[-1] + step)))
    length_steps = np.clip(length / step, 0.5, 16)
    spread = vels.std() if len(vels) > 1 else 0.0
    loud = (vels - vels.mean()) / spread if spread > 0 else np.zeros_like(vels)
    return np.log2(1 + length_steps) + 0.25 * loud


CANDIDATE_METERS = (Meter(4, 4), Meter(3, 4), Meter(2, 4), Meter(6, 8))


def template(meter: Meter) -> np.ndarray:
    """How strong each 16th of a bar of ``meter`` is: the bar line 4, the half bar (4/4, 6/8) 3, a beat 2,
    an eighth 1, a sixteenth 0."""
    bar = meter.bar_steps(STEPS_PER_BEAT)
    level = np.where(np.arange(bar) % 2 == 0, 1.0, 0.0)
    if meter.compound:
        level[:: meter.beat_steps(STEPS_PER_BEAT)] = 3.0
    else:
        level[::STEPS_PER_BEAT] = 2.0
        if bar == 16:
            level[8] = 3.0
    level[0] = 4.0
    return level


def _metre(steps: np.ndarray, weight: np.ndarray, meter: Meter | None) -> tuple[Meter, int]:
    """The meter (``meter`` if given, else the best of ``CANDIDATE_METERS``) and the 16th of the phrase, counted
    from its first onset, on which a bar line falls: where the weight of the onsets (zero where there is none)
    follows the meter's ``template`` most closely (a correlation, so bar lengths compare fairly)."""
    span = int(steps.max()) + 1
    x = np.zeros(span)
    np.add.at(x, steps, weight)
    best = (-np.inf, Meter(4, 4), 0)
    scores = {}
    for m in (meter,) if meter is not None else CANDIDATE_METERS:
        t = template(m)
        bar = len(t)
        for o in range(bar):
            y = t[(np.arange(span) - o) % bar]
            if np.std(y) == 0 or np.std(x) == 0:
                continue
            r = float(np.corrcoef(x, y)[0, 1])
            if r > scores.get(m, (-np.inf,))[0] + 1e-12:
                scores[m] = (r, o)
    if meter is not None:
        return meter, scores.get(meter, (0.0, 0))[1]
    common = scores.get(Meter(4, 4), (-np.inf, 0))
    r, m = max((v[0], k) for k, v in scores.items())  # (Meter orders by its fields: ties are rare)
    if r - common[0] < METER_MARGIN:
        return Meter(4, 4), common[1]  # 4/4 unless another meter fits clearly better
    return m, scores[m][1]


def perform(notes: np.ndarray, bpm: float, rng: np.random.Generator, start: float = 0.0, jitter: float = 0.010,
            velocity: tuple[int, int] = (50, 110), legato: float = 0.9) -> list[Note]:
    """A player's performance of ``notes`` (rows pitch, start step, end step[, ...] on the 16th grid) at ``bpm``
    from ``start``: each onset off by a Gaussian ``jitter`` (s), velocities uniform in ``velocity``, each note
    held for ``legato`` of its written length. For tests and benchmarks."""
    step = 60.0 / bpm / STEPS_PER_BEAT
    out = []
    for row in notes:
        s, e = float(row[1]), float(row[2])
        on = start + s * step + rng.normal(0, jitter)
        off = max(on + 0.02, start + (s + legato * (e - s)) * step + rng.normal(0, jitter))
        out.append(Note(on, int(rng.integers(velocity[0], velocity[1] + 1)), off))
    return out
