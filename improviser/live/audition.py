"""Auditioning the listening: the live engine, on a virtual clock, against held-out melodies.

``improviser evaluate --listening``. Held-out folk tunes (never trained on) are played to the
improviser exactly as a player would play them live -- the same engine, listening part and
recorder as ``record --input`` -- and what it plays is measured against references: the
tunes' own continuations, and Bach's own lower voices against his soprano.
"""

from __future__ import annotations

import numpy as np

from ..model.network import BachLSTM
from ..music.encoding import Grid

EVAL_BPM = 100.0  # the virtual clock's tempo; on the grid, the figures do not depend on it


def session_grid(session, track: str, step_seconds: float, n_steps: int) -> Grid:
    """A session's notes on one track, back on the step grid (bool (n_steps, 128))."""
    from ..music.encoding import notes_to_grid

    notes = session.notes(track)
    if not notes:
        z = np.zeros((n_steps, 128), bool)
        return Grid(z, z.copy())
    a = np.array([(n.pitch, round(n.start / step_seconds), round(n.end / step_seconds)) for n in notes])
    onset, sound, _ = notes_to_grid(a[:, 0], a[:, 1], a[:, 2], n_steps)
    return Grid(onset, sound)


def _window(grid: Grid, start: int, length: int) -> Grid:
    """Steps start .. start + length of a grid (silence past its end)."""
    on = np.zeros((length, 128), bool)
    snd = np.zeros((length, 128), bool)
    part = slice(start, min(len(grid), start + length))
    n = max(0, part.stop - part.start)
    on[:n], snd[:n] = grid.onset[part], grid.sound[part]
    return Grid(on, snd)


