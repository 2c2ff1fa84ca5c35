"""The player's tempo: the beat, its phase and the meter taken from the onsets of what they play (``--bpm auto``).

- ``estimate_beat(notes)`` (pure: times are passed in): from a phrase (onset times, velocities, pitches and,
  where known, note-offs), the 16th-note grid it was played on: the step's length, the time of one beat, and
  a guess at the meter and where its bars begin.
- ``PlayerTempo``: the listening part's ear (``listen.Listening(tempo=...)``, producer thread). Responding,
  it takes a phrase's grid when the phrase ends and moves the engine's grid (``clock.TempoGrid.retime``) so
  the answer starts on a beat of that grid continued, at its tempo. Accompanying, it locks onto the grid of
  the first ``LOCK_ONSETS`` onsets, then places each onset on the grid followed, fits a line through the
  recent ones (time against grid step, the more recent the heavier) and moves the grid toward it a little
  every step (``PHASE_STEP``, ``TEMPO_STEP``: smooth, never a step backwards), so the accompaniment follows
  an accelerando or a ritardando; it guesses the meter and bar line again from all it has heard on that grid.

How a phrase's grid is found:

1. Onsets closer than ``CHORD_SECONDS`` are one onset (a chord, a flam).
2. The *tatum*, the shortest spacing every onset keeps to: for each candidate spacing (geometric,
   ``TATUM_RANGE``), each inter-onset interval is rounded to a whole number of it, and a straight line
   fitted through (index, time) refines spacing and phase; the spacing holds if at least ``FIT_SHARE`` of
   the onsets lie within ``TOLERANCE`` of the line. The coarsest spacing that holds is the tatum (a finer one
   always fits too: the coarsest says the most).
3. How many 16ths the tatum is (1, 2, 4 or 8): the slowest reading whose tempo is at least ``SLOWEST_BPM``.
   A phrase of eighths at 70 bpm and one of sixteenths at 140 have the same onsets; nothing in the onsets
   tells them apart, and a reading twice too slow still puts every note on the player's grid, where one
   twice too fast halves it.
4. The meter and the bar line together (``_metre``): every meter of ``CANDIDATE_METERS`` at every offset
   is scored -- how closely the onsets' weights (long, loud, melodically accented notes weigh more) follow
   the meter's pattern of strong and weak 16ths, less the syncopation that reading implies (long notes
   starting on weak places), plus a bonus where the phrase ends (or starts) on a bar line. The best reading
   wins; another meter than 4/4 must beat 4/4 by a margin (``Cues.margin``). The beat follows from the bar line.
   How much each cue counts (``Cues``) differs between a whole phrase and a player playing on, whose meter is
   guessed again as they play (``FOLLOW_CUES``). (Tuned on the ``tune`` part of the held-out folk tunes;
   benchmarks/tempo.py reports on the other.)
"""

from __future__ import annotations

import collections
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
METER_MARGIN = 0.02  # how much higher than 4/4's another meter's score (``_metre``) must be for it to be chosen
SYNC_WEIGHT = 2.0  # the score a reading loses per unit of syncopation per onset (``_syncopation``)
ACCENT_WEIGHT = 0.8  # weight a melodic accent adds to an onset: a turn of the contour, or the note after a leap...
LEAP = 3  # ...of at least this many semitones
END_BONUS = 0.4  # a reading whose bar line falls where the phrase ends (its last note's end, to a 16th)...
START_BONUS = 0.25  # ...or that starts it on a bar line or an upbeat of at most half a bar, scores this much more
PICKUP_STEPS = 2  # a first onset at most this many 16ths (an eighth) before a beat is a pickup to it


@dataclass(frozen=True)
class Cues:
    """How much each cue counts when the meter and bar line are guessed (``_weights``, ``_metre``): what a turn of
    the contour and a note reached by a leap add to an onset's weight, what a reading loses per unit of
    syncopation per onset, what it gains for starting the notes on a bar line or a short upbeat, what it gains
    for starting them on a beat or a pickup of at most ``PICKUP_STEPS`` to one, by how much another meter's
    best reading must beat 4/4's to be chosen, and how much 6/8 gains for each unit of ``_in_threes``."""

    turn: float
    leap: float
    sync: float
    start: float
    beat_start: float = 0.0
    margin: float = METER_MARGIN
    period: float = 0.0


