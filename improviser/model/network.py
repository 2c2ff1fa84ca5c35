"""The network, its config, and checkpoints. No I/O beyond checkpoint files, no clock.

Per step the model reads the frame that sounded at the previous step plus the
position of the new step within its bar, and predicts, for every pitch of its
range, one of three states: 0 = silent, 1 = held on from the previous step,
2 = struck (an onset). Predicting "held" versus "struck" is how it learns note
lengths and re-struck notes. (A two-state model, silent/sounding, is used for
the JSB Chorales benchmark, whose frames carry no onsets.)

A *listening* model (``player_input``, ``key_memory``, ``player_key_memory`` in its
config) reads more: the player's notes of the previous step as their own input, apart
from what it played itself, and two key memories -- the pitch classes of every note
struck by either, and of the player's notes alone (which its own notes never move),
each decayed only when notes are struck, so silence never fades them (``KeyMemory``;
the same code computes them in training and live).

Two output heads:
- ``independent``: every pitch's state from the LSTM state alone;
- ``nade``: the pitches of a step modelled jointly, low to high, each one
  conditioned on the LSTM state and on the states already chosen below it
  (an RNN-NADE in the manner of Boulanger-Lewandowski et al. 2012, with an LSTM),
  so chords and voicings come out coherent.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

CHECKPOINT_FORMAT = "improviser-checkpoint"
CHECKPOINT_VERSION = 1
OFF, HOLD, ONSET = 0, 1, 2


@dataclass
class ModelConfig:
    low: int = 24  # lowest MIDI pitch the model plays
    n_pitches: int = 72  # so the range is MIDI 24..95
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    bar_slots: int = 16  # one-hot size of "position of this step within the bar"
    steps_per_beat: int = 4
    states: int = 3  # 3: off/hold/onset per pitch; 2: off/sounding (frames without onsets)
    head: str = "independent"  # or "nade": the pitches of a step modelled jointly
    nade_hidden: int = 64
    player_input: bool = False  # the player's last frame as its own input (else merged into the model's own)
    key_memory: bool = False  # a 12-pitch-class memory of everything struck, plus how full it is
    player_intervals: bool = False  # a learned bias on each pitch by its interval to the player's sounding notes
    player_key_memory: bool = False  # a second key memory of the player's notes alone (its own never move it)
    key_bias: bool = False  # a learned bias on each pitch by its pitch class against what the key memories hold

    @property
    def n_inputs(self) -> int:
        return max(c.stop for c in input_columns(self).values())

    @classmethod
    def for_jsb(cls, **kw) -> ModelConfig:
        """The JSB Chorales benchmark's shape: one frame per quarter note, sounding or not, no bar of 16ths.

        Its pitches are the keys the benchmark ever uses (43..96) plus transpositions; the model gives
        the remaining keys of the 88 a probability of 0 of sounding, so it still is a distribution
        over all 88-key frames.
        """
        return cls(low=36, n_pitches=67, bar_slots=4, steps_per_beat=1, states=2, **kw)

    @property
    def listens(self) -> bool:
        """True for a model trained to tell the player's notes from its own."""
        return self.player_input

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"checkpoint config has unknown fields {sorted(unknown)}; "
                                  "it was written by a newer improviser — upgrade to load it")
        cfg = cls(**d)
        if cfg.head not in ("independent", "nade") or cfg.states not in (2, 3):
            raise CheckpointError(f"checkpoint config has an unknown head {cfg.head!r} or states {cfg.states!r}")
        return cfg


KEY_FEATURES = 13  # 12 pitch-class shares + how full the memory is
KEY_DECAY = 0.97  # per step on which anything is struck: ~4 bars of chorale, ~2-4 bars of a tune


