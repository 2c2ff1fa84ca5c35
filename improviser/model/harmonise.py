"""Three parts beneath a melody, in the chorales' texture: offline, the whole tune known.

The tune is the soprano. On each beat of its meter the alto, tenor and bass take one chord under it,
held to the next beat; the tune moves over it note for note. Which chord, and how it is voiced, is a
beam search over the beats:

- the *candidates* on a beat are rules: every voicing of alto, tenor and bass in their chorale ranges
  under the tune's note on that beat, in order (bass < tenor < alto < tune, no part more than an octave
  from the one above, the bass up to a twelfth below the tenor), that makes a common chord with the tune
  (a triad with its third, or a seventh chord; ``harmony_metrics``) -- ``voicings``;
- the *model* judges them: the LSTM hears the four parts as its own music (as when it plays alone, the
  role it was trained in with all four voices its own) and gives each candidate frame, the tune's note on
  top of it, its log-probability after everything before it. That is where Bach's choices come in: which
  chord follows which, which note is doubled, the bass line's shape;
- a few *rules* add to it: consecutive fifths and octaves between two beats are never taken
  (``PARALLEL_COST``), large leaps in the inner parts cost, a chord in the tune's key costs nothing and a
  note outside it something (``OUT_OF_KEY_COST``), and where a phrase of the tune ends (a long note, a rest
  after it, the last note) a root-position tonic or dominant chord is favoured (``CADENCE_BONUS``).

Every beam keeps its own LSTM state; after each beat the ``beam`` best continuations are kept (with a
temperature, each candidate's score gets a Gumbel draw scaled by it first: a seed fixes the draws). The
model steps in torch, a batch of beams at a time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ImproviserError
from ..music import analysis
from ..music import harmony_metrics as harmony
from ..music.encoding import N_MIDI, Grid
from ..music.listening_metrics import CONSONANT
from .network import BachLSTM, KeyMemory, frame_features, frame_targets

# Chorale ranges (MIDI): the lowest and highest note of each lower part, and a wider fallback for a tune
# that runs low (under ~F4 the chorale ranges leave no room beneath it).
RANGES = {"alto": (53, 74), "tenor": (48, 69), "bass": (36, 62)}
WIDE = {"alto": (46, 74), "tenor": (40, 69), "bass": (28, 62)}
BEAM = 8
SHORTLIST = 24  # candidates a beam's model judges on a beat: those the rules like best
PARALLEL_COST = 50.0  # a consecutive fifth or octave: never taken while anything else is possible
LEAP_COST = 0.6  # per semitone an inner part (alto, tenor) moves beyond a fourth
BASS_LEAP_COST = 0.3  # per semitone the bass moves beyond an octave... and beyond a fifth, half that
OUT_OF_KEY_COST = 1.5  # per chord note (pitch class) outside the key's scale
SECOND_INVERSION_COST = 2.0  # the chord's fifth in the bass, away from a cadence
CADENCE_BONUS = 4.0  # a phrase end on a root-position tonic (half of it on the dominant)
# Per part dissonant with the tune through a whole beat (under a passing note: that note's share of the beat).
# 20 held-out tunes (`improviser.model.harmonise` on the tuning part): consonant pairs 70 % without it, 80 % at 1,
# 82 % at 2, 85 % at 4 (Bach's lower parts against his soprano: 77 %); common chords and four voices 100 % at each.
DISSONANCE_COST = 2.0
CONSONANT_GAPS = np.array(sorted(CONSONANT))
MAX_STEPS = 20 * 60 * 8  # 20 minutes at 120 bpm in 16ths
LOWEST_SOPRANO = 47  # B2: the lowest tune note with three parts under it in the wide ranges
HELD = "held"  # a beat's entry in ``chords`` where the last chord is held on (a cadence under a long note)


@dataclass
class Harmonisation:
    """The tune (unchanged), its three parts on the grid, and what was decided: one chord per beat."""

    tune: Grid
    parts: Grid  # alto, tenor and bass together
    chords: list  # per beat: (alto, tenor, bass) MIDI pitches, or None where the tune rests
    key: tuple[int, str]
    polyphonic: bool  # the file had more than one note at a time: its top line was taken


def top_line(grid: Grid) -> tuple[Grid, bool]:
    """The highest sounding note at each step (a polyphonic file's tune), and whether anything was dropped."""
    sound = grid.sound
    top = np.where(sound.any(axis=1), N_MIDI - 1 - np.argmax(sound[:, ::-1], axis=1), -1)
    keep = np.zeros_like(sound)
    rows = np.flatnonzero(top >= 0)
    keep[rows, top[rows]] = True
    dropped = bool((sound & ~keep).any())
    onset = grid.onset & keep
    # A note that becomes the top line partway through (the one above it ended) starts there.
    prev = np.vstack([np.zeros((1, N_MIDI), bool), keep[:-1]])
    onset |= keep & ~prev
    return replace(grid, onset=onset, sound=keep,
                   velocity=None if grid.velocity is None else np.where(onset, grid.velocity, 0)), dropped


@functools.lru_cache(maxsize=128)
def voicings(soprano: int, wide: bool = False) -> np.ndarray:
    """int (C, 3): every (alto, tenor, bass) under ``soprano`` in range and order that makes a common chord
    with it (see the module's docstring); none under ``LOWEST_SOPRANO``."""
    r = WIDE if wide else RANGES
    out = []
    for a in range(r["alto"][0], min(r["alto"][1], soprano - 1) + 1):
        if soprano - a > 12:
            continue
        for t in range(r["tenor"][0], min(r["tenor"][1], a - 1) + 1):
            if a - t > 12:
                continue
            for b in range(r["bass"][0], min(r["bass"][1], t - 1) + 1):
                if t - b > 19:
                    continue
                pcs = frozenset(p % 12 for p in (soprano, a, t, b))
                if len(pcs) >= 3 and pcs in harmony.COMMON_CHORDS:
                    out.append((a, t, b))
    if not out and not wide:
        return voicings(soprano, True)
    if not out and soprano > r["alto"][1]:
        # A tune above D6 (a flute's or a descant's): the parts keep their ranges and take the chord they would
        # under its note an octave (or two) lower; the tune sounds over them.
        return voicings(soprano - 12)
    return np.array(out, np.int64).reshape(-1, 3)


def chord_root(pitches) -> int | None:
    """The root's pitch class of a common chord (the note from which its pitch classes stack in thirds)."""
    return _root(frozenset(int(p) % 12 for p in pitches))


@functools.cache
def _root(pcs: frozenset) -> int | None:
    for root in range(12):
        shape = frozenset((p - root) % 12 for p in pcs)
        if any(shape <= frozenset(s) and 0 in shape and (3 in shape or 4 in shape)
               for s in ((0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10), (0, 3, 6, 10), (0, 3, 6, 9))):
            return root
    return None


def parallels_to(before: list[int], after: np.ndarray) -> np.ndarray:
    """``harmony_metrics.parallels`` from one four-note chord (low to high) to each of (C, 4): int (C,)."""
    b = np.asarray(before)
    count = np.zeros(len(after), np.int64)
    for i in range(4):
        for j in range(i + 1, 4):
            interval = (b[j] - b[i]) % 12
            if interval not in harmony.PERFECT or b[j] == b[i]:
                continue
            mi, mj = after[:, i] - b[i], after[:, j] - b[j]
            same = (after[:, j] - after[:, i]) % 12 == interval
            count += same & (mi != 0) & (mj != 0) & ((mi > 0) == (mj > 0))
    return count


def beat_sopranos(tune: Grid, beat: int, first: int) -> list[int | None]:
    """The tune's note for each beat (steps first, first + beat, ...): the one sounding as the beat starts,
    else the first struck within it, else None (the tune rests through the beat)."""
    out = []
    for s in range(first, len(tune), beat):
        now = np.flatnonzero(tune.sound[s])
        if now.size:
            out.append(int(now[-1]))
            continue
        later = np.flatnonzero(tune.onset[s: s + beat].any(axis=0))
        out.append(int(later[-1]) if later.size else None)
    return out


def phrase_ends(tune: Grid, beat: int, first: int, n_beats: int) -> tuple[set[int], set[int]]:
    """Beats where a phrase of the tune ends -- a note of two beats or more, one a rest follows, the last --
    and the later beats that note still sounds through (the cadence's chord is held there)."""
    notes = tune.notes()
    ends, held = set(), set()
    for k, (_, start, end, _) in enumerate(notes):
        b = (start - first) // beat
        if not 0 <= b < n_beats:
            continue
        rest_after = k + 1 == len(notes) or notes[k + 1][1] - end >= beat
        if end - start >= 2 * beat or rest_after or k + 1 == len(notes):
            ends.add(int(b))
            held.update(range(int(b) + 1, min(n_beats, (end - first - 1) // beat + 1)))
    return ends, held


def leading_costs(prev, prev_soprano, cands: np.ndarray, soprano) -> np.ndarray:
    """The rules between the last beat's chord (alto, tenor, bass; the tune's note over it) and each candidate
    (C, 3) under ``soprano`` (a note, or one per candidate): minus the costs of consecutive fifths and octaves,
    and of leaps."""
    a0, t0, b0 = prev
    cost = np.zeros(len(cands))
    inner = np.maximum(np.abs(cands[:, 0] - a0) - 5, 0) + np.maximum(np.abs(cands[:, 1] - t0) - 5, 0)
    cost -= LEAP_COST * inner
    leap = np.abs(cands[:, 2] - b0)
    cost -= BASS_LEAP_COST * (np.maximum(leap - 12, 0) + 0.5 * np.maximum(leap - 7, 0))
    if prev_soprano is not None:
        after = np.column_stack([cands[:, 2], cands[:, 1], cands[:, 0], np.broadcast_to(soprano, len(cands))])
        cost -= PARALLEL_COST * parallels_to([b0, t0, a0, prev_soprano], after)
    return cost


class Harmoniser:
    """Alto, tenor and bass under a tune, offline (``harmonise``): a beam search over its beats, each beam with
    the model's state (see the module's docstring)."""

    def __init__(self, model: BachLSTM, temperature: float = 0.5, seed: int | None = None, beam: int = BEAM,
                 key: tuple[int, str] | None = None):
        if not getattr(model, "four_part", False) and not model.cfg.player_input:
            raise ImproviserError("harmonise needs a checkpoint trained on four-part chorales (the shipped one)")
        if not (0.0 <= temperature <= 5.0) or np.isnan(temperature):
            raise ImproviserError(f"temperature must be between 0 and 5 (got {temperature})")
        self.model = model
        self.cfg = model.cfg
        self.temperature = float(temperature)
        self.rng = np.random.default_rng(seed)
        self.beam = int(beam)
        self.key = key

    def __call__(self, melody: Grid) -> Harmonisation:
        if len(melody) > MAX_STEPS:
            beats = len(melody) / melody.steps_per_beat
            raise ImproviserError(f"the melody lasts {beats:.0f} beats; harmonise takes up to "
                                  f"{MAX_STEPS // melody.steps_per_beat} (20 minutes at 120 bpm): cut it into parts")
        tune, polyphonic = top_line(melody)
        if not tune.sound.any():
            raise ImproviserError("the melody file holds no notes to harmonise")
        cfg = self.cfg
        spb = tune.steps_per_beat
        if spb != cfg.steps_per_beat:
            raise ImproviserError(f"the melody is on a grid of {spb} steps a beat; the model plays "
                                  f"{cfg.steps_per_beat}")
        key = self.key or analysis.estimate_key(tune)[:2]
        scale = analysis.in_key(*key)
        beat = tune.beat_steps
        bar = tune.steps_per_bar
        first = (-tune.bar_start) % beat  # the first step on a beat of the tune's meter
        sopranos = beat_sopranos(tune, beat, first)
        low = min((s for s in sopranos if s is not None), default=LOWEST_SOPRANO)
        if low < LOWEST_SOPRANO:
            octaves = -(-(LOWEST_SOPRANO - low) // 12)
            raise ImproviserError(f"the tune goes down to MIDI note {low} on a beat: too low for three parts under it "
                                  f"(harmonise takes tunes from B2, MIDI {LOWEST_SOPRANO}, up); transpose it up "
                                  + ("an octave" if octaves == 1 else f"{octaves} octaves"))
        n_beats = len(sopranos)
        ends, held = phrase_ends(tune, beat, first, n_beats)
        # The steps before the first beat (a pickup shorter than a beat): the tune alone.
        total = first + n_beats * beat
        tune_on = np.zeros((total, N_MIDI), bool)
        tune_snd = np.zeros((total, N_MIDI), bool)
        tune_on[: len(tune)], tune_snd[: len(tune)] = tune.onset[:total], tune.sound[:total]
        bar_pos = (np.arange(total) + tune.bar_start) % bar

        from .generator import key_shares

        memory = KeyMemory()
        memory.pin(key_shares(self.model, key))
        mem_feat = memory.features()
        pmem = np.zeros_like(mem_feat)
        layers, hidden = cfg.layers, cfg.hidden

        def features(onset, sound, pos):
            """Inputs for frames (N, L, 128) at bar positions pos (L,): the model's own notes, the player silent."""
            n, length = onset.shape[:2]
            flat = frame_features(onset.reshape(-1, N_MIDI), sound.reshape(-1, N_MIDI), np.tile(pos, n), cfg,
                                  np.zeros((n * length, N_MIDI), bool), np.zeros((n * length, N_MIDI), bool),
                                  np.tile(mem_feat, (n * length, 1)), np.tile(pmem, (n * length, 1)))
            return torch.from_numpy(flat.reshape(n, length, -1))

        with torch.no_grad():
            # A beam: (score, LSTM state (h, c) each (layers, 1, hidden) having heard every frame before the
            # last, the last frame (onset, sound), the chords so far, the tune's note on the last beat).
            # Before the first beat: silence, or the tune's pickup alone (shorter than a beat).
            h0 = torch.zeros(layers, 1, hidden)
            silent = np.zeros(N_MIDI, bool)
            if first:
                state = self._pickup(tune_on[:first], tune_snd[:first], bar_pos[:first], features)
                beams = [(0.0, state, (tune_on[first - 1], tune_snd[first - 1]), [], None)]
            else:
                beams = [(0.0, (h0, h0.clone()), (silent, silent), [], None)]
            for k, s in enumerate(sopranos):
                t0 = first + k * beat
                steps = slice(t0, t0 + beat)
                if k in held and all(last_chord(b[3]) is not None for b in beams):
                    beams = self._hold(beams, steps, tune_on, tune_snd, bar_pos, features)
                    continue
                if s is None:
                    cands = np.zeros((1, 3), np.int64) - 1  # the tune rests: so do the parts
                else:
                    cands = voicings(s)
                beams = self._beat(beams, cands, s, k, steps, tune_on, tune_snd, bar_pos, key, scale, ends,
                                   features)
        best = max(beams, key=lambda b: b[0])
        chords = best[3]
        onset = np.zeros((len(tune), N_MIDI), bool)
        sound = np.zeros((len(tune), N_MIDI), bool)
        for _, chord, t0, t1 in chord_spans(chords, first, beat, len(tune)):
            onset[t0, list(chord)] = True
            sound[t0:t1, list(chord)] = True
        parts = Grid(onset, sound, spb, tune.beats_per_bar, tune.bpm, None, tune.bar_start, tune.meter,
                     tune.tempo_map)
        return Harmonisation(tune, parts, chords, key, polyphonic)

    def _beat(self, beams, cands, soprano, k, steps, tune_on, tune_snd, bar_pos, key, scale, ends, features):
        """One beat: every beam with every candidate, scored by the model and the rules; the best ``beam`` kept."""
        beat_len = steps.stop - steps.start
        n_c = len(cands)
        rest = soprano is None
        # Each candidate's frames for the beat: the chord struck on the beat and held, the tune over it.
        c_on = np.zeros((n_c, beat_len, N_MIDI), bool)
        c_snd = np.zeros((n_c, beat_len, N_MIDI), bool)
        if not rest:
            rows = np.arange(n_c)[:, None]
            c_on[rows, 0, cands] = True
            c_snd[rows, :, cands] = True
        c_on |= tune_on[steps][None]
        c_snd |= tune_snd[steps][None]
        rule = np.zeros(n_c)
        if not rest:
            rule -= OUT_OF_KEY_COST * (~scale[cands % 12]).sum(axis=1)
            # Against the tune's notes through the beat (its passing notes too): each step a part is a second,
            # fourth, tritone or seventh from the tune's note, as a share of the beat.
            melody = tune_snd[steps]
            top = np.where(melody.any(axis=1), N_MIDI - 1 - np.argmax(melody[:, ::-1], axis=1), -1)  # (L,)
            sounding = top >= 0
            gap = (top[None, None, sounding] - cands[:, :, None]) % 12  # (C, 3, L')
            rule -= DISSONANCE_COST * (~np.isin(gap, CONSONANT_GAPS)).sum(axis=(1, 2)) / beat_len
            is_end = k in ends
            before_end = (k + 1) in ends
            tonic, dominant = key[0], (key[0] + 7) % 12
            for i, (a, t, b) in enumerate(cands):
                root = chord_root((soprano, a, t, b))
                if root is None:
                    continue
                if (b - root) % 12 == 7 and not is_end:
                    rule[i] -= SECOND_INVERSION_COST
                if is_end and b % 12 == root:
                    rule[i] += CADENCE_BONUS if root == tonic else CADENCE_BONUS / 2 if root == dominant else 0
                if before_end and root == dominant and b % 12 == root:
                    rule[i] += CADENCE_BONUS / 2
        base = np.tile(rule, (len(beams), 1))  # (B, C) the rules' part of each beam's continuations
        for i, beam in enumerate(beams):
            prev = last_chord(beam[3])
            if prev is not None and not rest:
                base[i] += leading_costs(prev, beam[4], cands, soprano)
        # The model judges the SHORTLIST candidates the rules like best for each beam: each beam's state, then
        # the beat's first frame (the chord struck under the tune's note) for each of its candidates.
        short = np.argsort(-base, axis=1, kind="stable")[:, :SHORTLIST]  # (B, S)
        n_b, n_s = short.shape
        h = torch.cat([b[1][0] for b in beams], dim=1)  # (layers, B, hidden)
        c = torch.cat([b[1][1] for b in beams], dim=1)
        last_on = np.stack([b[2][0] for b in beams])[:, None]
        last_snd = np.stack([b[2][1] for b in beams])[:, None]
        x_last = features(last_on, last_snd, bar_pos[steps.start: steps.start + 1])  # (B, 1, in)
        out, (h1, c1) = self.model.lstm(x_last, (h, c))  # the LSTM's output before the beat's first frame
        y = torch.from_numpy(frame_targets(c_on[:, 0], c_snd[:, 0], self.cfg))  # (C, n)
        hb = out.expand(n_b, n_s, out.shape[-1]).reshape(1, n_b * n_s, -1)
        xb = x_last.expand(n_b, n_s, x_last.shape[-1]).reshape(1, n_b * n_s, -1)
        logp = self.model.head_log_prob(hb, xb, y[torch.from_numpy(short.reshape(1, -1))]).reshape(n_b, n_s)
        score = logp.numpy() + np.take_along_axis(base, short, axis=1) + np.array([b[0] for b in beams])[:, None]
        pick = score.copy()
        if self.temperature > 0:
            pick = pick + self.temperature * self.rng.gumbel(size=pick.shape)
        order = np.argsort(-pick, axis=None, kind="stable")[: self.beam]
        chosen = [(bi, int(short[bi, si]), float(score[bi, si])) for bi, si in (divmod(int(o), n_s) for o in order)]
        # Advance the kept beams through the beat with their chosen frames.
        kept = []
        for bi, ci, sc in chosen:
            chord = None if rest else tuple(int(p) for p in cands[ci])
            kept.append((sc, (h1[:, bi: bi + 1], c1[:, bi: bi + 1]), beams[bi][2], beams[bi][3] + [chord], soprano,
                         c_on[ci], c_snd[ci]))
        return self._advance_chosen(kept, steps, bar_pos, features)

    def _advance_chosen(self, kept, steps, bar_pos, features):
        """Step each kept beam's LSTM through the rest of its beat (its first input was taken when scoring)."""
        beat_len = steps.stop - steps.start
        if beat_len == 1:
            return [(s, st, (on[-1], snd[-1]), chords, sop) for s, st, _, chords, sop, on, snd in kept]
        on = np.stack([k[5][:-1] for k in kept])
        snd = np.stack([k[6][:-1] for k in kept])
        x = features(on, snd, bar_pos[steps.start + 1: steps.stop])
        h = torch.cat([k[1][0] for k in kept], dim=1)
        c = torch.cat([k[1][1] for k in kept], dim=1)
        _, (h2, c2) = self.model.lstm(x, (h, c))
        return [(s, (h2[:, i: i + 1], c2[:, i: i + 1]), (k_on[-1], k_snd[-1]), chords, sop)
                for i, (s, _, _, chords, sop, k_on, k_snd) in enumerate(kept)]

    def _hold(self, beams, steps, tune_on, tune_snd, bar_pos, features):
        """A beat through which a cadence's note is held: every beam holds its chord, unstruck, under it."""
        kept = []
        for score, state, last, chords, soprano in beams:
            on, snd = tune_on[steps].copy(), tune_snd[steps].copy()
            snd[:, list(last_chord(chords))] = True
            x = features(np.vstack([last[0][None], on[:-1]])[None], np.vstack([last[1][None], snd[:-1]])[None],
                         bar_pos[steps])
            _, state = self.model.lstm(x, state)
            kept.append((score, state, (on[-1], snd[-1]), chords + [HELD], soprano))
        return kept

    def _pickup(self, on, snd, pos, features):
        """The state after hearing the tune's pickup (frames (L, 128) before the first beat, at bar positions
        pos (L,)): every beam starts from it."""
        silent = np.zeros((1, N_MIDI), bool)
        x = features(np.vstack([silent, on[:-1]])[None], np.vstack([silent, snd[:-1]])[None], pos)
        h0 = torch.zeros(self.cfg.layers, 1, self.cfg.hidden)
        _, state = self.model.lstm(x, (h0, h0.clone()))
        return state


def harmonise(model: BachLSTM, melody: Grid, temperature: float = 0.5, seed: int | None = None,
              key: tuple[int, str] | None = None, beam: int = BEAM) -> Harmonisation:
    """Alto, tenor and bass beneath ``melody`` (its top line), one chord a beat of its meter."""
    return Harmoniser(model, temperature, seed, beam, key)(melody)


PART_NAMES = ("alto", "tenor", "bass")


def last_chord(chords: list):
    """The chord sounding after these beats: the last one struck (None if the parts rest)."""
    for chord in reversed(chords):
        if chord != HELD:
            return chord
    return None


def chord_spans(chords: list, first: int, beat: int, n_steps: int):
    """(beat index, (alto, tenor, bass), first step, end step) of each chord struck, held beats joined on."""
    spans = []
    for k, chord in enumerate(chords):
        t0 = first + k * beat
        if t0 >= n_steps:
            break
        t1 = min(n_steps, t0 + beat)
        if chord == HELD and spans:
            spans[-1][3] = t1
        elif chord is not None and chord != HELD:
            spans.append([k, chord, t0, t1])
    return [tuple(s) for s in spans]


def part_tracks(h: Harmonisation, bpm: float, channel: int = 1, voices: bool = False) -> dict[str, list]:
    """The parts as timed notes at ``bpm``: one track 'improviser' on ``channel``, or (voices) a track per part
    on MIDI channels 2-4 (the tune, the soprano, keeps its own). Velocities: the tune's level, less a little,
    with the meter's accent (downbeat, beat)."""
    from ..music.encoding import TimedNote
    from ..music.voices import VOICE_CHANNELS
    from .rules import ACCENT, LEVEL

    spb = h.tune.steps_per_beat
    step_s = 60.0 / bpm / spb
    struck = h.tune.velocity[h.tune.onset] if h.tune.velocity is not None else np.array([])
    level = float(struck.mean()) - 6 if struck.size else LEVEL
    meter, beat = h.tune.time_signature, h.tune.beat_steps
    first = (-h.tune.bar_start) % beat
    tracks: dict[str, list] = {name: [] for name in PART_NAMES} if voices else {"improviser": []}
    for _, chord, t0, t1 in chord_spans(h.chords, first, beat, len(h.tune)):
        velocity = int(np.clip(round(level + ACCENT[meter.accent(t0 + h.tune.bar_start, spb)]), 1, 127))
        for v, pitch in enumerate(chord):
            name = PART_NAMES[v] if voices else "improviser"
            ch = VOICE_CHANNELS[v + 1] if voices else channel
            tracks[name].append(TimedNote(int(pitch), t0 * step_s, t1 * step_s, velocity, ch))
    return tracks