# A whole phrase (respond; the lock's first guess): the constants above, tuned on phrases of 4 bars.
PHRASE_CUES = Cues(ACCENT_WEIGHT, ACCENT_WEIGHT, SYNC_WEIGHT, START_BONUS)
# A player playing on (accompany, guessing again from all it has heard; tuned on the ``tune`` part by guessing
# at every 4th onset of bars 2..10 and scoring the beats of the bar ahead): in running notes a leap mostly goes
# to a note off the beat (a pedal note, the lower line of a broken figure), so it counts against the beat.
# Whatever bar a tune is in, it starts on a beat or a short pickup to one (the tune part by the same measure:
# 0.815 -> 0.826 on-beat share with ``beat_start`` 0.15 and no margin; 0.1 and 0.2 gave 0.828 and 0.827, an
# eighth-only pickup 0.738), and 4/4 earns no head start over the other meters once the notes go on. A jig's
# running eighths go in threes (``_in_threes``; 0.826 -> 0.847 with ``period`` 1.0; by the lab's guesses at
# every 4th onset 0.867 -> 0.886, and 0.883..0.887 for 0.5..1.3 or other weights of its three terms).
FOLLOW_CUES = Cues(0.8, -0.8, 1.0, 0.0, beat_start=0.15, margin=0.0, period=1.0)


@dataclass(frozen=True)
class Note:
    """One note the player played: its onset, velocity and (when known) its note-off, in seconds."""

    onset: float
    velocity: int = 80
    off: float | None = None
    pitch: int = 60


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
        """The first beat of the meter (a quarter; in 6/8 a dotted quarter) at or after ``after``: (its time, its
        step index)."""
        beat = self.meter.beat_steps(STEPS_PER_BEAT)
        bar0 = round((self.bar_time - self.beat_time) / self.step_seconds)  # a bar line's step: beats count from it
        n = bar0 + math.ceil((self.index(after) - bar0) / beat - 1e-9) * beat
        return self.time_of(n), n

    def bar_position(self, n: int) -> int:
        """Steps into its bar of grid step ``n``."""
        bar = self.meter.bar_steps(STEPS_PER_BEAT)
        return int(round(n - (self.bar_time - self.beat_time) / self.step_seconds)) % bar

    def describe(self) -> str:
        return f"{self.bpm:.1f} bpm, {self.meter}{' (guessed)' if self.meter_guessed else ''}"