class KeyMemory:
    """A running pitch-class memory of every note struck, by the player or the model.

    Each step on which notes are struck first decays the memory by KEY_DECAY, then
    adds one per struck note to its pitch class; a silent step changes nothing, so
    the sense of key does not fade while nobody plays. ``features()`` is what the
    model reads: the 12 shares (summing to 1) and how full the memory is (0..1).
    A pinned memory (``pin``) ignores what is struck: ``--key "D minor"``.
    """

    def __init__(self):
        self.counts = np.zeros(12, np.float64)
        self.pinned: np.ndarray | None = None

    def reset(self) -> None:
        self.counts[:] = 0.0

    def pin(self, shares: np.ndarray | None) -> None:
        self.pinned = None if shares is None else np.asarray(shares, np.float64) / max(float(np.sum(shares)), 1e-12)

    def strike(self, onset: np.ndarray) -> None:
        """onset: bool (128,), the notes struck at one step."""
        if onset.any():
            self.counts *= KEY_DECAY
            self.counts += np.bincount(np.flatnonzero(onset) % 12, minlength=12)

    def features(self) -> np.ndarray:
        if self.pinned is not None:
            return np.append(self.pinned, 1.0).astype(np.float32)
        return _key_features(self.counts)

    @staticmethod
    def sequence(onset: np.ndarray) -> np.ndarray:
        """The features *before* each step of a run: onset bool (T, 128) -> float32 (T, KEY_FEATURES)."""
        mem = KeyMemory()
        out = np.zeros((len(onset), KEY_FEATURES), np.float32)
        struck = onset.any(axis=1)
        for t in range(len(onset)):
            out[t] = _key_features(mem.counts)
            if struck[t]:
                mem.strike(onset[t])
        return out


def _key_features(counts: np.ndarray) -> np.ndarray:
    total = float(counts.sum())
    out = np.zeros(KEY_FEATURES, np.float32)
    if total > 0:
        out[:12] = counts / total
        out[12] = min(1.0, total / 8.0)  # eight notes heard make a full memory
    return out


def input_columns(cfg: ModelConfig) -> dict[str, slice]:
    """Where each part of the input vector sits, in order; the one place the layout is written.

    own_onset, own_sound: its own last frame; bar: the bar position (one-hot); then, for a
    listening model, player_onset, player_sound: the player's last frame, and memory,
    player_memory: the key memories (KEY_FEATURES each: 12 pitch-class shares, then fullness).
    (Read on every step, so made once per layout.)
    """
    return dict(_columns(cfg.n_pitches, cfg.bar_slots, cfg.player_input, cfg.key_memory, cfg.player_key_memory))


@functools.lru_cache(maxsize=16)
def _columns(n_pitches: int, bar_slots: int, player_input: bool, key_memory: bool,
             player_key_memory: bool) -> tuple[tuple[str, slice], ...]:
    sizes = [("own_onset", n_pitches), ("own_sound", n_pitches), ("bar", bar_slots)]
    if player_input:
        sizes += [("player_onset", n_pitches), ("player_sound", n_pitches)]
    if key_memory:
        sizes.append(("memory", KEY_FEATURES))
    if player_key_memory:
        sizes.append(("player_memory", KEY_FEATURES))
    cols, at = [], 0
    for name, size in sizes:
        cols.append((name, slice(at, at + size)))
        at += size
    return tuple(cols)


def frame_features(onset: np.ndarray, sound: np.ndarray, bar_pos: np.ndarray, cfg: ModelConfig,
                   player_onset: np.ndarray | None = None, player_sound: np.ndarray | None = None,
                   memory: np.ndarray | None = None, player_memory: np.ndarray | None = None) -> np.ndarray:
    """Model inputs for a run of steps.

    onset, sound: bool (T, 128), the model's own frame *before* each predicted step.
    bar_pos: int (T,), the position of each predicted step within its bar.
    player_onset, player_sound: bool (T, 128), the player's frame before each step
        (a listening model only; None = the player was silent).
    memory: float32 (T, KEY_FEATURES), the key memory before each step (key-memory models only).
    player_memory: float32 (T, KEY_FEATURES), the key memory of the player's notes alone.
    Returns float32 (T, n_inputs).
    """
    pitches = slice(cfg.low, cfg.low + cfg.n_pitches)
    cols = input_columns(cfg)
    t = onset.shape[0]
    x = np.zeros((t, cfg.n_inputs), np.float32)
    x[:, cols["own_onset"]] = onset[:, pitches]
    x[:, cols["own_sound"]] = sound[:, pitches]
    x[np.arange(t), cols["bar"].start + bar_pos % cfg.bar_slots] = 1.0
    if player_onset is not None and "player_onset" in cols:
        x[:, cols["player_onset"]] = player_onset[:, pitches]
        x[:, cols["player_sound"]] = player_sound[:, pitches]
    if memory is not None and "memory" in cols:
        x[:, cols["memory"]] = memory
    if player_memory is not None and "player_memory" in cols:
        x[:, cols["player_memory"]] = player_memory
    return x


