"""It never plays a bar of Bach's verbatim: the fingerprints it avoids, and the shipped model's free pieces
checked against the training chorales in every transposition by an independent search (``CopyFinder``)."""

from __future__ import annotations

import numpy as np

from improviser.model.data import load_bach_chorales, split
from improviser.model.generator import StreamingGenerator
from improviser.music.analysis import COPY_STEPS, CopyFinder, passage_keys, window_key
from improviser.music.encoding import Grid


def test_fingerprints_are_the_same_in_every_key_and_miss_silence():
    rng = np.random.default_rng(0)
    sound = np.zeros((16, 128), bool)
    sound[:, 30:90] = rng.random((16, 60)) < 0.05  # notes well inside the range, so moving them loses none
    sound[:, 60] = True
    onset = sound & (rng.random((16, 128)) < 0.5)
    key = window_key(onset[:, 10:110], sound[:, 10:110])
    assert key is not None
    assert window_key(np.roll(onset, 5, axis=1)[:, 10:110], np.roll(sound, 5, axis=1)[:, 10:110]) == key
    other = sound.copy()
    other[3, 61] = ~other[3, 61]
    assert window_key(onset[:, 10:110], other[:, 10:110]) != key
    sound[7] = False
    assert window_key(onset, sound) is None  # a silent step is never part of a copy


def test_the_shipped_model_plays_no_bar_of_the_training_chorales(model):
    train, _ = split(load_bach_chorales(progress=False))
    assert model.copy_keys is not None and len(model.copy_keys) == len(passage_keys(p.grid for p in train))
    leads = passage_keys((p.grid for p in train), COPY_STEPS - 1)  # what a step is checked against first
    assert model.lead_keys is not None and len(model.lead_keys) == len(leads)
    finder = CopyFinder([p.grid for p in train])
    copied = total = 0
    for seed in range(10):
        gen = StreamingGenerator(model, 0.9, 1, seed=seed)
        frames = [gen.step() for _ in range(200)]
        piece = Grid(np.array([f.onset for f in frames]), np.array([f.sound for f in frames]))
        assert finder.longest_copy(piece) < COPY_STEPS
        c, n = finder.bar_copies(piece)
        copied, total = copied + c, total + n
    assert copied == 0 and total == 120