def _merge(notes: Sequence[Note]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Onset times (sorted, chords merged), their loudest velocity, their note-offs (nan: unknown) and their
    highest pitch."""
    notes = sorted(notes, key=lambda n: n.onset)
    times, vels, offs, pitches = [], [], [], []
    for n in notes:
        off = np.nan if n.off is None else n.off
        if times and n.onset - times[-1] < CHORD_SECONDS:
            vels[-1] = max(vels[-1], n.velocity)
            offs[-1] = np.nanmax([offs[-1], off]) if not (np.isnan(offs[-1]) and np.isnan(off)) else np.nan
            pitches[-1] = max(pitches[-1], n.pitch)
            continue
        times.append(n.onset)
        vels.append(n.velocity)
        offs.append(off)
        pitches.append(n.pitch)
    return np.array(times, float), np.array(vels, float), np.array(offs, float), np.array(pitches, float)


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
                  ended: bool = True, cues: Cues = PHRASE_CUES) -> BeatEstimate | None:
    """The 16th grid a phrase was played on (module docstring), or None with fewer than ``MIN_ONSETS`` onsets
    (or none that keep to any grid).

    meter: the meter, if the player said (``--meter``); else guessed. slowest: see ``SLOWEST_BPM``.
    ended: the notes are a whole phrase (its end tells where a bar ends); False: the player plays on.
    cues: how much each cue to the meter counts (``Cues``).
    """
    times, vels, offs, pitches = _merge(notes)
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
    weight = _weights(times, vels, offs, step, pitches, cues)
    guessed = meter is None
    end = int(steps[-1] + max(1, round(float(_lengths(times, offs, step)[-1]))))  # where the phrase ends, in 16ths
    meter, bar_line = _metre(steps, weight, meter, end if ended else None, cues)
    beat_time = phase + (bar_line % STEPS_PER_BEAT) * step  # a beat: the bar line, or a beat from it
    bar_time = phase + bar_line * step
    return BeatEstimate(step, beat_time, meter, bar_time, share, len(times), guessed)


def _lengths(times: np.ndarray, offs: np.ndarray, step: float) -> np.ndarray:
    """How long each onset lasts, in steps: to the next onset; the last one to its note-off, else a beat."""
    last = offs[-1] if not np.isnan(offs[-1]) else times[-1] + STEPS_PER_BEAT * step
    return np.diff(np.append(times, max(last, times[-1] + step))) / step


def _accents(pitches: np.ndarray, cues: Cues = PHRASE_CUES) -> np.ndarray:
    """Melodic accents: ``cues.turn`` for a turn of the contour (a note higher or lower than both its neighbours),
    plus ``cues.leap`` for a note reached by a leap of at least ``LEAP`` semitones."""
    step = np.diff(pitches)
    into = np.concatenate([[0.0], step])  # the interval into each note
    out = np.concatenate([step, [0.0]])  # ...and out of it
    return cues.turn * (into * out < 0) + cues.leap * (np.abs(into) >= LEAP)


def _weights(times: np.ndarray, vels: np.ndarray, offs: np.ndarray, step: float,
             pitches: np.ndarray | None = None, cues: Cues = PHRASE_CUES) -> np.ndarray:
    """How strongly each onset marks its place: how long it lasts in steps (to the next onset; the last one to
    its note-off, else a beat), on a log scale, how loud it is against the phrase, and (given the pitches)
    whether the melody accents it (``_accents``)."""
    length_steps = np.clip(_lengths(times, offs, step), 0.5, 16)
    spread = vels.std() if len(vels) > 1 else 0.0
    loud = (vels - vels.mean()) / spread if spread > 0 else np.zeros_like(vels)
    w = np.log2(1 + length_steps) + 0.25 * loud
    if pitches is not None and len(pitches) == len(times):
        w = w + _accents(pitches, cues)
    return w


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


def _syncopation(steps: np.ndarray, ends: np.ndarray, level: np.ndarray, offset: int) -> float:
    """How much the notes go against a reading (Longuet-Higgins & Lee): for each note (from ``steps`` to ``ends``,
    in 16ths) that sounds through a place stronger (``level``, a bar of ``template`` with its bar line at
    ``offset``) than the one it starts on, the difference."""
    bar = len(level)
    total = 0.0
    for s, e in zip(steps, ends):
        if e - s > 1:
            inside = level[(np.arange(s + 1, min(e, s + bar + 1)) - offset) % bar].max()
            total += max(0.0, inside - level[(s - offset) % bar])
    return total


def _in_threes(steps: np.ndarray, pitches: np.ndarray) -> float:
    """How much more the notes (their grid steps, from 0, and pitches) repeat themselves at the periods of 6/8 than
    at those of 2/4: the share of 16ths whose onset or rest comes back a dotted quarter later, less the share that
    comes back a quarter later, plus the share of onsets reached by the same interval as the onset a bar of 6/8
    later (and two bars), less the same a bar of 2/4 later (and two). A jig's running eighths go in threes, a
    reel's in twos and fours; the rhythm alone cannot tell them apart."""
    span = int(steps[-1]) + 1
    on = np.zeros(span, bool)
    on[steps] = True
    into = np.full(span, np.nan)  # the interval that reaches each onset (none at the first: equal to nothing)
    into[steps[1:]] = np.diff(np.asarray(pitches, float))

    def rhythm(lag: int) -> float:
        return float((on[:-lag] == on[lag:]).mean()) if span > lag else 0.0

    def intervals(lag: int) -> float:
        if span <= lag:
            return 0.0
        return float((on[:-lag] & on[lag:] & (into[:-lag] == into[lag:])).sum() / on.sum())

    return rhythm(6) - rhythm(4) + intervals(12) - intervals(8) + intervals(24) - intervals(16)


def _metre(steps: np.ndarray, weight: np.ndarray, meter: Meter | None,
           end: int | None = None, cues: Cues = PHRASE_CUES, pitches: np.ndarray | None = None) -> tuple[Meter, int]:
    """The meter (``meter`` if given, else the best of ``CANDIDATE_METERS``) and the 16th of the phrase, counted
    from its first onset, on which a bar line falls. Each reading (a meter, a bar line) scores:

    - how closely the weight of the onsets (zero where there is none) follows the meter's ``template`` (a
      correlation, so bar lengths compare fairly);
    - less ``cues.sync`` times its syncopation per onset (long notes start on strong places: a jig's
      quarter-eighth pattern goes against 4/4, a 3/4 tune's dotted half against 4/4's half bar);
    - plus ``END_BONUS`` if a bar line falls where the phrase ends (``end``: its last note's end, or up to a
      16th after it, as a player lets go early; None: the notes go on, no bonus), ``cues.start`` if its
      first onset is on a bar line or an upbeat of at most half a bar, and ``cues.beat_start`` if it is on a
      beat or at most ``PICKUP_STEPS`` 16ths before one;
    - and, for 6/8 (given the ``pitches``), ``cues.period`` times how much more the notes repeat in threes of
      eighths than in twos (``_in_threes``).

    The best reading wins; another meter than 4/4 must beat 4/4's best by ``cues.margin``."""
    steps = np.asarray(steps).astype(int)
    span = int(steps.max()) + 1
    last = int(steps[-1]) + STEPS_PER_BEAT if end is None else int(end)
    ends = np.append(steps[1:], max(last, int(steps[-1]) + 1))
    x = np.zeros(span)
    np.add.at(x, steps, weight)
    # 6/8's share of the threes: the same for each of its readings, so it counts only where the meter is chosen
    choosing = meter is None and cues.period and pitches is not None
    compound = cues.period * _in_threes(steps, pitches) if choosing else 0.0
    scores = {}
    for m in (meter,) if meter is not None else CANDIDATE_METERS:
        t = template(m)
        bar = len(t)
        beat = m.beat_steps(STEPS_PER_BEAT)
        for o in range(bar):
            y = t[(np.arange(span) - o) % bar]
            if np.std(y) == 0 or np.std(x) == 0:
                continue
            r = float(np.corrcoef(x, y)[0, 1])
            r -= cues.sync * _syncopation(steps, ends, t, o) / len(steps)
            if end is not None and (end - o) % bar in (0, bar - 1):
                r += END_BONUS
            first = (-o) % bar  # the first onset's place in its bar
            if first == 0 or bar - first <= bar // 2:
                r += cues.start
            if first % beat == 0 or beat - first % beat <= PICKUP_STEPS:
                r += cues.beat_start
            if m.compound:
                r += compound
            if r > scores.get(m, (-np.inf,))[0] + 1e-12:
                scores[m] = (r, o)
    if meter is not None:
        return meter, scores.get(meter, (0.0, 0))[1]
    if not scores:
        return Meter(4, 4), 0
    common = scores.get(Meter(4, 4), (-np.inf, 0))
    m = max(scores, key=lambda k: scores[k][0])  # (the first of CANDIDATE_METERS on a tie)
    if scores[m][0] - common[0] < cues.margin:
        return Meter(4, 4), common[1]  # 4/4 unless another meter fits clearly better
    return m, scores[m][1]


def meter_playing_on(steps: Sequence[int], velocities: Sequence[int], pitches: Sequence[int],
                     meter: Meter | None = None) -> tuple[Meter, int]:
    """The meter (``meter`` if the player said) and a grid step on which a bar line falls, guessed from the onsets
    heard so far of a player who plays on (accompany, ``PlayerTempo``): each onset's grid step, velocity and
    pitch. The cues of ``FOLLOW_CUES``; the last onset lasts a beat as far as anyone knows."""
    j = np.asarray(steps, int)
    p = np.asarray(pitches, float)
    weight = _weights(j.astype(float), np.asarray(velocities, float), np.full(len(j), np.nan), 1.0, p, FOLLOW_CUES)
    meter, bar_line = _metre(j - j[0], weight, meter, cues=FOLLOW_CUES, pitches=p)
    return meter, int(j[0] + bar_line)


def played_time(step: np.ndarray | float, bpm: float, drift: float = 0.0, over: float = 128.0,
                begin: float = 0.0) -> np.ndarray:
    """When a player reaches grid ``step`` (16ths from their start, fractional) who starts at ``bpm`` and whose tempo
    changes by ``drift`` (0.1: 10% faster; -0.1: slower) evenly over ``over`` steps from step ``begin``, then
    stays."""
    x = np.asarray(step, float)
    s0 = 60.0 / bpm / STEPS_PER_BEAT
    steady = np.minimum(x, begin) * s0
    if drift == 0:
        return x * s0
    y = np.maximum(x - begin, 0.0)
    c = drift / over  # the tempo is (1 + c * y) times the first, up to ``over``
    inside = s0 / c * np.log1p(c * np.minimum(y, over))
    return steady + inside + np.maximum(y - over, 0.0) * s0 / (1 + drift)


def perform(notes: np.ndarray, bpm: float, rng: np.random.Generator, start: float = 0.0, jitter: float = 0.010,
            velocity: tuple[int, int] = (50, 110), legato: float = 0.9, drift: float = 0.0,
            over: float = 128.0, begin: float = 0.0) -> list[Note]:
    """A player's performance of ``notes`` (rows pitch, start step, end step[, ...] on the 16th grid) at ``bpm``
    from ``start``: each onset off by a Gaussian ``jitter`` (s), velocities uniform in ``velocity``, each note
    held for ``legato`` of its written length; the tempo drifting by ``drift`` over ``over`` steps
    (``played_time``). For tests and benchmarks."""
    out = []
    for row in notes:
        s, e = float(row[1]), float(row[2])
        on = start + float(played_time(s, bpm, drift, over, begin)) + rng.normal(0, jitter)
        release = start + float(played_time(s + legato * (e - s), bpm, drift, over, begin))
        off = max(on + 0.02, release + rng.normal(0, jitter))
        out.append(Note(on, int(rng.integers(velocity[0], velocity[1] + 1)), off, int(row[0])))
    return out


# ---- the listening part's ear for the player's tempo ---------------------------------------------------------

ANSWER_MARGIN = 0.1  # s: at least this before an answer's first beat, to hear the phrase and make the first step
PHRASE_STEPS = 128  # the most of a phrase the model hears before answering (the last 8 bars of 4/4)
RECENT_ONSETS = 64  # the most onsets a tempo is taken from (the latest)
LOCK_ONSETS = 8  # accompanying: onsets before it locks onto the player's beat...
LOCK_BEATS = 2.0  # ...spanning at least this many beats
ON_GRID = 0.35  # of a step: an onset this close to a step of the grid followed is on it
LOST_AFTER = 4  # onsets in a row off that grid: the beat is lost, and found again as at the start
FOLLOW_WINDOW = 32  # steps: the player's onsets the follower fits a line through...
FOLLOW_HALF_LIFE = 12.0  # ...each weighing half as much every this many steps back
PHASE_STEP = 0.1  # of a step: the most the grid moves per step to meet the player (smooth, never backwards)
TEMPO_STEP = 0.02  # the most the step's length changes per step
METER_STEPS = 256  # steps of onsets the meter is guessed again from while following (the last 16 bars of 4/4)...
REGROUP_ONSETS = 8  # ...once it has at least this many onsets on the grid...
REGROUP_AFTER = 2  # ...and the same guess this many onsets in a row


class PlayerTempo:
    """``--bpm auto`` in the listening part: hears the player's notes and moves the engine's grid to their tempo.

    Respond mode: the notes of a phrase are kept; when it ends, ``answer`` takes its grid (``estimate_beat``),
    lets the model hear the phrase quantised on it, and moves the engine's grid so the answer starts on a beat
    of the phrase's grid continued, at its tempo. Accompany mode: ``follow`` before each step; once
    ``LOCK_ONSETS`` onsets keep to a grid it locks onto it (the engine's next step on one of its steps, the
    model's bar on the player's), then fits a line through the recent onsets on that grid and nudges the
    grid toward it, step by step. The producer thread only (the listening part's).

    meter: the player's meter if they said (``--meter``), else guessed from each phrase.
    say(line): told the tempo taken, in one line, when it changes.
    """

    def __init__(self, meter: Meter | None = None, say=None):
        self.meter = meter
        self.say = say
        self.notes: list[list] = []  # [onset, velocity, off or None, pitch]: a phrase, or the recent notes
        self._held: dict[tuple[int, int], list] = {}  # (channel, pitch) -> its note, while it sounds
        self._estimated: tuple[int, BeatEstimate | None] = (-1, None)  # (len(notes), estimate) cached
        self.taken: BeatEstimate | None = None  # the last tempo taken
        self.line: str | None = None  # what was said of it
        self.locked = False  # accompanying: following the player's beat
        self.regroups = 0  # times the meter or the bar line was guessed again while following
        self.locks = 0  # times it locked (found the beat again after losing it)
        self._pairs: collections.deque = collections.deque(maxlen=4 * FOLLOW_WINDOW)  # (grid step, onset)
        # (grid step, velocity, pitch) of the onsets on the grid followed, for the meter (``_regroup``)
        self._accents: collections.deque = collections.deque(maxlen=METER_STEPS)
        self._new: list[tuple[float, int, int]] = []  # (onset, velocity, pitch) heard since the last ``follow``
        self._guess: tuple | None = None  # the meter and bar line guessed last, and how many times in a row
        self._same = 0
        self._last_onset = -math.inf
        self._misses = 0
        self._since = -math.inf  # notes before this are not used to lock again

    # ---- hearing ------------------------------------------------------------------------------------------

    def feed(self, t: float, msg) -> None:
        """A note message heard at ``t``."""
        key = (msg.channel, msg.note)
        if msg.type == "note_on" and msg.velocity > 0:
            if key in self._held:  # struck again while sounding: the first one ends here
                self._held[key][2] = t
            note = [t, msg.velocity, None, msg.note]
            self.notes.append(note)
            self._held[key] = note
            if len(self.notes) > 8 * RECENT_ONSETS:
                del self.notes[: len(self.notes) - 8 * RECENT_ONSETS]
            if t - self._last_onset >= CHORD_SECONDS:
                self._new.append((t, msg.velocity, msg.note))
                self._last_onset = t
        elif msg.type in ("note_on", "note_off"):
            note = self._held.pop(key, None)
            if note is not None:
                note[2] = t

    @property
    def sounding(self) -> bool:
        return bool(self._held)

    def last_event(self) -> float:
        """The last onset or note-off heard."""
        return max((max(n[0], n[2] if n[2] is not None else n[0]) for n in self.notes), default=-math.inf)

    def reset(self) -> None:
        """Forget the notes and the beat (a panic)."""
        self.notes.clear()
        self._held.clear()
        self._estimated = (-1, None)
        self._pairs.clear()
        self._accents.clear()
        self._new.clear()
        self.locked = False
        self._misses = 0

    def _as_notes(self, since: float = -math.inf) -> list[Note]:
        notes = [Note(n[0], n[1], n[2], n[3]) for n in self.notes if n[0] >= since]
        onsets = sorted({round(n.onset, 6) for n in notes})
        if len(onsets) > RECENT_ONSETS:
            first = onsets[-RECENT_ONSETS]
            notes = [n for n in notes if n.onset >= first]
        return notes

    def estimate(self) -> BeatEstimate | None:
        """The grid of the notes heard so far (cached until another note comes)."""
        if self._estimated[0] != len(self.notes):
            self._estimated = (len(self.notes), estimate_beat(self._as_notes(), self.meter))
        return self._estimated[1]

    def _took(self, est: BeatEstimate) -> None:
        old, self.taken = self.taken, est
        if self.say is not None and (old is None or abs(old.bpm - est.bpm) >= 1.0 or old.meter != est.meter):
            self.line = f"took the tempo from your playing: {est.describe()}"
            self.say(self.line)

    # ---- respond: answer a phrase on its grid ------------------------------------------------------------

    def answer(self, k: int, now: float, timing, generator, lead: float = 0.0) -> BeatEstimate:
        """The phrase heard has ended at ``now`` (the producer is about to make step ``k``, which stays silent):
        the model hears it on its own grid and the engine's grid moves so step ``k + 1``, the answer's first, falls
        on a beat of that grid continued, at its tempo. Returns the grid taken (the current one, with no
        estimate: fewer than ``MIN_ONSETS`` onsets, or none that keep to a grid)."""
        est = self.estimate()
        if est is None:  # the engine's own grid, bar lines where the model has them
            s = timing.deadline(k + 1) - timing.deadline(k)
            bar_time = timing.deadline(k) - generator.bar_position() * s
            est = BeatEstimate(s, bar_time, self.meter or generator.meter, bar_time, 0.0, 0, False)
        s = est.step_seconds
        due, n = est.next_beat(max(now + lead + ANSWER_MARGIN, timing.deadline(k) + s / 2))
        grid = self._phrase_grid(est, n)
        bar = est.meter.bar_steps(STEPS_PER_BEAT)
        generator.set_meter(est.meter, (est.bar_position(n) - generator.step_index - len(grid)) % bar)
        generator.prime(grid)
        timing.retime(k + 1, due, s)
        self.notes.clear()
        self._estimated = (-1, None)
        if est.onsets:
            self._took(est)
        return est

    def _phrase_grid(self, est: BeatEstimate, end: int):
        """The phrase on ``est``'s grid, from its first onset's step to the step before ``end`` (at most
        ``PHRASE_STEPS``)."""
        from ..music.encoding import N_MIDI, Grid

        notes = self._as_notes()
        first = min((round(est.index(n.onset)) for n in notes), default=end - 1)
        n0 = max(min(first, end - 1), end - PHRASE_STEPS)
        length = end - n0
        onset = np.zeros((length, N_MIDI), bool)
        sound = np.zeros((length, N_MIDI), bool)
        velocity = np.zeros((length, N_MIDI), np.uint8)
        for n in notes:
            a = round(est.index(n.onset)) - n0
            b = round(est.index(n.off)) - n0 if n.off is not None else a + 1
            if a >= length or b <= 0:
                continue
            b = min(max(b, a + 1), length)
            if a >= 0:
                onset[a, n.pitch] = True
                velocity[a, n.pitch] = max(velocity[a, n.pitch], n.velocity)
            sound[max(a, 0):b, n.pitch] = True
        return Grid(onset, sound, STEPS_PER_BEAT, velocity=velocity, meter=est.meter)

    # ---- accompany: lock onto the player's beat and follow it ---------------------------------------------

    def follow(self, k: int, now: float, timing, generator, lead: float = 0.0) -> None:
        """Before step ``k`` is made (producer thread): move the grid from step ``k + 1`` toward the player's."""
        onsets, self._new = self._new, []
        if not self.locked:
            self._lock(k, now, timing, generator, lead)
            return
        for t, velocity, pitch in onsets:
            x = timing.index_at(t)
            j = round(x)
            if abs(x - j) <= ON_GRID:
                self._pairs.append((j, t))
                if not self._accents or j > self._accents[-1][0]:
                    self._accents.append((j, velocity, pitch))
                self._misses = 0
            else:
                self._misses += 1
                if self._misses == 1:
                    self._since = t
        if self._misses >= LOST_AFTER:  # off the grid: find the beat again from the notes since the first miss
            self.locked = False
            self._pairs.clear()
            self._accents.clear()
            self._misses = 0
            return
        if onsets:
            self._regroup(k, generator)
        recent = [(j, t) for j, t in self._pairs if j >= k - FOLLOW_WINDOW]
        if len(recent) < 3 or recent[-1][0] - recent[0][0] < 4:
            return
        j = np.array([p[0] for p in recent], float)
        t = np.array([p[1] for p in recent])
        w = 0.5 ** ((k - j) / FOLLOW_HALF_LIFE)
        b, a = np.polyfit(j, t, 1, w=np.sqrt(w))
        s = timing.deadline(k + 1) - timing.deadline(k)
        if not (0.5 * s < b < 2 * s):
            return  # (a line through too few onsets that says nothing)
        cur = timing.deadline(k + 1)
        due = cur + float(np.clip(a + b * (k + 1) - cur, -PHASE_STEP * s, PHASE_STEP * s))
        step = float(np.clip(b, s * (1 - TEMPO_STEP), s * (1 + TEMPO_STEP)))
        if abs(due - cur) > 1e-4 or abs(step - s) > 1e-6:
            timing.retime(k + 1, due, step)

    def _lock(self, k: int, now: float, timing, generator, lead: float) -> None:
        notes = self._as_notes(self._since)
        if len({round(n.onset, 3) for n in notes}) < LOCK_ONSETS:
            return
        est = estimate_beat(notes, self.meter, ended=False)
        if est is None or (max(n.onset for n in notes) - min(n.onset for n in notes)) < LOCK_BEATS * 60.0 / est.bpm:
            return
        s = est.step_seconds
        n = math.ceil(est.index(max(now + lead + ANSWER_MARGIN, timing.deadline(k) + s / 2)) - 1e-9)
        bar = est.meter.bar_steps(STEPS_PER_BEAT)
        # The model's bar on the player's: step k + 1 at the place in the bar the player's step n has.
        generator.set_meter(est.meter, (est.bar_position(n) - generator.step_index - 1) % bar)
        timing.retime(k + 1, est.time_of(n), s)
        times, vels, _, pitches = _merge(notes)
        for onset, velocity, pitch in zip(times, vels, pitches):
            m = round(est.index(onset))
            if abs(est.index(onset) - m) <= ON_GRID:
                self._pairs.append((k + 1 + m - n, float(onset)))
                self._accents.append((k + 1 + m - n, int(velocity), int(pitch)))
        self._guess = None
        self.locked = True
        self.locks += 1
        self._took(est)

    def _regroup(self, k: int, generator) -> None:
        """Following, the meter (unless the player said) and the bar line guessed again from every onset on the
        grid since the lock (far more than the lock had): when ``REGROUP_AFTER`` guesses in a row say the model's
        bars are elsewhere, they move (the grid's time does not: only which of its steps are beats and bar
        lines)."""
        if len(self._accents) < REGROUP_ONSETS:
            return
        meter, bar_line = meter_playing_on(*zip(*self._accents), meter=self.meter)
        bar = meter.bar_steps(STEPS_PER_BEAT)
        guess = (meter, bar_line % bar)  # the meter, and a grid step on a bar line (mod the bar)
        if guess != self._guess:
            self._guess, self._same = guess, 1
            return
        self._same += 1
        if self._same < REGROUP_AFTER:
            return
        place = (k - guess[1]) % bar  # where step k falls in the bar guessed
        if generator.meter == meter and generator.bar_position() == place:
            return
        generator.set_meter(meter, (place - generator.step_index) % bar)
        self.regroups += 1
