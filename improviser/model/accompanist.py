"""Three parts under the player's line, live: the tune on top, a bass beneath, a chord on every beat.

While the player plays a line (up to three notes at once), the generator hands its steps to the
``Accompanist``: on each beat of the meter it strikes one chord for alto, tenor and bass and holds it
to the next beat, as ``harmonise`` does offline -- but causally. On the beat the player's note is not
heard yet (it is heard at the next step), so the chord is chosen for the notes the tune is likely to
strike there:

- *rules* make the candidates: every voicing in chorale ranges under each likely next note
  (``harmonise.voicings``), and weigh them by how likely each is to make a common chord with the
  tune's note on the beat, under it (``FIT_WEIGHT``). How likely each next note is: how far Bach's
  sopranos move from the step before a beat to the beat (measured on the training chorales, in
  ``NEXT_NOTE``), within the key the player is heard in; consecutive fifths and octaves, leaps and
  notes outside the key cost as in ``harmonise``;
- the *model* judges the ``SHORTLIST`` the rules like best: the log-probability of each chord as its
  next frame, given everything it has heard and played -- a listening model was trained to play the
  lower parts of chorales under a soprano played by someone else, so this is its own judgement of the
  chord under this tune;
- the next step, when the beat's note has been heard, a chord that does not fit it (no common chord
  with it, or a part at or above it) is changed at once, for the note now known, by the rules alone
  (the model chose the beat's chord; asking it again here made a step's 99th percentile 1.06 ms, the
  rules alone 0.78-0.84 ms, against 0.63-0.65 before the accompanist: `benchmarks/generate.py
  --previous-code 74f0015 --player`; 30 tune-part files 76 / 99 / 97 / 77 / 95-96 % either way,
  parallels 2.6 and 3.4 per 100); so is any chord the tune moves down through.

A seed fixes the choices (with a temperature above 0 each candidate's score gets a Gumbel draw
scaled by it). The player silent for more than ``QUIET_STEPS``, or playing more than three notes at
once, and the generator plays as before.
"""

from __future__ import annotations

import functools

import numpy as np

from ..music import harmony_metrics as harmony
from ..music.listening_metrics import CONSONANT
from .harmonise import OUT_OF_KEY_COST, leading_costs, voicings
from .network import HOLD, ONSET
from .rules import Context, Rule

# P(the soprano's note on a beat - its note the step before), -5..+5 semitones: Bach's sopranos on the beats
# of the 4/4 training chorales (`load_bach_chorales(voices=True)`, the training split; 93 % of moves are
# within these). The same note (held or struck again) is the likeliest, then a step down, then a step up.
NEXT_NOTE = np.array([0.014, 0.016, 0.026, 0.211, 0.110, 0.298, 0.086, 0.162, 0.015, 0.008, 0.032])
NEXT_RANGE = np.arange(-5, 6)
HYPOTHESES = 4  # likely next notes whose voicings are candidates
FIT_WEIGHT = 8.0  # per unit of probability that the chord makes a common chord under the tune's next note
CONSONANCE_WEIGHT = 8.0  # per unit of probability that its parts are consonant with the tune's next note
# Per unit of probability that its bass is an octave or more under the tune's next note. 30 tune-part files
# through `accompany` (`evaluate --accompaniment --part tune`): a bass on 93 % of beats without it, 96 % at 2,
# 97 % at 4, common chords 76 / 75 / 76 %.
BASS_WEIGHT = 4.0
MISFIT_PARTS = 2  # a note of the tune dissonant with this many of its parts: the chord changes under it
# Candidates the voice leading is worked out for (those the fit and the key like best), and those the model
# judges. 30 tune-part files: 48 and 16 gave 76 / 99 / 97 / 76 / 94 % / 3.0, these 76 / 99 / 97 / 78 / 96 % / 3.2
# (consonant, on top, bass, common chords, four voices, parallels), in less time a beat.
LED = 32
SHORTLIST = 10
QUIET_STEPS = 8  # steps without the player before it plays freely again
MOST_HEARD = 3  # more of the player's notes at once than this is no line to accompany