def frame_targets(onset: np.ndarray, sound: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The state of each pitch at each step: int64 (T, n_pitches) of OFF/HOLD/ONSET (or OFF/1 for 2 states)."""
    hi = cfg.low + cfg.n_pitches
    y = np.where(sound[:, cfg.low:hi], HOLD, OFF)
    if cfg.states == 3:
        y[onset[:, cfg.low:hi]] = ONSET
    return y.astype(np.int64)


INTERVAL_LOW, INTERVAL_HIGH = -36, 12  # semitones from a player's note that the interval bias tells apart
INTERVAL_BINS = INTERVAL_HIGH - INTERVAL_LOW + 1
PLAYER_NOTES_MOST = 4  # more player notes at once than this (a cluster, a flood): their interval biases scaled down


def interval_index(n: int) -> torch.Tensor:
    """(n, n) int: the interval bin of pitch p (row) against a player's pitch q (column)."""
    d = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    return d.clamp(INTERVAL_LOW, INTERVAL_HIGH) - INTERVAL_LOW


def memory_columns(cfg: ModelConfig) -> list[slice]:
    """Where the pitch-class shares of the key memories sit in the input vector (all, then the player's)."""
    cols = input_columns(cfg)
    return [slice(cols[m].start, cols[m].start + 12) for m in ("memory", "player_memory") if m in cols]


def pitch_class_index(cfg: ModelConfig) -> torch.Tensor:
    """(n, 12) int: the pitch class of pitch p (row) counted from pitch class c (column)."""
    pcs = (torch.arange(cfg.n_pitches) + cfg.low) % 12
    return (pcs[:, None] - torch.arange(12)[None, :]) % 12


class BachLSTM(nn.Module):
    """An LSTM over steps with a per-pitch output of ``states`` classes (independent or NADE head)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n, k = cfg.n_pitches, cfg.states
        self.lstm = nn.LSTM(cfg.n_inputs, cfg.hidden, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, n * k)  # per-pitch logits (the output biases, for NADE)
        if cfg.head == "nade":
            hn = cfg.nade_hidden
            self.nade_c = nn.Linear(cfg.hidden, hn)  # NADE hidden bias from the LSTM state
            # Each pitch's chosen state (other than silent) adds a vector to the hidden
            # pre-activation of every pitch above it...
            self.nade_w = nn.Parameter(torch.randn(n, k - 1, hn) * 0.01)
            # ...and each pitch reads its logits off the hidden layer it sees.
            self.nade_v = nn.Parameter(torch.randn(n, k, hn) * 0.01)
        if cfg.player_intervals:
            # A bias on every state of every pitch by its distance in semitones to each note the player
            # sounded at the previous step (-36..+12, clipped): consonance and register relative to the
            # tune, the same in every key, learned directly rather than through the LSTM.
            self.interval_bias = nn.Parameter(torch.zeros(INTERVAL_BINS, k))
            self.register_buffer("interval_index", interval_index(n), persistent=False)
        if cfg.key_bias:
            # A bias on every state of every pitch from what each key memory holds: for memory m and pitch
            # class c with share w, pitch p gets w * key_bias[m, (pc(p) - c) mod 12]. The same in every key;
            # it lets what was heard (the player's memory never drifts with its own notes) pull the
            # pitches towards the key directly.
            self.key_bias = nn.Parameter(torch.zeros(len(memory_columns(cfg)), 12, k))
            self.register_buffer("pc_index", pitch_class_index(cfg), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(frame_t | frames before t) for every step: x (B, T, n_inputs), y (B, T, n_pitches) -> (B, T).

        (The forward pass, so DistributedDataParallel sees it.)
        """
        h, _ = self.lstm(x)
        return self.head_log_prob(self.drop(h), x, y)

    log_prob = forward

    def head_log_prob(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(frame y | the LSTM's output h before it, and its input x): (B, T, hidden), (B, T, n_inputs),
        (B, T, n_pitches) -> (B, T). The head alone, so a caller that steps the LSTM itself can score frames."""
        b = self.head(h).view(*h.shape[:2], self.cfg.n_pitches, self.cfg.states)  # (B, T, n, K)
        if self.cfg.player_intervals:
            heard = x[..., input_columns(self.cfg)["player_sound"]]  # (B, T, n): the player's notes, previous step
            # As if at most PLAYER_NOTES_MOST notes sounded: a fistful of notes must not silence every pitch.
            heard = heard * (PLAYER_NOTES_MOST / heard.sum(-1, keepdim=True).clamp(min=PLAYER_NOTES_MOST))
            b = b + torch.einsum("btq,pqk->btpk", heard, self.interval_bias[self.interval_index])
        if self.cfg.key_bias:
            for m, cols in enumerate(memory_columns(self.cfg)):  # (B, T, 12) shares of each memory
                b = b + torch.einsum("btc,pck->btpk", x[..., cols], self.key_bias[m][self.pc_index])
        if self.cfg.head == "nade":
            onehot = nn.functional.one_hot(y, self.cfg.states)[..., 1:].to(h.dtype)  # (B, T, n, K-1)
            z = torch.einsum("btnk,nkh->btnh", onehot, self.nade_w)  # each pitch's contribution
            # Exclusive running sum over pitches: pitch i sees only pitches below it.
            a = self.nade_c(h)[:, :, None, :] + torch.cumsum(z, dim=2) - z
            b = b + torch.einsum("btnh,nkh->btnk", torch.sigmoid(a), self.nade_v)
        logp = torch.log_softmax(b, dim=-1)
        return logp.gather(-1, y[..., None])[..., 0].sum(-1)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def numpy_weights(self) -> dict:
        """Weights as float32 numpy arrays for fast batch-1 stepping (see NumpyLSTM)."""
        def f32(t):
            return np.ascontiguousarray(t.detach().numpy(), np.float32)

        layers = []
        for k in range(self.cfg.layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{k}")
            w_hh = getattr(self.lstm, f"weight_hh_l{k}")
            b = getattr(self.lstm, f"bias_ih_l{k}") + getattr(self.lstm, f"bias_hh_l{k}")
            # One matrix for [x, h] so a layer is a single mat-vec.
            layers.append((f32(torch.cat([w_ih, w_hh], dim=1)), f32(b)))
        w = {"layers": layers, "head": (f32(self.head.weight), f32(self.head.bias))}
        if self.cfg.head == "nade":
            w["nade"] = (f32(self.nade_c.weight), f32(self.nade_c.bias), f32(self.nade_w), f32(self.nade_v))
        if self.cfg.player_intervals:
            w["intervals"] = f32(self.interval_bias[self.interval_index])  # (n, n, K)
        if self.cfg.key_bias:
            w["key_bias"] = [f32(self.key_bias[m][self.pc_index]) for m in range(self.key_bias.shape[0])]  # (n, 12, K)
            w["memory_columns"] = memory_columns(self.cfg)
        return w


class NumpyLSTM:
    """Batch-1 inference of a BachLSTM, one step at a time, in numpy.

    torch's nn.LSTM costs milliseconds per single step on a CPU; the same
    arithmetic as a few mat-vecs in numpy costs a fraction of that. A step is
    mostly the cost of calling numpy, so the weights are laid out at load for
    as few calls as the arithmetic allows (see ``__init__``).
    """

    def __init__(self, model: BachLSTM):
        w = model.numpy_weights()
        self.cfg = cfg = model.cfg
        n = cfg.hidden
        # PyTorch's gates are input, forget, cell candidate, output; here input, forget, output, cell, with the
        # rows of the three sigmoid gates halved: sigmoid(z) = (tanh(z / 2) + 1) / 2, so one tanh over all four
        # gates serves them all (halving a float is exact: the same numbers as a sigmoid of the whole).
        order = np.r_[0:2 * n, 3 * n:4 * n, 2 * n:3 * n]
        half = np.r_[np.full(3 * n, 0.5, np.float32), np.ones(n, np.float32)]
        self.layers = [(np.ascontiguousarray(wk[order] * half[:, None]), bk[order] * half) for wk, bk in w["layers"]]
        w0, n_in = self.layers[0][0], cfg.n_inputs
        self._w_in = np.ascontiguousarray(w0[:, :n_in].T)  # (inputs, 4 * hidden)
        self._w_rec0 = np.ascontiguousarray(w0[:, n_in:])  # (4 * hidden, hidden)
        self.head_w, self.head_b = w["head"]
        self.nade = w.get("nade")
        if self.nade is not None:
            # The NADE in float64 (its sums decide the draws), its hidden pre-activation kept halved (a sigmoid
            # is then a tanh), and its outputs as log-odds of each sounding state against silence: a pass is
            # one mat-vec onto (pitches * (states - 1)) log-odds, and a pitch sounds when they beat a
            # threshold made once from its uniform (``_limits``).
            wc, bc, nw, v = (np.asarray(t, np.float64) for t in self.nade)
            dv = v[:, 1:] - v[:, :1]  # (n, states - 1, nade_hidden)
            self._nade_c, self._nade_cb, self._nade_w = wc * 0.5, bc * 0.5, nw * 0.5
            self._odds_v = np.ascontiguousarray(0.5 * dv.reshape(-1, dv.shape[-1]))
            self._odds_c = 0.5 * dv.sum(-1)  # the tanh's "+ 1" of every sigmoid, once
            self._scaled = (1.0, self._odds_v)  # (1 / temperature, _odds_v / temperature) for the last temperature
        self.intervals = w.get("intervals")  # (n, n, K) or None
        # The key biases as one matrix on the memories' input columns (``_key_rows``), or None.
        self.key_bias = self._key_rows = None
        if w.get("key_bias") is not None:
            p, k = cfg.n_pitches, cfg.states
            self._key_rows = np.concatenate([np.arange(cfg.n_inputs)[cols] for cols in w["memory_columns"]])
            self.key_bias = np.ascontiguousarray(np.concatenate(  # share of class c -> (p, state)
                [bias.transpose(1, 0, 2).reshape(12, p * k) for bias in w["key_bias"]]), np.float32)
        self.x: np.ndarray | None = None  # the last input, for the key bias
        self.reset()

    def reset(self) -> None:
        n = self.cfg.hidden
        self.h = [np.zeros(n, np.float32) for _ in self.layers]
        self.c = [np.zeros(n, np.float32) for _ in self.layers]

    def get_state(self) -> tuple:
        return [h.copy() for h in self.h], [c.copy() for c in self.c]

    def set_state(self, state: tuple) -> None:
        self.h, self.c = [h.copy() for h in state[0]], [c.copy() for c in state[1]]

    def step(self, x: np.ndarray) -> np.ndarray:
        """x: float32 (n_inputs,) -> the top layer's output (hidden,); advances the hidden state."""
        self.x = x
        n = self.cfg.hidden
        for k, (w, b) in enumerate(self.layers):
            if k == 0:
                # The first layer's input is mostly zeros (a few notes, one bar position): only the
                # columns of its non-zero entries are multiplied, from a transposed copy (contiguous rows).
                nz = np.flatnonzero(x)
                gates = x[nz] @ self._w_in[nz]
                gates += self._w_rec0 @ self.h[0]
            else:
                gates = w @ np.concatenate([x, self.h[k]])
            gates += b
            t = np.tanh(gates, out=gates)
            s = t[:3 * n]
            s *= 0.5
            s += 0.5  # input, forget and output gates (sigmoids), then the cell candidate t[3n:]
            c = s[n: 2 * n] * self.c[k]
            c += s[:n] * t[3 * n:]
            self.c[k] = c
            x = np.tanh(c)
            x *= s[2 * n: 3 * n]
            self.h[k] = x
        return x

    def logits(self, h: np.ndarray) -> np.ndarray:
        """Independent head: (n_pitches, states) logits from the top layer's output."""
        return (self.head_w @ h + self.head_b).reshape(self.cfg.n_pitches, self.cfg.states)

    def sample(self, h: np.ndarray, u: np.ndarray, temperature: float, banned: np.ndarray,
               player: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
        """Draw every pitch's state for one step -> int (n_pitches,).

        u: uniform draws, one per pitch (inverse-CDF sampling, so a seed fixes the result).
        banned: bool (n_pitches, states), states not allowed here (e.g. "held" for a silent pitch); silence
            is always allowed.
        player: bool (n_pitches,), the player's notes at the previous step (for the interval bias).
        bias: float (n_pitches, states) added to the logits (e.g. the generator's hold on the key), or None.
        With the NADE head each pitch's distribution depends on the states chosen below it.
        """
        return self.draw(self.prepare(self.step_logits(h, player, bias), temperature, banned), u)

    def step_logits(self, h: np.ndarray, player: np.ndarray | None = None,
                    bias: np.ndarray | None = None) -> tuple[np.ndarray, tuple | None]:
        """What every draw of this step starts from: the logits before the NADE's part, and (NADE head) those
        as log-odds against silence, the NADE's halved hidden pre-activation and the log-odds its first pass
        gives (None for the independent head). Several draws of one step share it."""
        b = self.logits(h).astype(np.float64)
        if self.intervals is not None and player is not None and player.any():
            b += self.intervals[:, player].sum(axis=1) * (PLAYER_NOTES_MOST / max(PLAYER_NOTES_MOST, player.sum()))
        if self.key_bias is not None and self.x is not None:
            b += (self.x[self._key_rows] @ self.key_bias).reshape(b.shape)  # one small mat-vec for both memories
        if bias is not None:
            b += bias
        if self.nade is None:
            return b, None
        a = self._nade_c @ h + self._nade_cb  # half the hidden pre-activation seen by the lowest pitch
        odds = b[:, 1:] - b[:, :1] + self._odds_c
        # Every draw's first pass (from the lowest pitch up to its first note) sees this same layer.
        return b, (odds, a, odds + (self._odds_v @ np.tanh(a)).reshape(odds.shape))

    def frame_log_probs(self, start: tuple, states: np.ndarray) -> np.ndarray:
        """log p of each of C given frames of this step, as the model has it (temperature 1): ``start`` from
        ``step_logits``, states int (C, n_pitches) -> float (C,).

        NADE head: a pitch's log-odds depend on the notes below it only through the hidden layer, which changes
        only at a sounding pitch. A frame of k notes has k + 1 hidden layers: the first (below its lowest note)
        is every frame's and was made by ``step_logits``; the others, for all frames at once, are one small
        matrix product; each pitch reads the layer of the notes below it."""
        b, nade = start
        n, k1 = self.cfg.n_pitches, self.cfg.states - 1
        if nade is None:
            logp = b - np.logaddexp.reduce(b, axis=-1, keepdims=True)  # (n, K)
            return logp[np.arange(n)[None], states].sum(axis=1)
        _, a, first = nade
        odds = nade[0]
        sounding = states > 0
        c = len(states)
        most = max(1, int(sounding.sum(axis=1).max()))
        # The sounding pitches of each frame, low to high, padded with the last pitch (its row unused).
        order = np.argsort(~sounding, axis=1, kind="stable")[:, :most]
        real = np.take_along_axis(sounding, order, axis=1)
        rows = self._nade_w[order, np.maximum(np.take_along_axis(states, order, axis=1) - 1, 0)]  # (C, most, H)
        hidden = np.tanh(a + np.cumsum(np.where(real[..., None], rows, 0.0), axis=1))  # after each note
        above = (hidden.reshape(c * most, -1) @ self._odds_v.T).reshape(c, most, n, k1) + odds[None, None]
        below = np.cumsum(sounding, axis=1) - sounding  # (C, n): notes under each pitch
        log_odds = np.broadcast_to(first, (c, n, k1))
        for k in range(most):  # each pitch the layer of the notes below it
            log_odds = np.where((below == k + 1)[..., None], above[:, k], log_odds)
        norm = np.log1p(np.exp(log_odds).sum(axis=-1))  # log of (silence + each state); log-odds stay far below 700
        picked = np.take_along_axis(log_odds, np.maximum(states - 1, 0)[..., None], -1)[..., 0]
        return (np.where(sounding, picked, 0.0) - norm).sum(axis=1)

    def chord_log_probs(self, start: tuple, pitches: np.ndarray, held: np.ndarray) -> np.ndarray:
        """``frame_log_probs`` of C frames of k notes each, given as their pitches' indices (C, k), ascending and
        inside the model's range, and whether each is held (else struck): the same numbers in fewer steps (a
        NADE model of three states only)."""
        _, (odds, a, first) = start
        n, k1 = self.cfg.n_pitches, self.cfg.states - 1
        c, k = pitches.shape
        state = np.where(held, HOLD, ONSET)
        hidden = np.tanh(a + np.cumsum(self._nade_w[pitches, state - 1], axis=1))  # (C, k, H) after each note
        above = (hidden.reshape(c * k, -1) @ self._odds_v.T).reshape(c, k, n, k1) + odds
        below = (np.arange(n)[None, None] > pitches[:, :, None]).sum(axis=1)  # (C, n): notes under each pitch
        log_odds = np.broadcast_to(first, (c, n, k1))
        for j in range(k):
            log_odds = np.where((below == j + 1)[..., None], above[:, j], log_odds)
        norm = np.log1p(np.exp(log_odds).sum(axis=-1)).sum(axis=1)  # silence or a state, at every pitch
        return log_odds[np.arange(c)[:, None], pitches, state - 1].sum(axis=1) - norm

    def prepare(self, start: tuple, temperature: float, banned: np.ndarray) -> tuple:
        """What every draw of a step at one temperature, with the same states banned, shares: (NADE head) the
        log-odds over the temperature with the banned states at -inf, for all pitches and after the first pass,
        and the NADE's output weights over the temperature (kept for the last temperature)."""
        b, nade = start
        if nade is None:
            return b, temperature, banned, None
        inv = 1.0 / temperature if temperature > 0 else 1.0  # greedy: only the signs matter
        if self._scaled[0] != inv:
            self._scaled = (inv, self._odds_v * inv)
        odds, a, first = nade
        ban = banned[:, 1:]
        return b, temperature, banned, (np.where(ban, -np.inf, odds) * inv, np.where(ban, -np.inf, first) * inv,
                                        self._scaled[1], a)

    def draw(self, ready: tuple, u: np.ndarray) -> np.ndarray:
        """One draw of a step's states from ``prepare``'s result, with uniforms u (n_pitches,)."""
        b, temperature, banned, nade = ready
        if nade is None:
            return _draw(b, u, temperature, banned)
        odds, d, v, a = nade
        nw = self._nade_w
        n, k1 = self.cfg.n_pitches, self.cfg.states - 1
        limit = _limits(u, temperature)
        state = np.zeros(n, np.int64)
        i = 0
        # Silent pitches add nothing to the hidden layer, so between two sounding pitches every pitch sees the
        # same hidden layer: one pass gives all their log-odds, and the next starts after the first pitch that
        # sounds. Cost ~ (voices + 1) passes, not n.
        while True:
            on = _sounding(d, limit[i:], temperature)
            j = int(on.argmax())
            if not on[j]:
                return state
            s = _which(d[j], float(limit[i + j]), temperature)
            j += i
            state[j] = s
            i = j + 1
            if i == n:
                return state
            a = a + nw[j, s - 1]
            d = odds[i:] + (v[i * k1:] @ np.tanh(a)).reshape(n - i, k1)


def _limits(u: np.ndarray, temperature: float) -> np.ndarray:
    """The log-odds (over the temperature) of sounding against silence at or above which a pitch with uniform u
    sounds: inverse-CDF sampling with silence first, log((1 - u) / u). Greedy (0): anything above 0."""
    if temperature == 0:
        return np.full(u.shape, np.nextafter(0.0, 1.0))
    with np.errstate(divide="ignore"):  # u = 0: never sounds
        return np.log1p(-u) - np.log(u)


def _sounding(d: np.ndarray, limit: np.ndarray, temperature: float) -> np.ndarray:
    """bool (..., n): which pitches sound, from their log-odds d (..., n, states - 1) against ``_limits``."""
    if d.shape[-1] == 1:
        return d[..., 0] >= limit
    # Three states: the log-odds of either sounding state (held or struck) against silence; a greedy draw
    # takes the likelier one.
    join = np.maximum if temperature == 0 else np.logaddexp
    return join(d[..., 0], d[..., 1]) >= limit


def _which(d: np.ndarray, limit: float, temperature: float) -> int:
    """The state (1, or 1 = held / 2 = struck) of a sounding pitch with log-odds d (states - 1,) and its limit:
    the same inverse-CDF draw, past silence and then past held. In plain floats: a pass decides one pitch."""
    if len(d) == 1:
        return 1
    held, struck = float(d[0]), float(d[1])
    if temperature == 0:
        return 2 if struck > held else 1
    # Struck beats held and silence together: log p(struck) - log(p(silent) + p(held)) >= log((1 - u) / u).
    return 2 if struck - (max(held, 0.0) + math.log1p(math.exp(-abs(held)))) >= limit else 1


def _draw(logits: np.ndarray, u: np.ndarray, temperature: float, banned: np.ndarray) -> np.ndarray:
    """One categorical draw per row of logits (n, K) by inverse CDF with uniforms u (n,) (the independent head)."""
    logits = np.where(banned, -np.inf, logits)
    if temperature == 0:
        return np.argmax(logits, axis=1)
    z = logits * (1.0 / temperature)
    z -= z.max(axis=1, keepdims=True)
    cum = np.cumsum(np.exp(z, out=z), axis=1)
    return (u[:, None] * cum[:, -1:] >= cum[:, :-1]).sum(axis=1)


def widen(old: BachLSTM, cfg: ModelConfig) -> BachLSTM:
    """A model with more inputs or parts (``cfg``) that starts as ``old`` does.

    Every weight of the same name and shape is copied. A non-listening model grows the
    player's frame into its first layer with the weights of its own frame (it heard the
    player merged into its own frame, so the new one first behaves as the old one did);
    the key memory and the interval bias start at zero. Training then tells them apart.
    """
    oc = old.cfg
    same = ("low", "n_pitches", "hidden", "layers", "bar_slots", "states", "head", "nade_hidden")
    if any(getattr(oc, f) != getattr(cfg, f) for f in same):
        raise CheckpointError("can only widen a model of the same size")
    new = BachLSTM(cfg)
    state = new.state_dict()
    for name, value in old.state_dict().items():
        if name in state and state[name].shape == value.shape:
            state[name] = value.clone()
    if oc.n_inputs != cfg.n_inputs:
        w_old = old.state_dict()["lstm.weight_ih_l0"]  # (4h, old inputs)
        old_cols, new_cols = input_columns(oc), input_columns(cfg)
        w = torch.zeros(w_old.shape[0], cfg.n_inputs)  # inputs the old model lacks start at zero weight
        for name, cols in old_cols.items():
            w[:, new_cols[name]] = w_old[:, cols]
        if cfg.player_input and not oc.player_input:
            for part in ("onset", "sound"):
                w[:, new_cols[f"player_{part}"]] = w_old[:, old_cols[f"own_{part}"]]
        state["lstm.weight_ih_l0"] = w
    new.load_state_dict(state)
    return new


def default_size(n_train_steps: int, layers: int = 2) -> int:
    """Hidden size whose parameter count is of the order of the training data (char-rnn rule).

    Data "size" = training steps x 12 transpositions; solve 8·h² + 4·h·n_in ≈ that
    for an input of ~160 features, rounded to a multiple of 32 within 64..512.
    """
    budget = n_train_steps * 12
    n_in = 160
    # layers·4h(h + n_in) + (layers-1)·4h² ≈ budget, approximately 4·layers·h² + 4·h·n_in (quadratic in h)
    a, b = 4 * layers + 4 * (layers - 1), 4 * n_in
    h = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    return int(min(512, max(64, round(h / 32) * 32)))


def save_checkpoint(path: str | os.PathLike, model: BachLSTM, **info) -> None:
    """Write a checkpoint: a plain dict of tensors and plain data, loadable with weights_only=True."""
    from ..music.encoding import atomic_write

    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": asdict(model.cfg),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **info,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | os.PathLike) -> tuple[BachLSTM, dict]:
    """Load a checkpoint safely (no code is ever unpickled). Returns the model (eval mode) and the whole dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `improviser train` "
                              "or leave out --checkpoint to use the shipped one")
    try:
        data = path.read_bytes()
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "unsupported global" in str(e).lower():
            raise CheckpointError(f"{path}: refused — the checkpoint holds Python objects that could run code "
                                  "(only tensors and plain data are loaded)") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({first})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an improviser checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    version = ckpt.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported "
                              f"(this improviser reads version {CHECKPOINT_VERSION})")
    try:
        cfg = ModelConfig.from_dict(dict(ckpt["config"]))
        model = BachLSTM(cfg)
        model.load_state_dict(ckpt["model"])
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint does not match its config ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    model.eval()
    profiles = ckpt.get("key_profiles")
    if isinstance(profiles, dict) and all(len(profiles.get(m, ())) == 12 for m in ("major", "minor")):
        model.key_profiles = {m: [float(v) for v in profiles[m]] for m in ("major", "minor")}
    # Trained on four-part writing: its notes can be led and told apart as soprano, alto, tenor and bass.
    # Checkpoints from before this was written down say so by what they were trained on.
    described = str(ckpt.get("trained_on", ""))
    # Fingerprints of every bar of its training music (``analysis.Passage``), which it never plays verbatim.
    # ("copy_keys", an earlier kind of fingerprint, are not read: training further writes the new kind.)
    copies, leads = ckpt.get("passage_keys"), ckpt.get("lead_keys")
    model.copy_keys = frozenset(copies.tolist()) if isinstance(copies, torch.Tensor) else None
    # ...and of every passage a step shorter: a step whose last COPY_STEPS - 1 frames are none of these cannot
    # complete a copy, whatever is drawn (so most steps check once, not every draw).
    model.lead_keys = frozenset(leads.tolist()) if isinstance(leads, torch.Tensor) else None
    model.four_part = bool(ckpt.get("four_part", "Bach chorales" in described and "MIDI files" not in described
                                    and cfg.steps_per_beat == 4))
    return model, ckpt


def default_checkpoint() -> Path:
    """The shipped checkpoint: $IMPROVISER_CHECKPOINT, else checkpoints/bach.pt beside the package."""
    env = os.environ.get("IMPROVISER_CHECKPOINT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "checkpoints" / "bach.pt"

