"""Measurements of how the improviser answers and accompanies a player. Pure numpy.

Two questions, asked of held-out melodies (:mod:`improviser.melodies`) and, for
reference, of Bach's own chorales:

- Does an answer stay in the player's key? :func:`answer_key_shares` estimates
  the key of each phrase and of its answer (Krumhansl-Schmuckler) and counts how
  often they are the same or relative key, or at most one accidental apart
  (:func:`key_relation`).
- Does what the improviser plays along with the player sound consonant with it?
  :func:`consonance` counts, step by step, the intervals between every player
  pitch and every pitch of its own. Counts, not shares, so several pieces can be
  summed before :func:`consonance_summary` turns them into shares.
  :func:`bach_reference_consonance` gives the same counts for a chorale, its
  soprano as the player and the lower parts as the answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .analysis import estimate_key, key_name
from .encoding import Grid

MODES = ("major", "minor")
KEY_NAMES = [key_name(tonic, mode) for mode in MODES for tonic in range(12)]  # "C major" .. "B minor"
CONSONANT = frozenset({0, 3, 4, 7, 8, 9})  # |p - q| mod 12: unison/octave, thirds, fifth, sixths (not the fourth)


def fifths(key: tuple[int, str]) -> int:
    """The key's signature as a position on the circle of fifths: sharps positive, flats negative, in -5..+6.

    A minor key counts as its relative major. Enharmonic keys are one position (F# major = Gb major = +6),
    so distances between positions are taken modulo 12.
    """
    tonic, mode = key[0], key[1]
    if mode not in MODES:
        raise ValueError(f"mode must be 'major' or 'minor', got {mode!r}")
    major_tonic = (tonic + 3) % 12 if mode == "minor" else tonic % 12
    pos = major_tonic * 7 % 12  # a fifth is 7 semitones, and 7 * 7 = 49 = 1 mod 12
    return pos - 12 if pos > 6 else pos


def fifths_distance(a: tuple[int, str], b: tuple[int, str]) -> int:
    """Steps apart on the circle of fifths (0..6): how many accidentals the two signatures differ by."""
    d = (fifths(a) - fifths(b)) % 12
    return min(d, 12 - d)


def key_relation(a: tuple[int, str], b: tuple[int, str]) -> str:
    """'same', 'relative' (C major / A minor), 'close' (signatures one accidental apart) or 'far'.

    Keys are (tonic pitch class, mode); longer tuples such as ``estimate_key``'s (tonic, mode, r) are accepted.
    """
    if a[0] % 12 == b[0] % 12 and a[1] == b[1]:
        return "same"
    distance = fifths_distance(a, b)
    if distance == 0:
        return "relative"  # same signature, different mode
    return "close" if distance == 1 else "far"


def answer_key_shares(pairs: Iterable[tuple[Grid, Grid]]) -> dict:
    """How often each answer is in the key of its phrase, over (phrase, answer) pairs.

    Returns {"same_or_relative": share, "close": share of same, relative or close, "n": pairs,
    "silent": pairs with a silent phrase or answer}. A silent answer has no key and counts as a
    miss (out of key) in both shares. Shares are NaN for no pairs.
    """
    n = in_key = close = silent = 0
    for phrase, answer in pairs:
        n += 1
        if not phrase.sound.any() or not answer.sound.any():
            silent += 1
            continue
        relation = key_relation(estimate_key(phrase), estimate_key(answer))
        in_key += relation in ("same", "relative")
        close += relation != "far"
    share = (lambda k: k / n) if n else (lambda k: float("nan"))
    return {"same_or_relative": share(in_key), "close": share(close), "n": n, "silent": silent}


def _consonance(player: np.ndarray, own: np.ndarray) -> dict:
    """consonance() on two bool (T, 128) sound arrays; the shorter is taken as silent at its end."""
    n = max(len(player), len(own))
    p = np.zeros((n, 128), np.int64)
    q = np.zeros((n, 128), np.int64)
    p[:len(player)] = player
    q[:len(own)] = own
    pp, qq = np.flatnonzero(p.any(axis=0)), np.flatnonzero(q.any(axis=0))
    together = p[:, pp].T @ q[:, qq]  # steps at which each (player pitch, own pitch) sound together
    interval = np.abs(pp[:, None] - qq[None, :]) % 12
    consonant = np.isin(interval, list(CONSONANT))
    own_steps = q.any(axis=1)
    return {"pairs": int(together.sum()), "consonant": int(together[consonant].sum()),
            "doublings": int(together[interval == 0].sum()),
            "own_steps": int(own_steps.sum()), "own_notes": int(q.sum())}


def consonance(player: Grid, own: Grid) -> dict:
    """Interval counts between what the player and the improviser (``own``) sound at the same steps.

    At every step, every pair of a player pitch p and an own pitch q is one pair, with interval
    ``|p - q| mod 12``: consonant if in {0, 3, 4, 7, 8, 9} (the fourth is dissonant), a doubling if 0.
    Returns {"pairs", "consonant", "doublings", "own_steps": steps where own sounds anything,
    "own_notes": pitches own sounds summed over those steps}. Grids of different lengths are compared
    as if the shorter one were silent at its end.
    """
    return _consonance(player.sound, own.sound)


def consonance_summary(counts_list: Iterable[dict]) -> dict:
    """Summed ``consonance`` counts and their shares: "consonant_share" and "doubling_share" (of pairs),
    "notes_per_step" (mean pitches own sounds at a step where it sounds any). NaN where undefined."""
    keys = ("pairs", "consonant", "doublings", "own_steps", "own_notes")
    total = dict.fromkeys(keys, 0)
    for counts in counts_list:
        for k in keys:
            total[k] += counts[k]

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {**total, "consonant_share": ratio(total["consonant"], total["pairs"]),
            "doubling_share": ratio(total["doublings"], total["pairs"]),
            "notes_per_step": ratio(total["own_notes"], total["own_steps"])}


def bach_reference_consonance(grids_by_voice: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """``consonance`` counts for a chorale: the soprano (part 0) as the player, the other parts together as own.

    grids_by_voice: (onset, sound) bool (T, 128) per part, highest first, as ``Piece.voices`` returns.
    """
    if len(grids_by_voice) < 2:
        raise ValueError(f"need the soprano and at least one lower part, got {len(grids_by_voice)} part(s)")
    soprano = grids_by_voice[0][0] | grids_by_voice[0][1]
    lower = np.zeros((max(len(s) for _, s in grids_by_voice[1:]), 128), bool)
    for onset, sound in grids_by_voice[1:]:
        lower[:len(sound)] |= sound | onset
    return _consonance(soprano, lower)

