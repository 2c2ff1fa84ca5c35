"""Training: windows of pieces, transposition augmentation, validation every epoch, early stopping, resume.

Runs on one CPU in minutes for the chorales, or on a GPU (``device``: CUDA, else Apple's MPS,
else the CPU). Under ``torchrun`` each rank trains on its share of the windows, on its own GPU
(``LOCAL_RANK``) with NCCL between them or on the CPU with gloo, and DistributedDataParallel
averages the gradients; rank 0 validates, chooses the best epoch and writes the checkpoints.

On a GPU the windows of the next chunk of pieces are made on the CPU by a thread while the GPU
trains on the current one, and each batch goes over from pinned memory without waiting; the
loss is read back only for the progress bar. Checkpoints hold CPU tensors whatever trained them.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DataError, ImproviserError
from ..music.analysis import COPY_STEPS, passage_keys
from ..music.encoding import Grid
from .data import Piece
from .network import (
    BachLSTM,
    KeyMemory,
    ModelConfig,
    default_size,
    frame_features,
    frame_targets,
    input_columns,
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
    own_dropout: float = 0.3  # listening models: share of accompanying steps whose own last frame is hidden
    chunk_pieces: int = 512  # pieces put on the grid and cut into windows at a time
    bf16: bool = False  # CUDA only: forward and loss under bfloat16 autocast (unmeasured; float32 by default)


def before(a: np.ndarray) -> np.ndarray:
    """The frame before each step: (T, P) -> (T, P), a silent frame first."""
    return np.vstack([np.zeros((1, a.shape[1]), a.dtype), a[:-1]])


def piece_arrays(grid: Grid, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (T, n_inputs) and targets (T, n_pitches) for a whole piece.

    The input at step t is the frame at t-1 (silence before the first step) and
    the bar position of step t; the target is the state of every pitch at t.
    """
    x = frame_features(before(grid.onset), before(grid.sound), grid.bar_positions(), cfg)
    return x, frame_targets(grid.onset, grid.sound, cfg)


# ---- a listening model: who plays what -----------------------------------------------------------
#
# A chorale is cut into segments, each given one of the roles the model has on stage:
#   listen    -- the player plays (one part, most often the soprano, or all four) while the model is
#                silent: its own input is silence and nothing is scored; then a few steps of silence
#                from both, as in call and response before the answer;
#   play      -- the model plays all the parts, the player is silent (answering, or playing alone);
#   accompany -- the player plays one part at its own rhythm and the model plays the others.
# The key memory is computed from everything struck by either, as it is live.

FAST_LR = 30.0  # the direct biases' learning rate, as a multiple of the rest's
FAST = ("interval_bias", "key_bias")
ROLES = ("listen", "play", "accompany")
ROLE_P = (0.35, 0.30, 0.35)
SEGMENT_STEPS = (16, 96)  # a segment lasts 1..6 bars of 4/4
ANSWER_GAP = (0, 12)  # silent steps between a phrase and its answer (respond mode waits 2 beats, a primer none)


def _with_onsets(onset: np.ndarray, sound: np.ndarray) -> np.ndarray:
    """Onsets where a pitch starts sounding without one (a part cut in at a segment boundary)."""
    return onset | (sound & ~before(sound))