# A chord's pitch classes as 12 bits -> is it a common chord (a triad with its third, or a seventh chord).
_COMMON = np.zeros(1 << 12, bool)
for _pcs in harmony.COMMON_CHORDS:
    _COMMON[sum(1 << p for p in _pcs)] = True


_CONSONANT = np.zeros(12, bool)
_CONSONANT[sorted(CONSONANT)] = True  # intervals (mod 12) consonant with the tune: no second, fourth, tritone, seventh


def _bits(pitches: np.ndarray) -> np.ndarray:
    """int (C, k) pitches -> (C,) bit masks of their pitch classes."""
    return np.bitwise_or.reduce(1 << (pitches % 12), axis=1)


def expected_leading(prev, prev_tune, cands: np.ndarray, hyps: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``harmonise.leading_costs`` of each candidate (C, 3), averaged over the tune's likely next notes."""
    c, h = len(cands), len(hyps)
    # One call for every (candidate, next note) pair: the leaps are the same for each note, the parallels not.
    each = leading_costs(prev, prev_tune, np.repeat(cands, h, axis=0), np.tile(hyps, c))
    return each.reshape(c, h) @ probs


def _best(score: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k highest scores (all, if fewer), highest first; ties in the order given."""
    if len(score) > k:
        part = np.argpartition(-score, k - 1)[:k]
        return part[np.argsort(-score[part], kind="stable")]
    return np.argsort(-score, kind="stable")


@functools.lru_cache(maxsize=48)
def _scale(key: tuple[int, str]) -> np.ndarray:
    from ..music.analysis import in_key

    return in_key(*key)


@functools.lru_cache(maxsize=1024)
def _ranked(tune: int, key, known: bool) -> tuple | None:
    """What the rules make of the voicings under a tune's note, whatever came before: (the candidates (C, 3), their
    scores for fitting under the likely next notes (or the note, ``known``) and in the key, the LED best of them,
    the likely next notes, their probabilities); None where no voicing fits. Kept per note and key: a tune comes
    back to its notes, so a beat's rules mostly cost only the voice leading from the last chord."""
    scale = None if key is None else _scale(key)
    if known:
        hyps, probs = np.array([tune]), np.array([1.0])
    else:
        hyps = tune + NEXT_RANGE
        probs = NEXT_NOTE if scale is None else NEXT_NOTE * np.where(scale[hyps % 12], 1.0, 0.1)
        top = np.argsort(-probs, kind="stable")[:HYPOTHESES]
        hyps, probs = hyps[top], probs[top] / probs[top].sum()
    cands, bits, consonant = _candidates(tuple(int(m) for m in hyps))
    if not len(cands):
        return None
    # For each likely next note (rows) and candidate (columns): a common chord under it, consonances with it.
    under = _COMMON[bits[None] | (1 << (hyps % 12))[:, None]] & (cands[:, 0][None] < hyps[:, None])
    consonant = consonant[hyps % 12]
    bass = hyps[:, None] - cands[:, 2][None] >= 12  # its lowest note an octave or more under the tune
    score = probs @ (FIT_WEIGHT * under + CONSONANCE_WEIGHT * consonant + BASS_WEIGHT * bass)
    if scale is not None:
        score -= OUT_OF_KEY_COST * (~scale[cands % 12]).sum(axis=1)
    for array in (cands, score, hyps, probs):
        array.flags.writeable = False  # shared by every beat that finds them here
    return cands, score, _best(score, LED), hyps, probs


@functools.lru_cache(maxsize=512)
def _candidates(sopranos: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The voicings under any of these notes, each once: (C, 3); their pitch classes as bits (C,); and (12, C)
    the share of their parts consonant with a note of each pitch class."""
    cands = np.unique(np.vstack([voicings(m) for m in sopranos]), axis=0)
    consonant = _CONSONANT[(np.arange(12)[:, None, None] - cands[None]) % 12].mean(axis=2)
    return cands, _bits(cands), consonant


class Accompanist(Rule):
    """Alto, tenor and bass under the player's line, one chord a beat (see the module's docstring). A rule of a
    ``StreamingGenerator``'s that takes the steps it accompanies; stepped by it only."""

    def __init__(self, low: int, n_pitches: int, states: int, rng: np.random.Generator):
        self.low, self.n_pitches, self.states = low, n_pitches, states
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        self.waiting: int | None = None  # steps since a first note was heard while it was not accompanying
        self._forget()

    def _forget(self) -> None:
        """Stop accompanying (the player stopped, or plays no line): the next line heard starts afresh."""
        self.chord: tuple[int, int, int] | None = None  # (alto, tenor, bass) sounding now
        self.tune: int | None = None  # the player's top note, last heard
        self.quiet = QUIET_STEPS + 1  # steps since the player was last heard
        self.since_beat = 0
        self.beat_chord: tuple | None = None  # the last beat's chord and the tune's note over it (voice leading)
        self.beat_tune: int | None = None
        self.struck_chord: tuple | None = None  # this beat's chord as struck, and the tune's note on the beat
        self.struck_tune: int | None = None
        self._ready: tuple | None = None  # (the inputs, the rules' shortlist) for the next beat, made a step ahead

    def take(self, ctx: Context) -> np.ndarray | None:
        """The step's states while it accompanies a line, else None (the model draws)."""
        states = self.step(ctx.net, ctx.start, ctx.heard, ctx.struck, ctx.on_beat, ctx.key, ctx.last.sound,
                           ctx.temperature)
        if states is not None and (ctx.position + 1) % ctx.meter.beat_steps(ctx.cfg.steps_per_beat) == 0:
            # The next step is a beat: the rules' part of its choice now, for the tune's note as heard so far (a
            # step that costs little), so the beat's own step is left the model's part (a note struck in between
            # makes it start again).
            inputs = (self.tune, ctx.key, False, self.struck_chord, self.struck_tune)
            self._ready = (inputs, self._shortlist(*inputs))
        return states

    def step(self, net, start: tuple, heard: list[int], struck: bool, on_beat: bool,
             key: tuple[int, str] | None, sounding: np.ndarray, temperature: float) -> np.ndarray | None:
        """This step's states (n_pitches,) of its own, or None where it does not accompany (the generator draws).

        heard: the player's notes sounding at the last step; struck: one of them was struck then;
        start: the model's ``step_logits`` for this step; sounding: bool (128,), its own notes at the last step.
        """
        if len(heard) > MOST_HEARD:
            self._forget()
            return None
        if self.tune is None:
            # Not accompanying yet: a note heard while it plays is a line only if another follows (or it goes on)
            # within QUIET_STEPS, so the last note of a phrase it listened to (a --prime file) is none.
            if not heard:
                self.waiting = None if self.waiting is None else self.waiting + 1
                return None
            if self.waiting is None or self.waiting > QUIET_STEPS:
                self.waiting = 0
                return None
            self.waiting = None
        if heard:
            self.tune, self.quiet = max(heard), 0
        else:
            self.quiet += 1
        if self.tune is None or self.quiet > QUIET_STEPS:
            self._forget()
            return None
        tune = self.tune
        self.since_beat = 0 if on_beat else self.since_beat + 1
        if self.since_beat == 1:
            self.struck_tune = tune  # the tune's note on the beat just gone, heard now
        if on_beat:
            # Led from the last beat's chord as struck, under the tune's note then: consecutive fifths and octaves
            # are heard from beat to beat (passing notes and changes between beats aside).
            self.beat_chord, self.beat_tune = self.struck_chord, self.struck_tune
            self._choose(net, start, tune, key, sounding, temperature, known=False)
            self.struck_chord, self.struck_tune = self.chord, tune
        elif self.chord is None or (heard and self._misfits(tune, struck)):
            self._choose(net, start, tune, key, sounding, temperature, known=True)
        elif struck:
            self._pass(tune, key)
        return self._states(sounding)

    def _pass(self, tune: int, key) -> None:
        """The tune struck a note between beats that is dissonant with one part: that part steps (a semitone or
        two, in the key) to a note consonant with it, in order between its neighbours -- an inner voice moving
        in thirds or sixths with the tune, as Bach's do -- or stays where no such step is."""
        chord = list(self.chord)
        scale = None if key is None else _scale(key)
        for v, p in enumerate(chord):
            if _CONSONANT[(tune - p) % 12]:
                continue
            upper = tune if v == 0 else chord[v - 1]
            lower = chord[v + 1] if v + 1 < len(chord) else 0
            for step in (-1, 1, -2, 2):
                q = p + step
                if lower < q < upper and _CONSONANT[(tune - q) % 12] and (scale is None or scale[q % 12]):
                    chord[v] = q
                    break
        self.chord = tuple(chord)

    def _misfits(self, tune: int, struck: bool) -> bool:
        """The chord is at or above the tune; or the tune's note just struck is the beat's and makes no common
        chord with it, or (any note) is dissonant with MISFIT_PARTS of its parts."""
        if max(self.chord) >= tune:
            return True
        if not struck:
            return False
        if self.since_beat == 1 and not _COMMON[_bits(np.array([[*self.chord, tune]]))[0]]:
            return True
        return int((~_CONSONANT[(tune - np.array(self.chord)) % 12]).sum()) >= MISFIT_PARTS

    def _choose(self, net, start: tuple, tune: int, key, sounding: np.ndarray, temperature: float,
                known: bool) -> None:
        """Strike the chord the rules' shortlist and the model like best, under the tune's note (``known``) or
        its likely next notes."""
        inputs = (tune, key, known, self.beat_chord, self.beat_tune)
        ready, self._ready = self._ready, None
        short = ready[1] if ready is not None and ready[0] == inputs else self._shortlist(*inputs)
        if short is None:
            self.chord = None
            return
        cands, score = short[:2]
        low = cands[:, ::-1] - self.low  # bass, tenor, alto: low to high, as the model's pitch indices
        if known:
            pass  # a chord changed under a note just heard: the rules' choice (the model chose the beat's)
        elif self.states == 3 and start[1] is not None and low.min() >= 0 and low.max() < self.n_pitches:
            score = score + net.chord_log_probs(start, low, sounding[cands[:, ::-1]])
        else:  # a model of two states, an independent head, or a chord outside its range: the general way
            score = score + net.frame_log_probs(start, np.stack([self._states_of(c, sounding) for c in cands]))
        if temperature > 0:
            score = score + temperature * self.rng.gumbel(size=len(score))
        best = int(np.argmax(score))
        self.chord = tuple(int(p) for p in cands[best])

    def _shortlist(self, tune: int, key, known: bool, beat_chord, beat_tune) -> tuple | None:
        """The rules' part of a choice: (the SHORTLIST candidates (S, 3), their scores, the likely next notes and
        their probabilities), or None where no voicing fits under the tune."""
        ranked = _ranked(tune, key, known)
        if ranked is None:
            return None
        cands, score, near, hyps, probs = ranked
        if beat_chord is not None:  # leaps, and consecutive fifths and octaves under each likely next note
            cands, score = cands[near], score[near] + expected_leading(beat_chord, beat_tune, cands[near], hyps, probs)
        short = _best(score, SHORTLIST)
        return cands[short], score[short], hyps, probs

    def _states_of(self, chord, sounding: np.ndarray) -> np.ndarray:
        """A chord as the model's states: a pitch it already sounds is held, the others struck."""
        state = np.zeros(self.n_pitches, np.int64)
        for p in chord:
            i = p - self.low
            if 0 <= i < self.n_pitches:
                state[i] = HOLD if self.states == 3 and sounding[p] else (ONSET if self.states == 3 else 1)
        return state

    def _states(self, sounding: np.ndarray) -> np.ndarray | None:
        if self.chord is None:
            return None
        return self._states_of(self.chord, sounding)
