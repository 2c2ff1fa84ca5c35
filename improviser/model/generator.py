"""The stateful streaming generator: one frame per call, hidden state kept between calls.

No I/O and no clock: the conductor (live) or ``generate`` (offline) decides when
``step`` is called. Deterministic for a given seed and the same heard notes.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ImproviserError
from ..music import analysis
from ..music import harmony_metrics as harmony
from ..music.encoding import N_MIDI, Frame, Grid, Meter
from .accompanist import Accompanist
from .network import HOLD, ONSET, BachLSTM, KeyMemory, NumpyLSTM, frame_features

MAX_STABILITY = 64  # steps; 4 bars of 16ths
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
# writing (see ``_voice_faults``) is kept, else the draw with the fewest faults; accompanying, the player's
# notes are voices of it. Accompanying 60 held-out tunes (`evaluate --listening`), the tune and its notes
# together: common chords on beats 40 -> 51 %, parallels 24.8 -> 10.5 per 100 changes, four notes 21 -> 27 %.
# Measured on 20 free 30-second pieces (`improviser evaluate --harmony`): parallels 21.8 -> 3.8 per 100
# changes, common chords on beats 73 -> 96 %, four notes 61 -> 87 % of steps (Bach: 2.8, 89 %, 86 %).
# 4 tries gave 2.4 / 99 % / 91 %, further from Bach's own figures and slower at the 99th percentile.
VOICE_TRIES = 3
START_TEMPERATURE = 0.9  # the lowest temperature of a step after silence or a held bar (the default; _sample)
COPY_STEPS = analysis.COPY_STEPS
KEY_HEARD = 8.0  # notes of the player's (decayed count) before their key is taken as heard
# Dynamics: a metrical accent (downbeat, beat, off-beat) around a level -- the player's, once heard.
ACCENT = (12, 0, -12)
LEVEL = 84  # the level with nobody to follow: 96/84/72
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


def key_leaning(tonic: int, mode: str) -> np.ndarray:
    """(12,) per pitch class: the log of its key-profile rating, centred over the key's scale, less 0.5 outside it."""
    profile = np.log(np.roll(analysis.MAJOR if mode == "major" else analysis.MINOR, tonic))
    scale = analysis.in_key(tonic, mode)
    return profile - profile[scale].mean() - 0.5 * ~scale


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

    guard: (listening models) never strike or hold a note a second, a fourth, a tritone or a
        seventh away from a note the player is holding -- what an accompanist avoids by ear. It
        reacts within the step to what was just heard, which the model learns only in part. It
        stands aside while the player holds more than GUARD_MOST notes.

    key_hold: how hard it leans on the key (see KEY_HOLD; 0: not at all). The key is the one
        named by ``key``, else the key of what the player has played (Krumhansl-Schmuckler on a
        running count of their notes, once KEY_HEARD notes are in it); with neither, no hold.

    voicing: (a model trained on four-part writing; None: if the checkpoint says so) draw each beat up
        to ``voice_tries`` times and keep the first that is four-part writing (four notes or none; a
        common chord; no consecutive fifths or octaves against the last beat).
    voice_with_player: while the player sounds up to three notes, they are voices of the four (what
        it has heard of them: the notes sounding at the last step); False: it is voice-led only
        while it plays alone.

    velocity: (lo, hi) bounds for its velocities. They follow the player's dynamics (a running
        level of the velocities heard) with a metrical accent; with nobody heard, 96/84/72.

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
        # Fingerprints of every bar-long passage of the training music (``analysis.passage_keys``), from the
        # checkpoint: a draw that would complete one is drawn again, so it never plays a bar of Bach's verbatim.
        self.copies = getattr(model, "copy_keys", None)
        self.leads = getattr(model, "lead_keys", None) if self.copies is not None else None
        self._key_seen: tuple = (None, None)  # (the player memory's counts, the key found in them)
        self._bias_for: tuple = (None, None)  # (key, hold) that _per_pitch was made for
        self._per_pitch = np.zeros(model.cfg.n_pitches)
        self._onset_bias: np.ndarray | None = None  # (three states) _per_pitch on the struck state
        self.guard = guard and model.cfg.player_input
        self.cfg = model.cfg
        self.net = NumpyLSTM(model)
        self.memory = KeyMemory()  # everything struck, the player's and its own
        self.player_memory = KeyMemory()  # the player's notes alone
        pinned = parse_key(key)
        self.pinned_key = pinned
        if pinned is not None:
            if not self.cfg.key_memory:
                raise ImproviserError(f"--key {key!r}: this checkpoint has no key memory to hold a key in "
                                      "(it was trained before listening models); use --key auto")
            self.memory.pin(key_shares(model, pinned))
            self.player_memory.pin(key_shares(model, pinned))
        self.temperature = float(temperature)
        self.note_stability = int(note_stability)
        self.rng = np.random.default_rng(seed)
        self.set_meter(meter or Meter(beats_per_bar, 4), bar_start)
        # Accompanying a line: three parts under it, a chord a beat (a listening model of four-part music).
        self.accompanist = None
        if accompanist and model.cfg.player_input and getattr(model, "four_part", False):
            self.accompanist = Accompanist(self.cfg.low, self.cfg.n_pitches, self.cfg.states, self.rng)
        self.reset()

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
        self._player = np.zeros(N_MIDI, bool)  # what the player sounded at the previous step
        self._struck = False  # the player struck a note at the previous step
        if self.accompanist is not None:
            self.accompanist.reset()
        self.level: float | None = None  # the player's dynamics, once heard
        self._beat_chord: list[int] = []  # the last beat's voices (its notes and the player's), for the voice leading
        # The fingerprint of its last COPY_STEPS - 1 frames, kept from step to step: the copy check's window.
        self._passage = analysis.Passage(COPY_STEPS - 1)

    def set_controls(self, temperature: float | None = None, note_stability: int | None = None) -> None:
        """Change temperature or note stability between steps (live controls)."""
        t = self.temperature if temperature is None else float(temperature)
        s = self.note_stability if note_stability is None else int(note_stability)
        check_controls(t, s)
        self.temperature, self.note_stability = t, s

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
        self._player = heard.sound
        self._struck = heard.onset.any()
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
        out = self._sample(h) if play else Frame.silent()
        out = self._stabilise(out) if play else out
        self.age = np.where(out.onset, 1, np.where(out.sound, self.age + 1, 0))
        self.last = out
        if self.copies is not None:
            self._passage.push(analysis.step_value(out.onset, out.sound))
        self.step_index += 1
        return out

    def prime(self, grid: Grid) -> None:
        """Listen to a phrase (e.g. a primer file) step by step, so it moves the hidden state."""
        for t in range(len(grid)):
            self.step(play=False)
            struck = grid.velocity[t][grid.onset[t]] if grid.velocity is not None else ()
            self.hear(Frame(grid.onset[t], grid.sound[t], int(max(struck)) if len(struck) else Frame.velocity))

    def _sample(self, h: np.ndarray) -> Frame:
        cfg = self.cfg
        lo, hi = cfg.low, cfg.low + cfg.n_pitches
        banned = np.zeros((cfg.n_pitches, cfg.states), bool)
        if cfg.states == 3:
            # A pitch can only be "held" if the improviser itself sounded it at the last step.
            banned[:, HOLD] = ~self.last.sound[lo:hi]
        if self.guard and 0 < self._player.sum() <= GUARD_MOST:
            banned[self._clashes()[lo:hi]] = True  # neither struck nor held (silent stays allowed)
            banned[:, 0] = False
        bias = self._key_bias()
        on_beat = self.bar_position() % self.beat_steps == 0
        # The player's notes (those sounding at the last step: what it has heard of this beat) are voices too:
        # with a line of up to three notes it fills in the rest of the four parts around them.
        heard = np.flatnonzero(self._player).tolist()
        voicing = self.voicing and on_beat and (not heard or (self.voice_with_player and len(heard) < 4))
        lead = self._passage.key() if self.copies is not None else None
        # This step's draws could complete a copy only if its last frames lead into one.
        may_copy = lead is not None and (self.leads is None or lead in self.leads)
        tries = self.voice_tries if voicing or may_copy else 1
        start = self.net.step_logits(h, self._player[lo:hi], bias)
        if self.accompanist is not None:
            state = self.accompanist.step(self.net, start, heard, bool(self._struck), on_beat, self.key(),
                                          self.last.sound, self.temperature)
            if state is not None:
                onset, sound = self._frame_of(state)
                if on_beat:
                    self._beat_chord = sorted(set(np.flatnonzero(sound).tolist()).union(heard))
                return Frame(onset, sound, self._velocity())
        # From silence the likeliest next step is more silence, and from a held chord holding on, step after
        # step: at a low temperature it would never start (below ~0.5 nothing at all) or never move on. After
        # silence, or a bar with nothing struck, a step is drawn at no less than START_TEMPERATURE.
        sounding = self.last.sound
        stuck = not sounding.any() or int(self.age[sounding].min()) >= self.steps_per_bar
        temperature = max(self.temperature, START_TEMPERATURE) if stuck else self.temperature
        drawn = []  # (voice-leading faults, states) of each draw not kept at once, in the order drawn
        ready = self.net.prepare(start, temperature, banned)
        for _ in range(tries):
            state = self.net.draw(ready, self.rng.random(cfg.n_pitches))
            if tries == 1:
                break
            faults = self._voice_faults(state, heard) if voicing else 0
            if faults == 0 and not (may_copy and self._copies(state)):
                break
            drawn.append((faults, state))
        else:
            # None was flawless: the first of those with the fewest voice-leading faults that completes no
            # copied bar (a flawless one here was a copy). The copy check runs only on draws that could be kept.
            drawn.sort(key=lambda d: d[0])  # a stable sort: the first drawn first among equals
            state = next((s for faults, s in drawn if faults and not (may_copy and self._copies(s))), None)
            if state is None and cfg.states == 3:
                # Every draw completes a copied bar (any copy is worse than any voice fault): the model holds on
                # (a long chord, as at a cadence). Draw once more with nothing held, so each of its notes is
                # struck again or ends.
                unheld = banned.copy()
                unheld[:, HOLD] = True
                state = self.net.draw(self.net.prepare(start, temperature, unheld), self.rng.random(cfg.n_pitches))
            elif state is None:
                state = drawn[0][1]
        onset, sound = self._frame_of(state)
        if on_beat:
            self._beat_chord = sorted(set(np.flatnonzero(sound).tolist()).union(heard))
        return Frame(onset, sound, self._velocity())

    def _frame_of(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A draw's states (n_pitches,) as the (onset, sound) bool (128,) of its frame."""
        lo, hi = self.cfg.low, self.cfg.low + self.cfg.n_pitches
        onset = np.zeros(N_MIDI, bool)
        sound = np.zeros(N_MIDI, bool)
        sound[lo:hi] = state != 0
        # A two-state model (sounding or not) cannot re-strike: a note starts where it begins to sound.
        onset[lo:hi] = state == ONSET if self.cfg.states == 3 else sound[lo:hi] & ~self.last.sound[lo:hi]
        return onset, sound

    def _copies(self, state: np.ndarray) -> bool:
        """Would this draw complete a passage of COPY_STEPS steps found verbatim in the training music?"""
        if not state.any():
            return False  # a copy has no silent step in it
        onset, sound = self._frame_of(state)
        return self._passage.key_with(analysis.step_value(onset, sound)) in self.copies

    def _voice_faults(self, state: np.ndarray, heard: list[int]) -> int:
        """How far a drawn frame is from four-part writing, judged on the beat (between beats it moves
        freely: passing notes, suspensions): neither four notes nor none; three or more notes that are no
        common chord; each consecutive fifth or octave against the last beat's four notes."""
        if self.bar_position() % self.beat_steps:
            return 0
        pitches = (np.flatnonzero(state) + self.cfg.low).tolist()
        if heard:  # the player's notes and its own, as one texture (a unison with the player is one voice less)
            pitches = sorted(set(pitches).union(heard))
        faults = int(len(pitches) not in (0, 4))
        if len(pitches) >= 3 and not harmony.is_common_chord(pitches):
            faults += 1
        if len(pitches) == 4 and len(self._beat_chord) == 4 and pitches != self._beat_chord:
            faults += harmony.parallels(self._beat_chord, pitches)
        return faults

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

    def _key_bias(self) -> np.ndarray | None:
        """(n_pitches, states) logits for striking (two-state: starting) each pitch, in the key held to."""
        key = self.key() if self.key_hold > 0 else None
        if key is None:
            return None
        cfg = self.cfg
        if (key, self.key_hold) != self._bias_for:
            pitches = np.arange(cfg.low, cfg.low + cfg.n_pitches)
            self._per_pitch = self.key_hold * key_leaning(*key)[pitches % 12]
            self._bias_for = (key, self.key_hold)
            self._onset_bias = np.zeros((cfg.n_pitches, cfg.states))
            self._onset_bias[:, -1] = self._per_pitch  # the last state: struck (sounding, for two states)
        if cfg.states == 3:
            return self._onset_bias  # (read, never written, by the model)
        # Two states (sounding): only a note that is not already sounding starts here.
        bias = np.zeros((cfg.n_pitches, cfg.states))
        fresh = ~self.last.sound[cfg.low: cfg.low + cfg.n_pitches]
        bias[fresh, 1] = self._per_pitch[fresh]
        return bias

    def _clashes(self) -> np.ndarray:
        """bool (128,): pitches a second, fourth, tritone or seventh (or those plus octaves) from a player's note."""
        return CLASHES[self._player].any(axis=0)

    def _stabilise(self, out: Frame) -> Frame:
        """Keep sounding, unstruck, every note younger than note_stability that the model ended or re-struck."""
        if self.note_stability <= 1:
            return out
        young = self.last.sound & (self.age < self.note_stability)
        ends = young & (~out.sound | out.onset)
        if not ends.any():
            return out
        return Frame(out.onset & ~ends, out.sound | ends, out.velocity)

    def _velocity(self) -> int:
        """The player's level (or LEVEL) with a metrical accent, within the bounds; the model has no velocity."""
        accent = ACCENT[self.meter.accent(self.bar_position(), self.cfg.steps_per_beat)]
        level = LEVEL if self.level is None else self.level
        lo, hi = self.velocity_range
        return int(min(hi, max(lo, round(level + accent))))


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
