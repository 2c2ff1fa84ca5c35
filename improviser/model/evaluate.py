"""Scoring a model: negative log-likelihood under the JSB Chorales protocol, and originality of what it plays."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ImproviserError
from ..music.analysis import CopyFinder, overlap, profiles
from ..music.encoding import Grid
from .network import BachLSTM
from .train import fits, piece_arrays

JSB_LOW, JSB_HIGH = 21, 108  # the benchmark's 88 keys


@torch.no_grad()
def frame_nll(model: BachLSTM, grids: list[Grid], skip_first: bool = True) -> tuple[float, int]:
    """Summed -log p(frame_t | frames before t) in nats over every piece, and the number of frames scored.

    With skip_first, the first frame of each piece is not scored (the JSB protocol);
    it still is the input for the second.
    """
    model.eval()
    total, count = 0.0, 0
    for g in grids:
        if not fits(g, model.cfg):
            raise ImproviserError(f"a piece has notes outside the model's range MIDI {model.cfg.low}.."
                                  f"{model.cfg.low + model.cfg.n_pitches - 1}; its likelihood would be zero")
        x, y = piece_arrays(g, model.cfg)
        logp = model(torch.from_numpy(x)[None], torch.from_numpy(y)[None])[0].double()
        if skip_first:
            logp = logp[1:]
        total -= float(logp.sum())
        count += int(logp.numel())
    return total, count


def check_jsb_model(model: BachLSTM) -> None:
    """The JSB protocol scores which of the 88 keys sound, one frame per quarter note."""
    cfg = model.cfg
    if cfg.states != 2 or cfg.steps_per_beat != 1:
        raise ImproviserError("this checkpoint models note onsets on a 16th-note grid; the JSB benchmark scores "
                              "sounding keys per quarter note — train a benchmark model with "
                              "`improviser train --jsb FILE.json --out jsb.pt`")
    if cfg.low < JSB_LOW or cfg.low + cfg.n_pitches - 1 > JSB_HIGH:
        raise ImproviserError(f"the JSB benchmark scores the 88 keys MIDI 21..108; this model plays "
                              f"{cfg.low}..{cfg.low + cfg.n_pitches - 1}, outside them")


def originality(generated: list[Grid], training: list[Grid], reference: list[Grid]) -> dict:
    """Copies of the training data in generated pieces, and profiles against held-out reference pieces."""
    finder = CopyFinder(training)
    longest = [finder.longest_copy(g) for g in generated]
    bars = [finder.bar_copies(g) for g in generated]
    gen_prof, ref_prof = profiles(generated), profiles(reference)
    spb = generated[0].steps_per_bar
    return {
        "longest_copy_steps": int(max(longest)),
        "longest_copy_bars": max(longest) / spb,
        "bars_copied": int(sum(b[0] for b in bars)),
        "bars_total": int(sum(b[1] for b in bars)),
        "profile_overlap": {k: overlap(gen_prof[k], ref_prof[k]) for k in gen_prof},
        "profiles": {k: (gen_prof[k], ref_prof[k]) for k in gen_prof},
    }


def format_profile(name: str, ours: np.ndarray, ref: np.ndarray) -> str:
    def row(v):
        return " ".join(f"{x:5.2f}" for x in v)

    return f"  {name}\n    generated: {row(ours)}\n    held-out : {row(ref)}"


def perplexity_note(nll: float) -> str:
    return f"(per-frame perplexity {math.exp(min(nll, 700)):.1f})"


def harmony(model: BachLSTM, reference: list[Grid], n_pieces: int = 20, n_steps: int = 200,
            temperature: float = 0.9) -> dict:
    """Four-part writing of ``n_pieces`` free pieces (seeds 0..n-1), drawn as it plays and with every step
    the model's first draw (no voice leading), beside ``reference`` (held-out chorales), counted alike
    (``music.harmony_metrics``)."""
    from ..music.harmony_metrics import harmony_counts, harmony_summary
    from .generator import StreamingGenerator

    def pieces(voicing: bool) -> dict:
        counts = []
        for seed in range(n_pieces):
            gen = StreamingGenerator(model, temperature, 1, seed=seed, voicing=voicing)
            counts.append(harmony_counts(np.array([gen.step().sound for _ in range(n_steps)]),
                                         model.cfg.steps_per_beat))
        return harmony_summary(counts)

    return {"as it plays": pieces(getattr(model, "four_part", False)), "first draws only": pieces(False),
            "Bach (held-out chorales)": harmony_summary(harmony_counts(g) for g in reference)}


def format_harmony(r: dict) -> list[str]:
    lines = [f"  {'':26} {'parallel 5ths/8ves':>19} {'common chords':>14} {'four notes':>11}",
             f"  {'':26} {'per 100 changes':>19} {'on beats':>14} {'of steps':>11}"]
    for name, h in r.items():
        lines.append(f"  {name:26} {h['parallels_per_100']:19.1f} {h['common_chords']:14.0%} {h['four_notes']:11.0%}")
    return lines
