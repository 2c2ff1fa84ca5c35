"""Evaluation: the JSB protocol by hand, the benchmark's frame count, copy detection, key finding."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from improviser.cli import app
from improviser.model.data import load_jsb
from improviser.model.evaluate import frame_nll
from improviser.model.network import BachLSTM, ModelConfig, save_checkpoint
from improviser.music.analysis import CopyFinder, estimate_key, key_name
from improviser.music.encoding import Grid, notes_to_grid, read_midi

JSB = "jsb-chorales/jsb-chorales-quarter.json"  # under ../shared/data: the shared_data fixture finds it
DATA = Path(__file__).parent / "data"


def bernoulli_model(p_on: np.ndarray) -> BachLSTM:
    """A two-state model over the 88 keys whose every frame is independent Bernoulli(p_on) per key."""
    cfg = ModelConfig(low=21, n_pitches=88, hidden=8, layers=1, dropout=0.0, states=2, steps_per_beat=1,
                      bar_slots=4, head="independent")
    m = BachLSTM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()  # zero LSTM weights: its output is 0 whatever the input, so the logits are the biases
        bias = np.stack([np.zeros(88), np.log(p_on) - np.log1p(-p_on)], axis=1)
        m.head.bias.copy_(torch.from_numpy(bias.ravel()).float())
    return m


def test_jsb_protocol_equals_a_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    p_on = rng.uniform(0.02, 0.6, 88)
    pieces = {"test": [[[60, 64, 67], [62], [], [43, 96, 60]], [[50], [50, 53]]]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(pieces))
    grids = [p.grid for p in load_jsb(path, "test")]
    total, frames = frame_nll(bernoulli_model(p_on), grids)
    by_hand, count = 0.0, 0
    for piece in pieces["test"]:
        for frame in piece[1:]:  # the first frame of a piece is never scored
            on = np.zeros(88, bool)
            on[np.array(frame, int) - 21] = True
            by_hand -= np.sum(np.where(on, np.log(p_on), np.log1p(-p_on)))
            count += 1
    assert frames == count == 4
    assert total == pytest.approx(by_hand, rel=1e-5)
    # And through the CLI, which prints nll (per frame) and the frame count.
    save_checkpoint(tmp_path / "b.pt", bernoulli_model(p_on))
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "b.pt"), "--jsb", str(path),
                                 "--split", "test"])
    assert r.exit_code == 0, r.output
    assert f"nll {by_hand / count:.4f}" in r.stdout and "frames 4" in r.stdout


def test_jsb_test_split_has_4648_predicted_frames(shared_data):
    grids = [p.grid for p in load_jsb(shared_data(JSB), "test")]
    total, frames = frame_nll(bernoulli_model(np.full(88, 0.05)), grids)
    assert frames == 4648
    assert math.isfinite(total)


def test_training_frequencies_baseline_is_about_11_on_test(shared_data):
    """The README of the benchmark quotes ~11.1 for independent Bernoulli keys at training-set frequencies."""
    jsb = shared_data(JSB)
    train = [p.grid for p in load_jsb(jsb, "train")]
    counts = sum(g.sound[:, 21:109].sum(axis=0) for g in train)
    n = sum(len(g) for g in train)
    p_on = np.clip(counts / n, 1e-4, 1 - 1e-4)
    total, frames = frame_nll(bernoulli_model(p_on), [p.grid for p in load_jsb(jsb, "test")])
    assert total / frames == pytest.approx(11.1, abs=0.3)


def test_onset_model_is_refused_for_the_benchmark(tmp_path):
    save_checkpoint(tmp_path / "m.pt", BachLSTM(ModelConfig(hidden=8, layers=1)))
    # Refused before the file is read: the benchmark data need not be here.
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--jsb",
                                 str(tmp_path / "jsb-chorales-quarter.json")])
    assert r.exit_code == 1 and "onsets" in r.stderr


def test_copy_detector_finds_a_planted_copy_in_another_key_and_none_in_a_shuffle():
    training = [read_midi(f) for f in sorted(DATA.glob("bwv*.mid"))]
    source = training[2]
    bar = source.steps_per_bar
    # Plant bars 2-4 of a training chorale, transposed up a fourth, between random chords.
    rng = np.random.default_rng(0)
    notes = []
    for t in range(0, 32, 2):
        for p in rng.choice(np.arange(50, 80), 3, replace=False):
            notes.append((p, t, t + 2))
    planted = source.notes()
    keep = (planted[:, 1] >= 2 * bar) & (planted[:, 2] <= 5 * bar)
    for p, s, e, _ in planted[keep]:
        notes.append((p + 5, s - 2 * bar + 32, e - 2 * bar + 32))
    for t in range(32 + 3 * bar, 64 + 3 * bar, 2):
        for p in rng.choice(np.arange(50, 80), 3, replace=False):
            notes.append((p, t, t + 2))
    a = np.array(notes)
    onset, sound, _ = notes_to_grid(a[:, 0], a[:, 1], a[:, 2])
    piece = Grid(onset, sound)
    finder = CopyFinder(training)
    assert finder.longest_copy(piece) >= 3 * bar
    # The same chorale with its steps shuffled holds no copy longer than a beat.
    order = np.random.default_rng(1).permutation(len(source))
    shuffled = Grid(source.onset[order], source.sound[order])
    assert finder.longest_copy(shuffled) <= 4


@pytest.mark.parametrize("tonic,mode", [(0, "major"), (6, "major"), (9, "minor")])
def test_key_finding_on_scales(tonic, mode):
    steps = [0, 2, 4, 5, 7, 9, 11, 12] if mode == "major" else [0, 2, 3, 5, 7, 8, 11, 12]
    pitches = [60 + tonic + s for s in steps + steps[::-1]] + [60 + tonic, 64 + tonic - (mode == "minor"), 67 + tonic]
    onset, sound, _ = notes_to_grid(pitches, range(0, 2 * len(pitches), 2), range(2, 2 * len(pitches) + 2, 2))
    t, m, _ = estimate_key(Grid(onset, sound))
    assert key_name(t, m) == key_name(tonic, mode)


def test_key_finding_on_real_chorales():
    # music21's own analysis of these files: bwv1.6 F major, bwv104.6 A major.
    assert key_name(*estimate_key(read_midi(DATA / "bwv1_6.mid"))[:2]) == "F major"
    assert key_name(*estimate_key(read_midi(DATA / "bwv104_6.mid"))[:2]) == "A major"


def test_evaluate_own_midi_and_originality_through_the_cli(tmp_path, monkeypatch):
    r = CliRunner().invoke(app, ["evaluate", "--data", str(DATA)])
    assert r.exit_code == 0, r.output
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    nll, steps = float(lines["nll"].split()[0]), int(lines["steps"])
    assert steps == sum(len(read_midi(f)) - 1 for f in DATA.glob("bwv*.mid"))
    assert 0 < nll < 20  # nats per 16th-note step on real chorales; an untrained model scores ~79
    r = CliRunner().invoke(app, ["evaluate"])
    assert r.exit_code == 1 and "say what to evaluate" in r.stderr