def role_grids(voices: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Give the parts of a piece to the player and the model, segment by segment.

    voices: (onset, sound) bool (T, 128) per part, highest first.
    Returns own_onset, own_sound, player_onset, player_sound (bool (T, 128)) and the mask (float32 (T,)):
    1 where the model's frame is scored.
    """
    t_len = voices[0][0].shape[0]
    own_on, own_snd = np.zeros((t_len, 128), bool), np.zeros((t_len, 128), bool)
    pl_on, pl_snd = np.zeros((t_len, 128), bool), np.zeros((t_len, 128), bool)
    mask = np.zeros(t_len, np.float32)
    four = len(voices) == 4  # with more parts (instruments doubling a voice) accompaniment would double the tune
    s = 0
    while s < t_len:
        e = min(t_len, s + int(rng.integers(SEGMENT_STEPS[0], SEGMENT_STEPS[1] + 1)))
        role = ROLES[rng.choice(3, p=ROLE_P)]
        if role == "accompany" and not four:
            role = "play"
        player = 0 if rng.random() < 0.6 else int(rng.integers(0, len(voices)))
        if role == "listen":
            parts = range(len(voices)) if rng.random() < 0.2 else [player]
            for v in parts:
                pl_on[s:e] |= voices[v][0][s:e]
                pl_snd[s:e] |= voices[v][1][s:e]
            gap = int(rng.integers(ANSWER_GAP[0], ANSWER_GAP[1] + 1))
            s = min(t_len, e + gap)  # the gap: both silent, not scored
            continue
        for v in range(len(voices)):
            if role == "accompany" and v == player:
                pl_on[s:e] |= voices[v][0][s:e]
                pl_snd[s:e] |= voices[v][1][s:e]
            else:
                own_on[s:e] |= voices[v][0][s:e]
                own_snd[s:e] |= voices[v][1][s:e]
        mask[s:e] = 1.0
        s = e
    return _with_onsets(own_on, own_snd), own_snd, _with_onsets(pl_on, pl_snd), pl_snd, mask


def listening_arrays(voices: list[tuple[np.ndarray, np.ndarray]], bar_pos: np.ndarray, cfg: ModelConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (T, n_inputs), targets (T, n_pitches) and mask (T,) of a piece for a listening model."""
    own_on, own_snd, pl_on, pl_snd, mask = role_grids(voices, rng)

    memory = KeyMemory.sequence(own_on | pl_on) if cfg.key_memory else None
    player_memory = KeyMemory.sequence(pl_on) if cfg.player_key_memory else None
    x = frame_features(before(own_on), before(own_snd), bar_pos, cfg, before(pl_on), before(pl_snd), memory,
                       player_memory)
    return x, frame_targets(own_on, own_snd, cfg), mask


def _shift_voices(voices, semitones: int):
    return [(np.roll(on, semitones, axis=1), np.roll(snd, semitones, axis=1)) for on, snd in voices]


FOUR_PART = 0.6  # of the steps that sound anything, at least this share sound exactly four notes


def is_four_part(pieces: list) -> bool:
    """Is the training music four-part writing (chorales), so its notes can be told apart as four voices?"""
    four = sounding = 0
    for p in pieces:
        sizes = p.grid.sound.sum(axis=1)
        four += int((sizes == 4).sum())
        sounding += int((sizes > 0).sum())
    return bool(sounding) and four / sounding >= FOUR_PART


def key_profiles(pieces: list) -> dict:
    """What the key memory holds, on average, in a major and in a minor key, tonic first: {"major": [12], ...}.

    ``--key "D minor"`` pins the memory to the minor profile turned to D. Each piece's key is
    estimated from all its notes (Krumhansl-Schmuckler).
    """
    from ..music.analysis import estimate_key

    sums = {"major": np.zeros(12), "minor": np.zeros(12)}
    for p in pieces:
        g = p if isinstance(p, Grid) else p.grid
        if not g.onset.any():
            continue
        tonic, mode, _ = estimate_key(g)
        mem = KeyMemory.sequence(g.onset)[:, :12]
        sums[mode] += np.roll(mem.sum(axis=0), -tonic)
    return {m: (v / max(v.sum(), 1e-12)).round(5).tolist() for m, v in sums.items()}


def fits(grid: Grid, cfg: ModelConfig) -> bool:
    used = np.flatnonzero(grid.sound.any(axis=0))
    return used.size > 0 and used[0] >= cfg.low and used[-1] < cfg.low + cfg.n_pitches


def make_windows(pieces: list, cfg: ModelConfig, seq_len: int, rng: np.random.Generator | None,
                 transpose: int = 0, copies: int = 1, own_dropout: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut pieces (Grids, or Pieces) into windows of seq_len steps -> X (N, L, F), Y (N, L, P), mask (N, L).

    With an rng, each copy of a piece is shifted by a random transposition that
    keeps it in the model's range, and the windows start at a random offset.
    A listening model needs Pieces that keep their parts; each copy gets its own roles. With
    ``own_dropout``, that share of the steps where it accompanies the player do not show it its
    own last frame, so it learns to follow the player rather than only its own harmony (teacher
    forcing alone lets it lean on its own past, which live is its own guess, not Bach's).
    """
    xs, ys, ms = [], [], []
    for piece in pieces:
        grid = piece if isinstance(piece, Grid) else piece.grid
        voices = None
        if cfg.listens:
            voices = None if isinstance(piece, Grid) else piece.voices
            if voices is None:
                raise DataError("a listening model trains on pieces that keep their parts (soprano .. bass): "
                                "train it with --corpus bach-chorales")
        for _ in range(copies):
            g, shift = grid, 0
            if rng is not None and transpose:
                for _try in range(4):
                    k = int(rng.integers(-transpose + 1, transpose + 1))
                    shifted = grid.transpose(k)
                    if shifted is not None and fits(shifted, cfg):
                        g, shift = shifted, k
                        break
            if not fits(g, cfg):
                continue
            if voices is not None:
                x, y, mk = listening_arrays(_shift_voices(voices, shift), g.bar_positions(), cfg,
                                            rng if rng is not None else np.random.default_rng(0))
                if own_dropout and rng is not None:
                    cols = input_columns(cfg)
                    player = x[:, cols["player_onset"].start: cols["player_sound"].stop].any(axis=1)
                    hide = player & (mk > 0) & (rng.random(len(x)) < own_dropout)
                    x[hide, cols["own_onset"].start: cols["own_sound"].stop] = 0.0
            else:
                x, y = piece_arrays(g, cfg)
                mk = np.ones(len(g), np.float32)
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
                xw[:n], yw[:n], mw[:n] = x[s:s + n], y[s:s + n], mk[s:s + n]
                if not mw.any():
                    continue
                xs.append(xw)
                ys.append(yw)
                ms.append(mw)
    if not xs:
        raise DataError("no piece fits the model's pitch range; check the data")
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(ms))


def masked_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """-log p(frame | past), averaged over real (unpadded) steps: nats per step, a tensor on the model's device."""
    logp = model(x, y)  # (N, L): log-probability of each whole frame
    return -(logp * m).sum() / m.sum()


def window_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, float]:
    """masked_nll and the number of steps it averages over (reading it waits for a GPU)."""
    return masked_nll(model, x, y, m), float(m.sum())


@torch.no_grad()
def validate(model: BachLSTM, pieces: list) -> float:
    """Mean nats per step over whole validation pieces (Pieces or Grids), untransposed, from a silent start.

    Runs on the model's device, in float32.
    """
    model.eval()
    device = next(model.parameters()).device
    total, steps = 0.0, 0.0
    for i, piece in enumerate(pieces):
        g = piece if isinstance(piece, Grid) else piece.grid
        if not fits(g, model.cfg):
            continue
        if model.cfg.listens:
            # The same roles every epoch: a fixed seed per piece.
            x, y, mk = listening_arrays(piece.voices, g.bar_positions(), model.cfg, np.random.default_rng(i))
        else:
            x, y = piece_arrays(g, model.cfg)
            mk = np.ones(len(g), np.float32)
        if not mk.any():
            continue  # a short piece that only listened: nothing to score
        loss, n = window_loss(model, *(torch.from_numpy(a)[None].to(device) for a in (x, y, mk)))
        total += float(loss) * n
        steps += n
    model.train()
    return total / max(steps, 1.0)


# ---- where it trains ------------------------------------------------------------------------------


class DeviceError(ImproviserError):
    """The device asked for is not on this machine, or torchrun started more ranks than it has GPUs."""


class TooManyRanks(DeviceError):
    """torchrun started more ranks on a machine than it has GPUs (each rank trains on its own)."""


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(asked: str, cuda_count: int, mps: bool, local_rank: int = 0, local_world: int = 1) -> torch.device:
    """The device one rank trains on, from what the machine has (passed in, so it is tested anywhere).

    asked: auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps. cuda_count: the GPUs
    torch sees; mps: whether Apple's GPU is there. Under torchrun (local_world: ranks on this machine,
    more than 1) each rank takes its own GPU, cuda:LOCAL_RANK, and the CPU is shared; torch.distributed
    has no backend for MPS, so auto means CUDA or the CPU there.
    """
    name = asked.strip().lower()
    ranks = local_world > 1
    if name == "auto":
        name = "cuda" if cuda_count else "mps" if mps and not ranks else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps:
            raise DeviceError("--device mps: this machine has no Apple GPU (MPS); use --device cpu or auto")
        if ranks:
            raise DeviceError("--device mps under torchrun: torch.distributed cannot reduce on Apple GPUs; "
                              "use --device cpu (gloo)")
        return torch.device("mps")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise DeviceError(f"unknown --device {asked!r}; choose {DEVICES}")
    if not cuda_count:
        raise DeviceError(f"--device {asked}: torch sees no CUDA GPU on this machine; use --device cpu or auto")
    if ranks:
        if colon:
            raise DeviceError(f"--device {asked} under torchrun: each rank takes its own GPU (cuda:LOCAL_RANK); "
                              "give --device cuda or auto")
        if local_world > cuda_count:
            raise TooManyRanks(f"torchrun started {local_world} ranks on this machine, which has {cuda_count} "
                               f"GPU{'s' if cuda_count > 1 else ''}: give --nproc_per_node {cuda_count} (a rank per "
                               "GPU), or --device cpu to train on the CPU (gloo)")
        return torch.device("cuda", local_rank)
    if int(index or 0) >= cuda_count:
        raise DeviceError(f"--device {asked}: this machine has {cuda_count} GPU{'s' if cuda_count > 1 else ''} "
                          f"(cuda:0..cuda:{cuda_count - 1})")
    return torch.device("cuda", int(index or 0))


def _launch() -> tuple[int, int, int]:
    """(world size, this rank's index on its machine, ranks on its machine) as torchrun set them; (1, 0, 1) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    if world <= 1:
        return 1, 0, 1
    return world, int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def train_device(asked: str = "auto") -> torch.device:
    """pick_device for this machine and this process (a torchrun rank or alone)."""
    world, local_rank, local_world = _launch()
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return pick_device(asked, cuda, mps, local_rank, local_world if world > 1 else 1)


def describe(device: torch.device) -> str:
    """What a training log says it runs on: 'cuda:0 (NVIDIA H200)', 'cpu (2 threads)', 'mps (Apple GPU)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n > 1 else ''})"
    return f"{device} (Apple GPU)" if device.type == "mps" else str(device)


def _ddp(device: torch.device) -> tuple[int, int]:
    """(rank, world size); under torchrun joins the process group: NCCL between GPUs, gloo on the CPU."""
    if _launch()[0] > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL's buffers and the default stream on this rank's own GPU
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def on_cpu(obj):
    """A state dict (nested dicts, lists, tuples of tensors and plain data) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def ahead(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a thread, up to ``depth`` items ahead of the consumer.

    The thread's error is raised in the consumer; closing the generator (or the consumer's own error)
    stops the thread at its next item. The items and their order are those of ``items`` alone.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, who raises it
            put((end, e))

    worker = threading.Thread(target=produce, name="make-windows", daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def batch_to(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The rows ``idx`` of a CPU tensor, on ``device``; to a GPU through pinned memory, without waiting."""
    if device.type != "cuda":
        return t[idx].to(device)
    # Pinned blocks come from torch's caching host allocator, which reuses one only once its copy is done.
    pinned = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    torch.index_select(t, 0, idx, out=pinned)
    return pinned.to(device, non_blocking=True)


def _epoch_chunks(train_pieces: list[Piece], mcfg: ModelConfig, cfg: TrainConfig, rng: np.random.Generator,
                  first_epoch: int, rank: int, world: int) -> Iterator:
    """(X, Y, mask, this rank's order of the windows) for every chunk of pieces of every epoch from first_epoch.

    Pieces are put on the grid and cut into windows a chunk at a time, in a new order every epoch (the
    same on every rank), so memory stays bounded however large the corpus is.
    """
    for epoch in range(first_epoch, cfg.epochs + 1):
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(train_pieces))
        for start in range(0, len(order), cfg.chunk_pieces):
            chunk = order[start:start + cfg.chunk_pieces]
            x, y, m = make_windows([train_pieces[i] if mcfg.listens else train_pieces[i].grid for i in chunk],
                                   mcfg, cfg.seq_len, rng, cfg.transpose, cfg.copies, cfg.own_dropout)
            perm = torch.from_numpy(np.random.default_rng(cfg.seed + epoch + int(chunk[0])).permutation(len(x)))
            yield x, y, m, perm[rank::world]  # each rank its share


def _fewest(n: int, device: torch.device) -> int:
    """The smallest n over the ranks: every rank must run the same number of steps or the all-reduce hangs."""
    import torch.distributed as dist

    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def optimizer(model: BachLSTM, lr: float) -> torch.optim.Adam:
    """Adam over the model's parameters, wherever they are."""
    # The direct biases start at zero and need values of a few nats: at the LSTM's step size (Adam moves
    # each weight by about lr per batch) it would take hundreds of epochs, so it gets a larger one.
    fast = [p for name, p in model.named_parameters() if name in FAST]
    rest = [p for name, p in model.named_parameters() if name not in FAST]
    groups = [{"params": rest}] + ([{"params": fast, "lr": lr * FAST_LR}] if fast else [])
    return torch.optim.Adam(groups, lr=lr)


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor,
               clip: float, bf16: bool = False) -> torch.Tensor:
    """One optimiser step on a batch already on the model's device; the loss, not read back (no waiting)."""
    with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = masked_nll(net, x, y, m)  # log_softmax and the sums stay float32 under autocast
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return loss


