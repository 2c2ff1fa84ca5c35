"""The rules on top of the model's distribution: small parts with one interface, run in turn by the sampler.

As transformers' logits processors are: each rule is a class, and a new rule is a new class, not a new
branch in ``StreamingGenerator._sample``. A rule implements the hooks it needs (the others do nothing);
the sampler runs every rule's hook of a stage, in the order of ``StreamingGenerator.rules``, before the
next stage:

1. ``bans(ctx, banned)``: mark the (pitch, state) entries no draw of this step may take;
2. ``bias(ctx)``: logits added to the model's (the biases of all rules are summed);
   -- the model's logits for the step (``ctx.start``) --
3. ``take(ctx)``: a rule may make the step itself (its states), and no draw is made;
4. ``temperature(ctx, t)``: the temperature the step is drawn at;
5. ``judges(ctx)``: the rules that judge this step's draws; while any does, a step is drawn up to
   ``voice_tries`` times and the first draw that no judge finds ``faults`` in nor ``refuse``s is kept,
   else the first of those with the fewest faults that none refuses; where every draw is refused,
   ``last_draw(ctx, banned)`` gives the bans of one more draw;
6. ``chosen(ctx, frame)``: the frame the step made (before note stability);
7. ``velocity(ctx, v)``: its velocity;

and after every step, played or listened to, ``played(frame)``: the frame sent. ``reset()`` forgets.

States are the model's per pitch, an int (n_pitches,) array (0 silent; three-state models: HOLD, ONSET).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..music import analysis
from ..music import harmony_metrics as harmony
from ..music.encoding import N_MIDI, Frame, Meter
from .network import HOLD, ONSET, ModelConfig, NumpyLSTM

# Semitones (mod 12) from a player's held note that the guard keeps the model off: seconds, sevenths, the
# tritone, and the fourth -- so under a melody note on a chord's root it leaves out the chord's fifth rather
# than sound a fourth against the tune (measured on held-out tunes: 71 % consonant pairs with the fourth
# kept off, 63 % without, at 2.05 and 2.25 notes at once).
CLASH = (1, 2, 5, 6, 10, 11)
# CLASHES[p, q]: pitches p and q are a CLASH interval apart (plus octaves): read a row per held note.
CLASHES = np.isin(np.abs(np.arange(N_MIDI)[:, None] - np.arange(N_MIDI)[None, :]) % 12, CLASH)
GUARD_MOST = 4  # the guard follows a melody or a chord; a cluster or a flood of held notes would ban every pitch
# The hold on the key (the key the player set, or --key names): each pitch class's log Krumhansl-Kessler
# rating (centred on the key's own scale, so the density of notes stays the same) plus a fall of half as
# much again outside the scale, times KEY_HOLD, is added to the logit of striking it. Weighting the tonic
# triad over the other degrees is what keeps an answer on the key's centre rather than its dominant's.
# Measured on 60 held-out tunes (`improviser evaluate --listening`), answers in the same or relative key:
# 57 % with no hold, 73 % at 2, 77 % at 2.5, 82 % at 3 (close keys 93-97 %); consonance with the tune
# unchanged (76 %). A scale-only hold of 2 gave 50 % (primed). 0 lets the model roam (``--key-hold``).
KEY_HOLD = 3.0
# Voice leading: a beat is drawn up to VOICE_TRIES times from the model and the first draw that is four-part
# writing (see ``VoiceLeading``) is kept, else the draw with the fewest faults; accompanying, the player's
# notes are voices of it. Accompanying 60 held-out tunes (`evaluate --listening`), the tune and its notes
# together: common chords on beats 40 -> 51 %, parallels 24.8 -> 10.5 per 100 changes, four notes 21 -> 27 %.
# Measured on 20 free 30-second pieces (`improviser evaluate --harmony`): parallels 21.8 -> 3.8 per 100
# changes, common chords on beats 73 -> 96 %, four notes 61 -> 87 % of steps (Bach: 2.8, 89 %, 86 %).
# 4 tries gave 2.4 / 99 % / 91 %, further from Bach's own figures and slower at the 99th percentile.
VOICE_TRIES = 3
START_TEMPERATURE = 0.9  # the lowest temperature of a step after silence or a held bar (the default)
COPY_STEPS = analysis.COPY_STEPS
# Dynamics: a metrical accent (downbeat, beat, off-beat) around a level -- the player's, once heard.
ACCENT = (12, 0, -12)
LEVEL = 84  # the level with nobody to follow: 96/84/72


@dataclass(eq=False)
class Context:
    """What the rules of one step see: what it and the player sounded at the last step, where the step falls in
    the bar, the key held to, and (from the ``take`` stage on) the model's logits for it."""

    cfg: ModelConfig
    net: NumpyLSTM
    last: Frame  # its own frame at the last step
    age: np.ndarray  # int (128,): steps each of its sounding notes has lasted
    player: np.ndarray  # bool (128,): the player's notes sounding at the last step (what it heard of them)
    heard: list[int]  # the same notes, as pitches, low to high
    struck: bool  # the player struck a note at the last step
    position: int  # steps into the bar
    on_beat: bool
    steps_per_bar: int
    meter: Meter
    level: float | None  # the player's dynamics (a running level of their velocities), once heard
    temperature: float  # the temperature set (the live control)
    key_of: Callable[[], tuple[int, str] | None]  # the generator's ``key``
    start: tuple | None = None  # the model's ``step_logits`` for this step, bans and biases in

    @property
    def lo(self) -> int:
        return self.cfg.low

    @property
    def hi(self) -> int:
        return self.cfg.low + self.cfg.n_pitches

    @cached_property
    def key(self) -> tuple[int, str] | None:
        """The key it holds to now (see ``StreamingGenerator.key``), found once a step."""
        return self.key_of()

    def frame_of(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A step's states (n_pitches,) as the (onset, sound) bool (128,) of its frame."""
        lo, hi = self.lo, self.hi
        onset = np.zeros(N_MIDI, bool)
        sound = np.zeros(N_MIDI, bool)
        sound[lo:hi] = state != 0
        # A two-state model (sounding or not) cannot re-strike: a note starts where it begins to sound.
        onset[lo:hi] = state == ONSET if self.cfg.states == 3 else sound[lo:hi] & ~self.last.sound[lo:hi]
        return onset, sound


class Rule:
    """A rule on top of the model: implement the hooks it needs (see the module's docstring for their order)."""

    def reset(self) -> None:
        """Forget what it kept from earlier steps."""

    def bans(self, ctx: Context, banned: np.ndarray) -> None:
        """Set True the entries of bool (n_pitches, states) ``banned`` that no draw of this step may take."""

    def bias(self, ctx: Context) -> np.ndarray | None:
        """(n_pitches, states) logits to add to the model's (read, never written), or None."""
        return None

    def take(self, ctx: Context) -> np.ndarray | None:
        """This step's states, made by the rule itself (no draw), or None to leave the step to the model."""
        return None

    def temperature(self, ctx: Context, t: float) -> float:
        """The temperature this step is drawn at, given the one so far."""
        return t

    def judges(self, ctx: Context) -> bool:
        """Whether it judges this step's draws (``faults``, ``refuse``, ``last_draw``)."""
        return False

    def faults(self, ctx: Context, state: np.ndarray) -> int:
        """How many faults it finds in a draw (0: none); among flawed draws, the fewest faults is kept."""
        return 0

    def refuse(self, ctx: Context, state: np.ndarray) -> bool:
        """True: the draw may not be kept at all."""
        return False

    def last_draw(self, ctx: Context, banned: np.ndarray) -> np.ndarray | None:
        """Every draw was refused: the bans of one more draw, or None (the first with the fewest faults is kept)."""
        return None

    def chosen(self, ctx: Context, frame: Frame) -> None:
        """The frame this step made (its notes, before note stability)."""

    def velocity(self, ctx: Context, v: int) -> int:
        """This step's velocity, given the one so far."""
        return v

    def played(self, frame: Frame) -> None:
        """The frame sent at a step (silent where it only listened)."""


class HoldOnlySounding(Rule):
    """A pitch can only be held if it sounded at the last step (three-state models: the model's hold is no
    note of its own)."""

    def bans(self, ctx: Context, banned: np.ndarray) -> None:
        banned[:, HOLD] = ~ctx.last.sound[ctx.lo:ctx.hi]


class Guard(Rule):
    """Never strike or hold a note a second, a fourth, a tritone or a seventh (``CLASH``) away from a note the
    player is holding -- what an accompanist avoids by ear; silence stays allowed. It reacts within the step to
    what was just heard, which the model learns only in part. It stands aside while the player holds more than
    GUARD_MOST notes. On held-out tunes: 71 % consonant pairs with the fourth kept off, 63 % without."""

    def bans(self, ctx: Context, banned: np.ndarray) -> None:
        if 0 < ctx.player.sum() <= GUARD_MOST:
            banned[CLASHES[ctx.player].any(axis=0)[ctx.lo:ctx.hi]] = True  # neither struck nor held
            banned[:, 0] = False


class KeyHold(Rule):
    """Lean on the key held to (the one named, else the player's once heard; with neither, no lean): add
    ``hold`` times each pitch class's leaning (``key_leaning``: its log Krumhansl-Kessler rating, centred on
    the scale, less half as much again outside it) to the logit of striking it (two states: of starting it).
    On 60 held-out tunes, answers in the same or relative key: 57 % with no hold, 73 % at 2, 82 % at 3
    (KEY_HOLD), consonance with the tune unchanged (76 %)."""

    def __init__(self, hold: float, cfg: ModelConfig):
        self.hold, self.cfg = hold, cfg
        self._bias_for: tuple = (None, None)  # (key, hold) that _per_pitch was made for
        self._per_pitch = np.zeros(cfg.n_pitches)
        self._onset_bias: np.ndarray | None = None  # (three states) _per_pitch on the struck state

    def bias(self, ctx: Context) -> np.ndarray | None:
        key = ctx.key if self.hold > 0 else None
        if key is None:
            return None
        cfg = self.cfg
        if (key, self.hold) != self._bias_for:
            pitches = np.arange(cfg.low, cfg.low + cfg.n_pitches)
            self._per_pitch = self.hold * key_leaning(*key)[pitches % 12]
            self._bias_for = (key, self.hold)
            self._onset_bias = np.zeros((cfg.n_pitches, cfg.states))
            self._onset_bias[:, -1] = self._per_pitch  # the last state: struck (sounding, for two states)
        if cfg.states == 3:
            return self._onset_bias  # (read, never written, by the model)
        # Two states (sounding): only a note that is not already sounding starts here.
        bias = np.zeros((cfg.n_pitches, cfg.states))
        fresh = ~ctx.last.sound[ctx.lo:ctx.hi]
        bias[fresh, 1] = self._per_pitch[fresh]
        return bias


def key_leaning(tonic: int, mode: str) -> np.ndarray:
    """(12,) per pitch class: the log of its key-profile rating, centred over the key's scale, less 0.5 outside it."""
    profile = np.log(np.roll(analysis.MAJOR if mode == "major" else analysis.MINOR, tonic))
    scale = analysis.in_key(tonic, mode)
    return profile - profile[scale].mean() - 0.5 * ~scale


class StartTemperature(Rule):
    """From silence the likeliest next step is more silence, and from a held chord holding on, step after step:
    at a low temperature it would never start (below ~0.5 nothing at all) or never move on. After silence, or a
    bar with nothing struck, a step is drawn at no less than START_TEMPERATURE."""

    def temperature(self, ctx: Context, t: float) -> float:
        sounding = ctx.last.sound
        stuck = not sounding.any() or int(ctx.age[sounding].min()) >= ctx.steps_per_bar
        return max(t, START_TEMPERATURE) if stuck else t


class VoiceLeading(Rule):
    """Four-part writing on the beat (between beats it moves freely: passing notes, suspensions): a draw's faults
    are neither four notes nor none; three or more notes that are no common chord; each consecutive fifth or
    octave against the last beat's four notes. The player's notes sounding (up to three) are voices of the four
    (``with_player``; False: judged only while it plays alone). With VOICE_TRIES draws, on 20 free 30-second
    pieces: parallels 21.8 -> 3.8 per 100 changes, common chords on beats 73 -> 96 %, four notes 61 -> 87 % of
    steps (Bach: 2.8, 89 %, 86 %); accompanying 60 held-out tunes: common chords on beats 40 -> 51 %,
    parallels 24.8 -> 10.5 per 100 changes."""

    def __init__(self, with_player: bool = True):
        self.with_player = with_player
        self.reset()

    def reset(self) -> None:
        self.beat_chord: list[int] = []  # the last beat's voices (its notes and the player's)

    def judges(self, ctx: Context) -> bool:
        return ctx.on_beat and (not ctx.heard or (self.with_player and len(ctx.heard) < 4))

    def faults(self, ctx: Context, state: np.ndarray) -> int:
        pitches = (np.flatnonzero(state) + ctx.lo).tolist()
        if ctx.heard:  # the player's notes and its own, as one texture (a unison with the player is one voice less)
            pitches = sorted(set(pitches).union(ctx.heard))
        faults = int(len(pitches) not in (0, 4))
        if len(pitches) >= 3 and not harmony.is_common_chord(pitches):
            faults += 1
        if len(pitches) == 4 and len(self.beat_chord) == 4 and pitches != self.beat_chord:
            faults += harmony.parallels(self.beat_chord, pitches)
        return faults

    def chosen(self, ctx: Context, frame: Frame) -> None:
        if ctx.on_beat:
            self.beat_chord = sorted(set(np.flatnonzero(frame.sound).tolist()).union(ctx.heard))


class CopyCheck(Rule):
    """Never play a bar of the training music verbatim (or moved by some semitones): a draw that would complete a
    passage of COPY_STEPS steps found in it (``copies``: the checkpoint's fingerprints, ``analysis.passage_keys``)
    is refused. Only a step whose last COPY_STEPS - 1 frames lead into one (``leads``) is judged. Where every draw
    is refused the model holds on (a long chord, as at a cadence): one more draw, nothing held, so each of its
    notes is struck again or ends (any copy is worse than any voice-leading fault). ``copies`` None: no check."""

    def __init__(self, copies: np.ndarray | None, leads: np.ndarray | None):
        self.copies, self.leads = copies, leads
        self.reset()

    def reset(self) -> None:
        self.passage = analysis.Passage(COPY_STEPS - 1)  # the fingerprint of its last COPY_STEPS - 1 frames

    def judges(self, ctx: Context) -> bool:
        if self.copies is None:
            return False
        lead = self.passage.key()
        # This step's draws could complete a copy only if its last frames lead into one.
        return lead is not None and (self.leads is None or lead in self.leads)

    def refuse(self, ctx: Context, state: np.ndarray) -> bool:
        if not state.any():
            return False  # a copy has no silent step in it
        return self.passage.key_with(analysis.step_value(*ctx.frame_of(state))) in self.copies

    def last_draw(self, ctx: Context, banned: np.ndarray) -> np.ndarray | None:
        if ctx.cfg.states != 3:
            return None
        unheld = banned.copy()
        unheld[:, HOLD] = True
        return unheld

    def played(self, frame: Frame) -> None:
        if self.copies is not None:
            self.passage.push(analysis.step_value(frame.onset, frame.sound))


class Dynamics(Rule):
    """The model has no velocity: the player's level (LEVEL with nobody heard) with a metrical accent (ACCENT:
    downbeat, beat, off-beat), within ``bounds`` (lo, hi)."""

    def __init__(self, bounds: tuple[int, int]):
        self.bounds = bounds

    def velocity(self, ctx: Context, v: int) -> int:
        accent = ACCENT[ctx.meter.accent(ctx.position, ctx.cfg.steps_per_beat)]
        level = LEVEL if ctx.level is None else ctx.level
        lo, hi = self.bounds
        return int(min(hi, max(lo, round(level + accent))))
