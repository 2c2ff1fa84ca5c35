"""The stateful streaming generator: one frame per call, hidden state kept between calls.

No I/O and no clock: the conductor (live) or ``generate`` (offline) decides when
``step`` is called. Deterministic for a given seed and the same heard notes.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import ImproviserError
from ..music import analysis
from ..music.encoding import N_MIDI, Frame, Grid, Meter
from .accompanist import Accompanist
from .network import BachLSTM, KeyMemory, NumpyLSTM, frame_features
from .rules import (
    KEY_HOLD,
    VOICE_TRIES,
    Context,
    CopyCheck,
    Dynamics,
    Guard,
    HoldOnlySounding,
    KeyHold,
    Rule,
    StartTemperature,
    VoiceLeading,
)

MAX_STABILITY = 64  # steps; 4 bars of 16ths
KEY_HEARD = 8.0  # notes of the player's (decayed count) before their key is taken as heard
LEVEL_FOLLOW = 0.3  # how far each heard step with struck notes moves the level toward their velocity


def parse_velocity_range(text: str | None) -> tuple[int, int]:
    """--velocity 'LO..HI' (1..127) -> (lo, hi); None -> (1, 127)."""
    if text is None:
        return 1, 127
    lo, sep, hi = text.partition("..")
    try:
        bounds = int(lo), int(hi)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 1 <= bounds[0] <= bounds[1] <= 127:
        raise ImproviserError(f"--velocity {text!r}: write LO..HI with 1 <= LO <= HI <= 127, e.g. 40..110")
    return bounds


def check_controls(temperature: float, note_stability: int) -> None:
    if not (0.0 <= temperature <= 5.0) or math.isnan(temperature):
        raise ImproviserError(f"temperature must be between 0 and 5 (got {temperature}); 1.0 is the model's own "
                              "distribution, lower is safer, 0 always takes the likeliest note")
    if not (1 <= note_stability <= MAX_STABILITY):
        raise ImproviserError(f"note stability is a minimum note length in steps, 1..{MAX_STABILITY} "
                              f"(got {note_stability})")


def parse_key(name: str | None) -> tuple[int, str] | None:
    """--key: 'auto' (or None) -> None; 'D minor', 'F# major', 'Bb', 'c#m' -> (tonic pitch class, mode)."""
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    try:
        return analysis.parse_key(name)
    except ValueError:
        raise ImproviserError(f"--key {name!r} is not a key; write auto, or a tonic and a mode such as "
                              "'D minor', 'F# major', 'Bb major'") from None


def key_shares(model: BachLSTM, key: tuple[int, str]) -> np.ndarray:
    """What the key memory holds in ``key``: the checkpoint's own profile (or Krumhansl's) turned to its tonic."""
    profiles = getattr(model, "key_profiles", None) or {"major": analysis.MAJOR, "minor": analysis.MINOR}
    return np.roll(np.asarray(profiles[key[1]], np.float64), key[0])


class StreamingGenerator:
    """Keeps the LSTM state and the last frame; ``step()`` returns the next frame.

    temperature: divides the logits; 1.0 samples the model as trained, 0 is greedy.
    note_stability: minimum note length in steps. Applied as frames are emitted,
        it only lengthens a note the model would end (or re-strike) too early; it
        never holds the music still. The next input is what actually sounded.
    seed: seeds the sampler (None: fresh entropy).
    beats_per_bar: for the bar position the model is given.
    key: None (or "auto") follows what is heard and played; a key name ("D minor") holds the
        key memory there (a model with a key memory only).

    The rules on top of the model's distribution are the parts in ``rules`` (see ``rules.py``), run in turn
    at every step; the options below choose them:

    guard: (listening models) never strike or hold a note a second, a fourth, a tritone or a
        seventh away from a note the player is holding (``Guard``); it stands aside while the
        player holds more than GUARD_MOST notes.
    key_hold: how hard it leans on the key (``KeyHold``, KEY_HOLD; 0: not at all). The key is the one
        named by ``key``, else the key of what the player has played (Krumhansl-Schmuckler on a
        running count of their notes, once KEY_HEARD notes are in it); with neither, no hold.
    voicing: (a model trained on four-part writing; None: if the checkpoint says so) draw each beat up
        to ``voice_tries`` times and keep the first that is four-part writing (``VoiceLeading``).
    voice_with_player: while the player sounds up to three notes, they are voices of the four (what
        it has heard of them: the notes sounding at the last step); False: it is voice-led only
        while it plays alone.
    velocity: (lo, hi) bounds for its velocities (``Dynamics``). They follow the player's dynamics (a
        running level of the velocities heard) with a metrical accent; with nobody heard, 96/84/72.
    accompanist: (a listening model of four-part music) while the player plays a line, three parts under
        it, a chord a beat (``Accompanist``, which takes those steps).

    Besides, a three-state model holds only what sounds (``HoldOnlySounding``), a step after silence is drawn
    at no less than START_TEMPERATURE (``StartTemperature``) and no bar of the training music is copied
    (``CopyCheck``, with the checkpoint's fingerprints; ``copies = None`` turns it off). A new rule is a new
    ``Rule`` in ``rules``.

    A listening model hears the player's notes as their own input; an older model hears
    them merged into its own last frame.
    """

    def __init__(self, model: BachLSTM, temperature: float = 1.0, note_stability: int = 1,
                 seed: int | None = None, beats_per_bar: int = 4, key: str | None = None,
                 guard: bool = True, key_hold: float = KEY_HOLD, velocity: tuple[int, int] = (1, 127),
                 voicing: bool | None = None, voice_tries: int = VOICE_TRIES, voice_with_player: bool = True,
                 meter: Meter | None = None, bar_start: int = 0, accompanist: bool = True):
        check_controls(temperature, note_stability)
        if not 1 <= velocity[0] <= velocity[1] <= 127:
            raise ImproviserError(f"velocity bounds must be 1 <= lo <= hi <= 127 (got {velocity})")
        self.velocity_range = (int(velocity[0]), int(velocity[1]))
        if not (0.0 <= key_hold <= 20.0) or math.isnan(key_hold):
            raise ImproviserError(f"key hold must be between 0 (off) and 20 (got {key_hold})")
        self.key_hold = float(key_hold)
        if voicing is None:
            voicing = getattr(model, "four_part", False)
        self.voicing = bool(voicing) and voice_tries > 1
        self.voice_tries = int(voice_tries)
        self.voice_with_player = bool(voice_with_player)
        self._key_seen: tuple = (None, None)  # (the player memory's counts, the key found in them)
        self.guard = guard and model.cfg.player_input
        self.cfg = model.cfg
        self.net = NumpyLSTM(model)
        self.memory = KeyMemory()  # everything struck, the player's and its own
        self.player_memory = KeyMemory()  # the player's notes alone
        self._shares = functools.partial(key_shares, model)  # a key's profile in the checkpoint's own terms
        self.pinned_key = None
        self._pin(key)
        self.temperature = float(temperature)
        self.note_stability = int(note_stability)
        self.rng = np.random.default_rng(seed)
        self.set_meter(meter or Meter(beats_per_bar, 4), bar_start)
        # Accompanying a line: three parts under it, a chord a beat (a listening model of four-part music).
        self.accompanist = None
        if accompanist and model.cfg.player_input and getattr(model, "four_part", False):
            self.accompanist = Accompanist(self.cfg.low, self.cfg.n_pitches, self.cfg.states, self.rng)
        # Fingerprints of every bar-long passage of the training music (``analysis.passage_keys``), from the
        # checkpoint: a draw that would complete one is drawn again, so it never plays a bar of Bach's verbatim.
        copies = getattr(model, "copy_keys", None)
        self._copy_check = CopyCheck(copies, getattr(model, "lead_keys", None) if copies is not None else None)
        # The rules, run in this order at each stage of a step (``_sample``).
        self.rules: list[Rule] = [
            *([HoldOnlySounding()] if self.cfg.states == 3 else []),
            *([Guard()] if self.guard else []),
            *([KeyHold(self.key_hold, self.cfg)] if self.key_hold > 0 else []),
            *([self.accompanist] if self.accompanist is not None else []),
            StartTemperature(),
            *([VoiceLeading(self.voice_with_player)] if self.voicing else []),
            self._copy_check,
            Dynamics(self.velocity_range),
        ]
        self.reset()

    @property
    def copies(self) -> np.ndarray | None:
        """The copy check's fingerprints of the training music (None: no check)."""
        return self._copy_check.copies

    @copies.setter
    def copies(self, keys: np.ndarray | None) -> None:
        self._copy_check.copies = keys

    def set_meter(self, meter: Meter, bar_start: int = 0) -> None:
        """The time signature it plays in, and where its first step falls in a bar (a pickup: steps into it)."""
        spb = self.cfg.steps_per_beat
        self.meter = meter
        self.steps_per_bar = meter.bar_steps(spb)
        self.beat_steps = meter.beat_steps(spb)
        self.bar_start = int(bar_start) % self.steps_per_bar

    def bar_position(self) -> int:
        """Steps into the bar of the step about to be made."""
        return (self.step_index + self.bar_start) % self.steps_per_bar

    def reset(self) -> None:
        """Forget everything: silent, hidden state zero, at the start of a bar."""
        self.net.reset()
        self.memory.reset()
        self.player_memory.reset()
        self.step_index = 0
        self.last = Frame.silent()  # what the improviser itself sounded at the previous step
        self.age = np.zeros(N_MIDI, np.int64)  # steps each of its sounding notes has lasted
        self._heard = Frame.silent()
        self.level: float | None = None  # the player's dynamics, once heard
        for rule in self.rules:
            rule.reset()

    def set_controls(self, temperature: float | None = None, note_stability: int | None = None,
                     key: str | None = None, key_hold: float | None = None) -> None:
        """Change temperature, note stability, the key (a name, or "auto") or the key hold between steps (live
        controls: the listening part, on the thread that steps). A bad value raises and changes nothing."""
        t = self.temperature if temperature is None else float(temperature)
        s = self.note_stability if note_stability is None else int(note_stability)
        check_controls(t, s)
        if key_hold is not None and (not (0.0 <= key_hold <= 20.0) or math.isnan(key_hold)):
            raise ImproviserError(f"key hold must be between 0 (off) and 20 (got {key_hold})")
        if key is not None:
            self._pin(key)
        self.temperature, self.note_stability = t, s
        if key_hold is not None and float(key_hold) != self.key_hold:
            self.key_hold = float(key_hold)
            rule = next((r for r in self.rules if isinstance(r, KeyHold)), None)
            if rule is None:  # (off from the start: it goes where the constructor puts it, after the guard)
                at = sum(isinstance(r, (HoldOnlySounding, Guard)) for r in self.rules)
                self.rules.insert(at, rule := KeyHold(self.key_hold, self.cfg))
            rule.hold = self.key_hold

    def _pin(self, key: str | None) -> None:
        """Hold the key memories in ``key`` (a name), or let them follow what is struck again ("auto", None)."""
        pinned = parse_key(key)
        if pinned is not None and not self.cfg.key_memory:
            raise ImproviserError(f"--key {key!r}: this checkpoint has no key memory to hold a key in "
                                  "(it was trained before listening models); use --key auto")
        shares = None if pinned is None else self._shares(pinned)
        self.memory.pin(shares)
        self.player_memory.pin(shares)
        self.pinned_key = pinned

    def hear(self, frame: Frame) -> None:
        """Notes the player played during the step just emitted; they join the next step's input."""
        self._heard = self._heard.union(frame)

    def step(self, heard: Frame | None = None, play: bool = True) -> Frame:
        """Advance one step and return the improviser's frame for it.

        heard: the player's notes during the previous step (same as calling ``hear`` first).
        play: False to listen only: the hidden state moves, the returned frame is silent.
        """
        if heard is not None:
            self.hear(heard)
        heard, self._heard = self._heard, Frame.silent()
        if heard.onset.any():
            v = float(heard.velocity)
            self.level = v if self.level is None else self.level + LEVEL_FOLLOW * (v - self.level)
        pos = np.array([self.bar_position()])
        self.player_memory.strike(heard.onset)
        if self.cfg.player_input:
            # The key memory takes the previous step's notes, the model's and the player's, before this one.
            self.memory.strike(self.last.onset | heard.onset)
            mem = self.memory.features()[None] if self.cfg.key_memory else None
            pmem = self.player_memory.features()[None] if self.cfg.player_key_memory else None
            x = frame_features(self.last.onset[None], self.last.sound[None], pos, self.cfg,
                               heard.onset[None], heard.sound[None], mem, pmem)[0]
        else:
            inp = self.last.union(heard)
            x = frame_features(inp.onset[None], inp.sound[None], pos, self.cfg)[0]
        h = self.net.step(x)
        out = self._stabilise(self._sample(h, heard)) if play else Frame.silent()
        self.age = np.where(out.onset, 1, np.where(out.sound, self.age + 1, 0))
        self.last = out
        for rule in self.rules:
            rule.played(out)
        self.step_index += 1
        return out

    def prime(self, grid: Grid) -> None:
        """Listen to a phrase (e.g. a primer file) step by step, so it moves the hidden state."""
        for t in range(len(grid)):
            self.step(play=False)
            struck = grid.velocity[t][grid.onset[t]] if grid.velocity is not None else ()
            self.hear(Frame(grid.onset[t], grid.sound[t], int(max(struck)) if len(struck) else Frame.velocity))

    def _sample(self, h: np.ndarray, heard: Frame) -> Frame:
        """This step's frame: the rules' stages in turn around the model's distribution (see ``rules.py``)."""
        cfg, rules = self.cfg, self.rules
        position = self.bar_position()
        ctx = Context(cfg, self.net, self.last, self.age, heard.sound, np.flatnonzero(heard.sound).tolist(),
                      bool(heard.onset.any()), position, position % self.beat_steps == 0, self.steps_per_bar,
                      self.meter, self.level, self.temperature, self.key)
        banned = np.zeros((cfg.n_pitches, cfg.states), bool)
        for rule in rules:
            rule.bans(ctx, banned)
        bias = None
        for rule in rules:
            b = rule.bias(ctx)
            if b is not None:
                bias = b if bias is None else bias + b
        ctx.start = self.net.step_logits(h, heard.sound[cfg.low: cfg.low + cfg.n_pitches], bias)
        for rule in rules:
            state = rule.take(ctx)
            if state is not None:
                break
        else:
            state = self._draw(ctx, banned)
        frame = Frame(*ctx.frame_of(state))
        for rule in rules:
            rule.chosen(ctx, frame)
        velocity = frame.velocity
        for rule in rules:
            velocity = rule.velocity(ctx, velocity)
        return Frame(frame.onset, frame.sound, velocity)

    def _draw(self, ctx: Context, banned: np.ndarray) -> np.ndarray:
        """A step's states drawn from the model, at the rules' temperature, judged by those that judge it."""
        n = self.cfg.n_pitches
        temperature = self.temperature
        for rule in self.rules:
            temperature = rule.temperature(ctx, temperature)
        judges = [rule for rule in self.rules if rule.judges(ctx)]
        ready = self.net.prepare(ctx.start, temperature, banned)
        if not judges or self.voice_tries <= 1:
            return self.net.draw(ready, self.rng.random(n))
        drawn = []  # (faults, states) of each draw not kept at once, in the order drawn
        for _ in range(self.voice_tries):
            state = self.net.draw(ready, self.rng.random(n))
            faults = sum(rule.faults(ctx, state) for rule in judges)
            if faults == 0 and not any(rule.refuse(ctx, state) for rule in judges):
                return state
            drawn.append((faults, state))
        # None was flawless: the first of those with the fewest faults that none refuses (a flawless one here
        # was refused). The refusals are asked only of draws that could be kept.
        drawn.sort(key=lambda d: d[0])  # a stable sort: the first drawn first among equals
        state = next((s for faults, s in drawn if faults and not any(r.refuse(ctx, s) for r in judges)), None)
        if state is not None:
            return state
        for rule in judges:  # every draw refused: one more, with a rule's bans
            unheld = rule.last_draw(ctx, banned)
            if unheld is not None:
                return self.net.draw(self.net.prepare(ctx.start, temperature, unheld), self.rng.random(n))
        return drawn[0][1]

    def key(self) -> tuple[int, str] | None:
        """The key it holds to now: the one named, else the player's once heard, else None."""
        if self.pinned_key is not None:
            return self.pinned_key
        counts = self.player_memory.counts
        if counts.sum() < KEY_HEARD:
            return None
        seen = counts.tobytes()
        if self._key_seen[0] != seen:  # the memory moves only when the player strikes a note
            tonic, mode, _ = analysis.key_of_histogram(counts)
            self._key_seen = (seen, (tonic, mode))
        return self._key_seen[1]

    def _stabilise(self, out: Frame) -> Frame:
        """Keep sounding, unstruck, every note younger than note_stability that the model ended or re-struck."""
        if self.note_stability <= 1:
            return out
        young = self.last.sound & (self.age < self.note_stability)
        ends = young & (~out.sound | out.onset)
        if not ends.any():
            return out
        return Frame(out.onset & ~ends, out.sound | ends, out.velocity)


def generate(model: BachLSTM, n_steps: int, temperature: float = 1.0, note_stability: int = 1,
             seed: int | None = None, prime: Grid | None = None, beats_per_bar: int = 4,
             key: str | None = None, key_hold: float = KEY_HOLD, velocity: tuple[int, int] = (1, 127),
             meter: Meter | None = None) -> Grid:
    """Generate ``n_steps`` steps offline (after listening to ``prime``, if given), in ``meter`` (default
    ``beats_per_bar`` quarters)."""
    meter = meter or Meter(beats_per_bar, 4)
    gen = StreamingGenerator(model, temperature, note_stability, seed, beats_per_bar, key, key_hold=key_hold,
                             velocity=velocity, meter=meter)
    if prime is not None:
        gen.prime(prime)
    onset = np.zeros((n_steps, N_MIDI), bool)
    sound = np.zeros((n_steps, N_MIDI), bool)
    vel = np.zeros((n_steps, N_MIDI), np.uint8)
    for t in range(n_steps):
        f = gen.step()
        onset[t], sound[t] = f.onset, f.sound
        vel[t, f.onset] = f.velocity
    return Grid(onset, sound, model.cfg.steps_per_beat, max(1, gen.steps_per_bar // model.cfg.steps_per_beat),
                velocity=vel, meter=meter)