def train(train_pieces: list[Piece], valid_pieces: list[Piece], out: str | os.PathLike,
          model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None, resume: str | None = None,
          description: str = "", progress: bool = True, log=print, init_from: str | None = None,
          device: str = "auto") -> dict:
    """Train and write the best checkpoint (by validation loss) to ``out``; ``out``.last.pt holds the last state.

    device: auto, cpu, cuda, cuda:N or mps (``pick_device``). Returns a summary dict (best validation
    loss, epochs run, parameter count, the device, ...); its model is on that device.
    """
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    dev = train_device(device)
    if cfg.bf16 and dev.type != "cuda":
        raise DeviceError(f"bf16 autocast is for CUDA GPUs; this run trains on {dev} in float32 (leave out --bf16)")
    rank, world = _ddp(dev)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    n_train_steps = sum(p.n_steps for p in train_pieces)
    start_epoch, best, history, bad_epochs = 0, math.inf, [], 0
    opt_state = None
    info_extra: dict = {}
    if resume:
        model, ckpt = load_checkpoint(resume)
        start_epoch = int(ckpt.get("epoch", 0))
        best = float(ckpt.get("best_val_loss", math.inf))
        history = list(ckpt.get("history", []))
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        opt_state = ckpt.get("optimizer")
        for kept in ("key_profiles", "four_part", "passage_keys", "lead_keys"):
            if kept in ckpt:
                info_extra[kept] = ckpt[kept]
        model.train()
    else:
        if model_cfg is None:
            model_cfg = ModelConfig(hidden=default_size(n_train_steps))
        if init_from:
            from .network import widen

            old, _ = load_checkpoint(init_from)
            model = widen(old, model_cfg)
            model.train()
        else:
            model = BachLSTM(model_cfg)  # made on the CPU, so a seed gives the same start on every device
    model.to(dev)
    mcfg = model.cfg
    opt = optimizer(model, cfg.lr)
    if opt_state:
        opt.load_state_dict(opt_state)  # its moments go to the parameters' device
    net = model
    if world > 1:
        # The buffers are constant index tables: nothing to broadcast before each forward.
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                  broadcast_buffers=False)
    out = Path(out)
    last_path = out.with_suffix(".last.pt")
    if mcfg.key_memory and "key_profiles" not in info_extra:
        info_extra["key_profiles"] = key_profiles(train_pieces)
    if "four_part" not in info_extra:
        info_extra["four_part"] = is_four_part(train_pieces)
    if "passage_keys" not in info_extra and mcfg.steps_per_beat == 4:
        # What the generator must never play verbatim: every bar-long passage of the training pieces.
        info_extra["passage_keys"] = torch.from_numpy(passage_keys(p.grid for p in train_pieces))
        info_extra["lead_keys"] = torch.from_numpy(passage_keys((p.grid for p in train_pieces), COPY_STEPS - 1))
    info_base = {**info_extra, "trained_on": description, "n_train_pieces": len(train_pieces),
                 "n_valid_pieces": len(valid_pieces), "n_train_steps": n_train_steps,
                 "train_config": asdict(cfg), "n_params": model.n_params()}
    if rank == 0:
        ranks = f"; {world} ranks ({'NCCL' if dev.type == 'cuda' else 'gloo'}), this is rank 0" if world > 1 else ""
        log(f"training on {describe(dev)}, {'bf16 autocast' if cfg.bf16 else 'float32'}{ranks}")
        log(f"model: {mcfg.layers}x{mcfg.hidden} LSTM, {model.n_params():,} parameters; "
            f"data: {len(train_pieces)} train / {len(valid_pieces)} valid pieces, {n_train_steps:,} train steps")
    n_chunks = len(range(0, len(train_pieces), cfg.chunk_pieces))
    chunks = _epoch_chunks(train_pieces, mcfg, cfg, rng, start_epoch + 1, rank, world)
    if dev.type != "cpu":
        # The next chunk's windows are made on the CPU while the GPU trains on this one. On the CPU the
        # same thread would take cores from the training itself.
        chunks = ahead(chunks, 1)
    show = progress and rank == 0
    t0 = time.monotonic()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            total = n_train_steps * cfg.copies // cfg.seq_len // cfg.batch_size + n_chunks
            bar = tqdm(total=total // world, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not show,
                       leave=False)
            running, b_all = torch.zeros((), device=dev), 0
            for _ in range(n_chunks):
                x, y, m, perm = next(chunks)
                n_batches = math.ceil(len(perm) / cfg.batch_size)
                if world > 1:
                    n_batches = _fewest(n_batches, dev)
                for b in range(n_batches):
                    idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                    loss = train_step(net, opt, *(batch_to(t, idx, dev) for t in (x, y, m)), cfg.clip, cfg.bf16)
                    # Kept on the device: reading a loss back waits for the GPU to finish the step.
                    running = 0.9 * running + 0.1 * loss.detach().float() if b_all else loss.detach().float()
                    b_all += 1
                    bar.update(1)
                    if show and b_all % 20 == 1:
                        bar.set_postfix(loss=f"{float(running):.3f}")
                del x, y, m
            bar.close()
            running = float(running)
            # Rank 0 validates, as one process would, and tells the others: every rank stops at the same epoch.
            val = validate(model, valid_pieces) if rank == 0 else 0.0
            if world > 1:
                import torch.distributed as dist

                t = torch.tensor([val], dtype=torch.float64, device=dev)
                dist.broadcast(t, 0)
                val = float(t)
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
                save_checkpoint(last_path, model, **info, optimizer=on_cpu(opt.state_dict()))
                log(f"epoch {epoch}: train {running:.3f}  valid {val:.3f} nats/step"
                    f"{'  (best, saved)' if improved else ''}")
            if bad_epochs >= cfg.patience:
                if rank == 0:
                    log(f"stopping early: no better validation loss for {cfg.patience} epochs")
                break
    finally:
        chunks.close()  # stops the thread that makes windows ahead
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
            "seconds": time.monotonic() - t0, "model": model, "ranks_identical": identical, "device": str(dev)}
