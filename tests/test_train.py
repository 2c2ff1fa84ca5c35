"""Training on real MIDI files lowers validation loss and gives a checkpoint that plays."""

import math
from pathlib import Path

import numpy as np
import pytest

from improviser.errors import DataError
from improviser.model.data import load_midi_files, split
from improviser.model.generator import generate
from improviser.model.network import BachLSTM, ModelConfig, load_checkpoint
from improviser.model.train import TrainConfig, train, validate

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path / "cache"))


def test_training_on_real_chorales_lowers_validation_loss(tmp_path):
    pieces = load_midi_files([DATA], progress=False)
    assert len(pieces) == 6
    train_p, valid_p = split(pieces)
    assert train_p and valid_p and not {p.name for p in train_p} & {p.name for p in valid_p}
    cfg = ModelConfig(hidden=64, layers=1, dropout=0.0)
    import torch

    torch.manual_seed(0)
    before = validate(BachLSTM(cfg), [p.grid for p in valid_p])
    out = tmp_path / "mine.pt"
    summary = train(train_p, valid_p, out, cfg, TrainConfig(epochs=6, batch_size=8, lr=1e-2, copies=2),
                    progress=False, log=lambda s: None)
    assert summary["best_val_loss"] < 0.5 * before
    model, ckpt = load_checkpoint(out)
    assert ckpt["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert (tmp_path / "mine.last.pt").is_file()
    # What it must never play verbatim: every bar of its training pieces, and every passage a step shorter.
    from improviser.music.analysis import COPY_STEPS, passage_keys

    assert len(model.copy_keys) == len(passage_keys(p.grid for p in train_p)) > 0
    assert len(model.lead_keys) == len(passage_keys((p.grid for p in train_p), COPY_STEPS - 1))
    g = generate(model, 64, temperature=1.0, seed=0)
    assert g.notes().shape[0] > 0  # it plays


def test_resume_continues_from_the_last_epoch(tmp_path):
    pieces = load_midi_files([DATA], progress=False)
    train_p, valid_p = split(pieces)
    cfg = ModelConfig(hidden=32, layers=1, dropout=0.0)
    out = tmp_path / "m.pt"
    train(train_p, valid_p, out, cfg, TrainConfig(epochs=2, batch_size=8, patience=99), progress=False,
          log=lambda s: None)
    s = train(train_p, valid_p, out, None, TrainConfig(epochs=4, batch_size=8, patience=99),
              resume=str(out.with_suffix(".last.pt")), progress=False, log=lambda s: None)
    assert s["epochs"] == 4
    _, ckpt = load_checkpoint(out.with_suffix(".last.pt"))
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3, 4]


def test_split_is_deterministic_and_by_piece():
    pieces = load_midi_files([DATA], progress=False)
    a = split(pieces)
    b = split(list(reversed(pieces)))
    assert [p.name for p in a[1]] == [p.name for p in b[1]]


def test_unreadable_files_are_counted_and_nothing_usable_is_an_error(tmp_path, capsys):
    (tmp_path / "junk.mid").write_text("not midi")
    (tmp_path / "good.mid").write_bytes((DATA / "bwv1_6.mid").read_bytes())
    pieces = load_midi_files([tmp_path], progress=False)
    assert len(pieces) == 1
    assert "skipped 1 of 2" in capsys.readouterr().err
    (tmp_path / "good.mid").unlink()
    with pytest.raises(DataError, match="no usable"):
        load_midi_files([tmp_path], progress=False)
    with pytest.raises(DataError, match="no such file"):
        load_midi_files([tmp_path / "nope"], progress=False)


def test_bach_chorales_of_the_music21_corpus_parse_and_cache(tmp_path, monkeypatch):
    from improviser.model.data import load_bach_chorales

    pieces = load_bach_chorales(progress=False, limit=4)
    assert len(pieces) == 4
    for p in pieces:
        voices = p.grid.sound.sum(axis=1)
        assert np.median(voices) == 4, p.name  # four-part chorales
        assert 0 <= p.grid.bar_start < p.grid.steps_per_bar
    # bwv1.6 opens with a one-beat pickup: step 0 is the last beat of a 4/4 bar.
    first = next(p for p in pieces if p.name == "bwv1.6")
    assert first.grid.bar_start == 12
    # The second call reads the cache and gives the same grids.
    again = load_bach_chorales(progress=False, limit=4)
    assert all(np.array_equal(a.grid.sound, b.grid.sound) for a, b in zip(pieces, again))


def test_training_streams_pieces_a_chunk_at_a_time(tmp_path):
    """Pieces read from files stay compact (notes only); training grids them a few at a time."""
    pieces = load_midi_files([DATA], progress=False)
    assert all(p._grid is None for p in pieces)  # nothing held on the grid until asked
    assert [p.n_steps for p in pieces] == [len(p.grid) for p in pieces]
    train_p, valid_p = split(pieces)
    summary = train(train_p, valid_p, tmp_path / "c.pt", ModelConfig(hidden=32, layers=1, dropout=0.0),
                    TrainConfig(epochs=2, batch_size=4, chunk_pieces=2), progress=False, log=lambda s: None)
    assert summary["epochs"] == 2 and math.isfinite(summary["best_val_loss"])
