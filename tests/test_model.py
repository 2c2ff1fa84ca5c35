"""Model and checkpoints: the numpy stepper equals torch, and loading is safe."""

import pickle
import zipfile

import numpy as np
import pytest
import torch

from improviser.errors import CheckpointError
from improviser.model.network import (
    BachLSTM,
    ModelConfig,
    NumpyLSTM,
    default_checkpoint,
    input_columns,
    load_checkpoint,
    save_checkpoint,
)


def test_shipped_checkpoint_loads_with_its_provenance():
    model, ckpt = load_checkpoint(default_checkpoint())
    assert "Bach chorales" in ckpt["trained_on"]
    assert ckpt["n_params"] == model.n_params() > 100_000
    assert 0 < ckpt["best_val_loss"] < 10  # nats per step, well below an untrained model's ~79
    # Nothing but tensors and plain data inside: it loads with weights_only=True.
    torch.load(default_checkpoint(), weights_only=True)


def test_numpy_stepper_matches_torch_lstm():
    torch.manual_seed(0)
    model = BachLSTM(ModelConfig(hidden=64, layers=2)).eval()
    x = torch.rand(1, 20, model.cfg.n_inputs)
    with torch.no_grad():
        ref, _ = model.lstm(x)
        ref_logits = model.head(ref)
    net = NumpyLSTM(model)
    got = np.stack([net.step(x[0, t].numpy()) for t in range(20)])
    np.testing.assert_allclose(got, ref[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(net.logits(got[-1]).ravel(), ref_logits[0, -1].numpy(), atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    model = BachLSTM(ModelConfig(hidden=32, layers=1))
    save_checkpoint(tmp_path / "m.pt", model, best_val_loss=1.5)
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == model.cfg and ckpt["best_val_loss"] == 1.5
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/improviser-pwned-by-checkpoint",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    import os

    marker = "/tmp/improviser-pwned-by-checkpoint"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.pt"
    torch.save({"format": "improviser-checkpoint", "version": 1, "payload": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)
    assert not os.path.exists(marker)
    # A raw pickle (not torch's zip format) with the same payload.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not os.path.exists(marker)


def test_wrong_version_unknown_format_and_corrupt_files(tmp_path):
    model = BachLSTM(ModelConfig(hidden=16, layers=1))
    save_checkpoint(tmp_path / "v.pt", model)
    ckpt = torch.load(tmp_path / "v.pt", weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "v99.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    del ckpt["version"]
    torch.save(ckpt, tmp_path / "nov.pt")
    with pytest.raises(CheckpointError, match="version None"):
        load_checkpoint(tmp_path / "nov.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an improviser checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    good = (tmp_path / "v.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    assert zipfile.is_zipfile(tmp_path / "v.pt")


def test_config_mismatch_is_a_clear_error(tmp_path):
    model = BachLSTM(ModelConfig(hidden=16, layers=1))
    save_checkpoint(tmp_path / "m.pt", model)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["config"]["hidden"] = 32
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "bad.pt")
    ckpt["config"]["hidden"] = 16
    ckpt["config"]["wormhole"] = 1
    torch.save(ckpt, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="unknown fields"):
        load_checkpoint(tmp_path / "newer.pt")


def _all_frames(k: int, states: int) -> torch.Tensor:
    import itertools

    return torch.tensor(list(itertools.product(range(states), repeat=k)))


@pytest.mark.parametrize("states", [2, 3])
def test_nade_head_is_a_distribution_over_whole_frames(states):
    """Summed over all states^k frames of a small model, the joint probabilities are exactly one."""
    torch.manual_seed(1)
    cfg = ModelConfig(low=60, n_pitches=5, hidden=16, layers=1, dropout=0.0, states=states, head="nade",
                      nade_hidden=8)
    model = BachLSTM(cfg).eval()
    with torch.no_grad():  # make the pitches strongly dependent on each other
        model.nade_w.normal_(0, 2.0)
        model.nade_v.normal_(0, 2.0)
    frames = _all_frames(5, states)  # (F, 5)
    x = torch.rand(1, 3, cfg.n_inputs).expand(len(frames), 3, cfg.n_inputs)
    y = torch.zeros(len(frames), 3, 5, dtype=torch.long)
    y[:, 2] = frames
    with torch.no_grad():
        logp = model(x, y)[:, 2]
    assert float(torch.logsumexp(logp, 0).exp()) == pytest.approx(1.0, abs=1e-5)
    # Not a product of independent marginals: the head really couples the pitches.
    p = logp.exp()
    marg = [torch.stack([p[frames[:, i] == s].sum() for s in range(states)]) for i in range(5)]
    indep = torch.stack([torch.prod(torch.stack([marg[i][f[i]] for i in range(5)])) for f in frames])
    assert float((p - indep).abs().max()) > 1e-3


def sampled_and_exact(model, x: torch.Tensor, player=None, n: int = 30000) -> tuple[np.ndarray, np.ndarray]:
    """For a 3-pitch model and one input x (1, 1, F): the NumPy sampler's frame frequencies over n draws,
    and torch's exact probabilities of the same 27 frames."""
    frames = _all_frames(3, 3)
    with torch.no_grad():
        p = model(x.expand(len(frames), 1, -1), frames[:, None, :])[:, 0].exp().numpy()
    net = NumpyLSTM(model)
    h = net.step(x[0, 0].numpy())
    rng = np.random.default_rng(0)
    banned = np.zeros((3, 3), bool)
    counts = np.zeros(len(frames))
    index = {tuple(f.tolist()): i for i, f in enumerate(frames)}
    for _ in range(n):
        counts[index[tuple(net.sample(h, rng.random(3), 1.0, banned, player).tolist())]] += 1
    return counts / n, p


def test_numpy_nade_sampler_draws_from_the_torch_distribution():
    torch.manual_seed(2)
    cfg = ModelConfig(low=60, n_pitches=3, hidden=8, layers=1, dropout=0.0, states=3, head="nade", nade_hidden=6)
    model = BachLSTM(cfg).eval()
    with torch.no_grad():
        model.nade_w.normal_(0, 1.5)
        model.nade_v.normal_(0, 1.5)
    sampled, exact = sampled_and_exact(model, torch.rand(1, 1, cfg.n_inputs))
    np.testing.assert_allclose(sampled, exact, atol=0.01)


def test_numpy_sampler_with_the_player_and_key_biases_draws_from_the_torch_distribution():
    torch.manual_seed(3)
    cfg = ModelConfig(low=60, n_pitches=3, hidden=8, layers=1, dropout=0.0, states=3, head="nade", nade_hidden=6,
                      player_input=True, key_memory=True, player_intervals=True, player_key_memory=True,
                      key_bias=True)
    model = BachLSTM(cfg).eval()
    with torch.no_grad():
        model.nade_w.normal_(0, 1.5)
        model.interval_bias.normal_(0, 2.0)
        model.key_bias.normal_(0, 2.0)
    x = torch.rand(1, 1, cfg.n_inputs)
    player = np.array([True, False, True])  # the player sounded MIDI 60 and 62 at the previous step
    x[0, 0, input_columns(cfg)["player_sound"]] = torch.from_numpy(player.astype(np.float32))
    sampled, exact = sampled_and_exact(model, x, player)
    np.testing.assert_allclose(sampled, exact, atol=0.01)
    # The bias matters: without the player's notes the distribution is another one.
    deaf, _ = sampled_and_exact(model, x, None, n=10000)
    assert np.abs(deaf - exact).max() > 0.03