def _on_the_bar(phrase: Grid, bar_steps: int) -> Grid:
    """The phrase with silence before its pickup, so its first full bar starts on the model's bar line."""
    pad = (bar_steps - phrase.bar_start) % bar_steps if phrase.bar_start else 0
    z = np.zeros((pad, 128), bool)
    return Grid(np.vstack([z, phrase.onset]), np.vstack([z, phrase.sound]), phrase.steps_per_beat,
                max(1, bar_steps // phrase.steps_per_beat))


def listening(model: BachLSTM, n_melodies: int = 60, seed: int = 0, temperature: float = 0.9,
              respond_after: float = 2.0, progress: bool = True) -> dict:
    """How the model listens, on held-out folk melodies (never trained on), beside references.

    Answering: each tune's first 4 bars are the phrase, heard live (the engine on a virtual clock,
    respond mode); the 4 bars it plays after answering starts are judged against the phrase's key
    (Krumhansl-Schmuckler): same or relative key, or a close one (one accidental apart). Also after
    the same phrase given as ``--prime``, with no phrase at all (the baseline), and the tune's own
    next 4 bars (the reference).
    Accompanying: it plays along with each tune's first 8 bars; every (tune note, its note) pair
    sounding at the same step is counted: consonant, octave/unison doubling, and how many notes it
    sounds at once. Beside: the model without its guard, the same without hearing the tune
    (baseline), and Bach's alto, tenor and bass against his soprano on the held-out chorales
    (reference).
    """
    from tqdm import tqdm

    from ..model.data import load_bach_chorales, split
    from ..model.generator import StreamingGenerator
    from ..model.generator import generate as free
    from ..music.harmony_metrics import harmony_counts, harmony_summary
    from ..music.listening_metrics import answer_key_shares, bach_reference_consonance, consonance, consonance_summary
    from ..music.melodies import load_heldout_melodies, place
    from .engine import accompany
    from .recorder import IMPROVISER

    rng = np.random.default_rng(seed)
    tunes = [place(m, rng) for m in load_heldout_melodies(n_melodies, seed)]
    step_s = 60.0 / EVAL_BPM / model.cfg.steps_per_beat
    pairs = {"answer": [], "prime": [], "no phrase": [], "the tune itself": []}
    acc = {"accompanying": [], "voice-led draws, no accompanist": [], "the same, player not a voice": [],
           "the same, no guard": [], "not listening": []}
    texture = {name: [] for name in acc}  # harmony counts of the tune and its notes together
    for i, m in enumerate(tqdm(tunes, desc="listening", unit="tune", disable=not progress)):
        bar = m.bar_steps
        bpb = max(1, bar // model.cfg.steps_per_beat)
        phrase = _on_the_bar(m.phrase(4), bar)
        answer_len = 4 * bar
        # Live, respond mode: it listens, waits respond_after beats, answers.
        gen = StreamingGenerator(model, temperature, 1, seed=i, beats_per_bar=bpb)
        wait = respond_after * model.cfg.steps_per_beat
        s = accompany(gen, phrase, EVAL_BPM, "respond", respond_after,
                      extra_beats=(wait + answer_len) / model.cfg.steps_per_beat + 1)
        n_steps = round(s.length / step_s)
        own = session_grid(s, IMPROVISER, step_s, n_steps)
        played = np.flatnonzero(own.sound.any(axis=1))
        first = int(played[0]) if played.size else len(phrase)
        pairs["answer"].append((m.phrase(4), _window(own, first, answer_len)))
        # The same phrase as a primer file.
        pairs["prime"].append((m.phrase(4), free(model, answer_len, temperature, 1, seed=i, prime=phrase,
                                                 beats_per_bar=bpb)))
        pairs["no phrase"].append((m.phrase(4), free(model, answer_len, temperature, 1, seed=i, beats_per_bar=bpb)))
        pairs["the tune itself"].append((m.phrase(4), m.continuation(4)))
        # Accompanying its first 8 bars (or as many as it has).
        for name, guard, voice, parts in (("accompanying", True, True, True),
                                          ("voice-led draws, no accompanist", True, True, False),
                                          ("the same, player not a voice", True, False, False),
                                          ("the same, no guard", False, True, False)):
            heard, own = accompaniment(model, m, i, temperature, guard=guard, voice_with_player=voice,
                                       accompanist=parts)
            acc[name].append(consonance(heard, own))
            texture[name].append(harmony_counts(heard.sound | own.sound, model.cfg.steps_per_beat))
        tune = _on_the_bar(m.phrase(min(8, m.whole_bars)), bar)
        alone = free(model, len(tune), temperature, 1, seed=i, beats_per_bar=bpb)
        acc["not listening"].append(consonance(tune, alone))
        texture["not listening"].append(harmony_counts(tune.sound | alone.sound, model.cfg.steps_per_beat))
    _, valid = split(load_bach_chorales(voices=True, progress=progress))
    bach = [bach_reference_consonance(p.voices) for p in valid if p.voices and len(p.voices) == 4]
    textures = {name: harmony_summary(c) for name, c in texture.items()}
    textures["Bach: his four parts"] = harmony_summary(harmony_counts(p.grid, model.cfg.steps_per_beat)
                                                       for p in valid if p.voices and len(p.voices) == 4)
    keys = {name: answer_key_shares(p) for name, p in pairs.items()}
    fits = {name: consonance_summary(c) for name, c in acc.items()}
    fits["Bach: lower voices vs soprano"] = consonance_summary(bach)
    return {"keys": keys, "consonance": fits, "texture": textures, "n_tunes": len(tunes), "n_chorales": len(bach)}


def accompaniment(model: BachLSTM, melody, seed: int, temperature: float = 0.9, **options) -> tuple[Grid, Grid]:
    """It accompanies a melody's first 8 bars (or as many as it has), live on a virtual clock: (the melody as
    heard, its own notes), on the step grid. ``options`` go to the generator (guard, voice_with_player, ...)."""
    from ..model.generator import StreamingGenerator
    from .engine import accompany
    from .recorder import IMPROVISER, PLAYER

    bar = melody.bar_steps
    tune = _on_the_bar(melody.phrase(min(8, melody.whole_bars)), bar)
    gen = StreamingGenerator(model, temperature, 1, seed=seed, beats_per_bar=max(1, bar // model.cfg.steps_per_beat),
                             **options)
    s = accompany(gen, tune, EVAL_BPM, "accompany", extra_beats=0)
    step_s = 60.0 / EVAL_BPM / model.cfg.steps_per_beat
    return session_grid(s, PLAYER, step_s, len(tune)), session_grid(s, IMPROVISER, step_s, len(tune))


def format_listening(r: dict) -> list[str]:
    lines = [f"answers after a 4-bar phrase of {r['n_tunes']} held-out folk tunes (key of the next 4 bars):",
             f"  {'':28} {'same or relative key':>22} {'close key (<=1 accidental)':>28}"]
    for name, k in r["keys"].items():
        lines.append(f"  {name:28} {k['same_or_relative']:22.0%} {k['close']:28.0%}")
    lines += ["pairs of (tune note, its note) sounding together, accompanying the first 8 bars:",
              f"  {'':32} {'consonant':>10} {'doublings':>10} {'notes at once':>14}"]
    for name, c in r["consonance"].items():
        lines.append(f"  {name:32} {c['consonant_share']:10.0%} {c['doubling_share']:10.0%} "
                     f"{c['notes_per_step']:14.2f}")
    lines += ["the tune and its notes as one texture, on the beat (as --harmony counts four-part writing):",
              f"  {'':32} {'parallels/100':>14} {'common chords':>14} {'four notes':>11}"]
    for name, h in r.get("texture", {}).items():
        lines.append(f"  {name:32} {h['parallels_per_100']:14.1f} {h['common_chords']:14.0%} {h['four_notes']:11.0%}")
    return lines
