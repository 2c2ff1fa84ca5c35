"""Training: windows of pieces, transposition augmentation, validation every epoch, early stopping, resume.

Runs on one CPU in minutes for the chorales. Under ``torchrun`` each rank trains on
its share of the windows and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Piece
from .encoding import Grid
from .errors import DataError
from .model import (
    BachLSTM,
    ModelConfig,
    default_size,
    frame_features,
    frame_targets,
    load_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    seq_len: int = 128  # steps per training window (8 bars of 4/4 in 16ths)
    lr: float = 2e-3
    patience: int = 6  # epochs without a better validation loss before stopping
    clip: float = 1.0
    seed: int = 0
    transpose: int = 6  # augment with shifts in -transpose+1 .. +transpose semitones (12 keys)
    copies: int = 4  # transposed copies of each piece per epoch
    chunk_pieces: int = 512  # pieces put on the grid and cut into windows at a time


def piece_arrays(grid: Grid, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (T, n_inputs) and targets (T, n_pitches) for a whole piece.

    The input at step t is the frame at t-1 (silence before the first step) and
    the bar position of step t; the target is the state of every pitch at t.
    """
    prev_on = np.vstack([np.zeros((1, 128), bool), grid.onset[:-1]])
    prev_snd = np.vstack([np.zeros((1, 128), bool), grid.sound[:-1]])
    return frame_features(prev_on, prev_snd, grid.bar_positions(), cfg), frame_targets(grid.onset, grid.sound, cfg)


def fits(grid: Grid, cfg: ModelConfig) -> bool:
    used = np.flatnonzero(grid.sound.any(axis=0))
    return used.size > 0 and used[0] >= cfg.low and used[-1] < cfg.low + cfg.n_pitches


def make_windows(pieces: list[Grid], cfg: ModelConfig, seq_len: int, rng: np.random.Generator | None,
                 transpose: int = 0, copies: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut pieces into windows of seq_len steps -> X (N, L, F), Y (N, L, P), mask (N, L).

    With an rng, each copy of a piece is shifted by a random transposition that
    keeps it in the model's range, and the windows start at a random offset.
    """
    xs, ys, ms = [], [], []
    for grid in pieces:
        for _ in range(copies):
            g = grid
            if rng is not None and transpose:
                for _try in range(4):
                    shifted = grid.transpose(int(rng.integers(-transpose + 1, transpose + 1)))
                    if shifted is not None and fits(shifted, cfg):
                        g = shifted
                        break
            if not fits(g, cfg):
                continue
            x, y = piece_arrays(g, cfg)
            offset = int(rng.integers(0, seq_len)) if rng is not None and len(g) > seq_len else 0
            # Windows tile the piece without overlap; the first one is shortened by a random
            # offset so the cuts fall at a different place every epoch.
            bounds = [0] + list(range(seq_len - offset, len(g), seq_len)) + [len(g)]
            for s, e in zip(bounds[:-1], bounds[1:]):
                if e <= s:
                    continue
                n = e - s
                xw = np.zeros((seq_len, x.shape[1]), np.float32)
                yw = np.zeros((seq_len, y.shape[1]), np.int64)
                mw = np.zeros(seq_len, np.float32)
                xw[:n], yw[:n], mw[:n] = x[s:s + n], y[s:s + n], 1.0
                xs.append(xw)
                ys.append(yw)
                ms.append(mw)
    if not xs:
        raise DataError("no piece fits the model's pitch range; check the data")
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ms))


def window_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, float]:
    """-log p(frame | past), averaged over real (unpadded) steps: nats per step."""
    logp = model(x, y)  # (N, L): log-probability of each whole frame
    return -(logp * m).sum() / m.sum(), float(m.sum())


@torch.no_grad()
def validate(model: BachLSTM, pieces: list) -> float:
    """Mean nats per step over whole validation pieces (Pieces or Grids), untransposed, from a silent start."""
    model.eval()
    total, steps = 0.0, 0.0
    for piece in pieces:
        g = piece if isinstance(piece, Grid) else piece.grid
        if not fits(g, model.cfg):
            continue
        x, y = piece_arrays(g, model.cfg)
        loss, n = window_loss(model, torch.from_numpy(x)[None], torch.from_numpy(y)[None], torch.ones(1, len(g)))
        total += float(loss) * n
        steps += n
    model.train()
    return total / max(steps, 1.0)


def _ddp() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(train_pieces: list[Piece], valid_pieces: list[Piece], out: str | os.PathLike,
          model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None, resume: str | None = None,
          description: str = "", progress: bool = True, log=print) -> dict:
    """Train and write the best checkpoint (by validation loss) to ``out``; ``out``.last.pt holds the last state.

    Returns a summary dict (best validation loss, epochs run, parameter count, ...).
    """
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    rank, world = _ddp()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    n_train_steps = sum(p.n_steps for p in train_pieces)
    start_epoch, best, history, bad_epochs = 0, math.inf, [], 0
    opt_state = None
    if resume:
        model, ckpt = load_checkpoint(resume)
        start_epoch = int(ckpt.get("epoch", 0))
        best = float(ckpt.get("best_val_loss", math.inf))
        history = list(ckpt.get("history", []))
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        opt_state = ckpt.get("optimizer")
        model.train()
    else:
        if model_cfg is None:
            model_cfg = ModelConfig(hidden=default_size(n_train_steps))
        model = BachLSTM(model_cfg)
    mcfg = model.cfg
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if opt_state:
        opt.load_state_dict(opt_state)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    out = Path(out)
    last_path = out.with_suffix(".last.pt")
    info_base = {"trained_on": description, "n_train_pieces": len(train_pieces), "n_valid_pieces": len(valid_pieces),
                 "n_train_steps": n_train_steps, "train_config": asdict(cfg), "n_params": model.n_params()}
    if rank == 0:
        log(f"model: {mcfg.layers}x{mcfg.hidden} LSTM, {model.n_params():,} parameters; "
            f"data: {len(train_pieces)} train / {len(valid_pieces)} valid pieces, {n_train_steps:,} train steps")
    t0 = time.monotonic()
    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        # Pieces are put on the grid and cut into windows a chunk at a time, in a new order every
        # epoch (the same on every rank), so memory stays bounded however large the corpus is.
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(train_pieces))
        chunks = [order[i:i + cfg.chunk_pieces] for i in range(0, len(order), cfg.chunk_pieces)]
        total = sum(p.n_steps for p in train_pieces) * cfg.copies // cfg.seq_len // cfg.batch_size + len(chunks)
        bar = tqdm(total=total // world, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not progress or rank != 0, leave=False)
        running, b_all = 0.0, 0
        for chunk in chunks:
            x, y, m = make_windows([train_pieces[i].grid for i in chunk], mcfg, cfg.seq_len, rng, cfg.transpose,
                                   cfg.copies)
            perm = torch.from_numpy(np.random.default_rng(cfg.seed + epoch + int(chunk[0])).permutation(len(x)))
            perm = perm[rank::world]  # each rank its share
            n_batches = max(1, math.ceil(len(perm) / cfg.batch_size))
            if world > 1:
                # Every rank must run the same number of steps or the gradient all-reduce hangs.
                import torch.distributed as dist

                t = torch.tensor([n_batches])
                dist.all_reduce(t, op=dist.ReduceOp.MIN)
                n_batches = int(t)
            for b in range(n_batches):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                loss, _ = window_loss(net, x[idx], y[idx], m[idx])
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                running = 0.9 * running + 0.1 * loss.item() if b_all else loss.item()
                b_all += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}")
            del x, y, m
        bar.close()
        val = validate(model, valid_pieces)
        history.append({"epoch": epoch, "train_loss": running, "val_loss": val})
        improved = val < best - 1e-4
        if improved:
            best, bad_epochs = val, 0
        else:
            bad_epochs += 1
        info = {**info_base, "epoch": epoch, "best_val_loss": best, "val_loss": val, "history": history,
                "bad_epochs": bad_epochs, "train_seconds": time.monotonic() - t0}
        if rank == 0:
            if improved:
                save_checkpoint(out, model, **info)
            save_checkpoint(last_path, model, **info, optimizer=opt.state_dict())
            log(f"epoch {epoch}: train {running:.3f}  valid {val:.3f} nats/step{'  (best, saved)' if improved else ''}")
        if bad_epochs >= cfg.patience:
            if rank == 0:
                log(f"stopping early: no better validation loss for {cfg.patience} epochs")
            break
    identical = True
    if world > 1:
        import torch.distributed as dist

        # DDP keeps the replicas equal by averaging gradients; check that it did, bit for bit.
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        identical = all(torch.equal(gathered[0], g) for g in gathered)
        if rank == 0:
            log(f"{world} ranks, parameters identical across ranks: {'yes' if identical else 'NO'}")
        dist.barrier()
    if rank == 0 and not out.exists():
        save_checkpoint(out, model, **info_base, epoch=epoch, best_val_loss=best, history=history)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"best_val_loss": best, "epochs": epoch, "n_params": model.n_params(), "rank": rank, "world": world,
            "seconds": time.monotonic() - t0, "model": model, "ranks_identical": identical}

