"""The command line. Each command only wires library calls; ImproviserErrors become one line on stderr."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import typer

from .errors import ImproviserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A real-time MIDI improviser: an LSTM trained on J. S. Bach.")
_state = {"debug": False}

MAX_SECONDS = 24 * 3600.0


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors.")) -> None:
    _state["debug"] = debug


def cli_errors(fn):
    """Turn an ImproviserError (or a bad number, or Ctrl-C) into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImproviserError as e:
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


# ---- checks shared by several commands ---------------------------------------------------------------

def check_seconds(seconds: float, what: str = "--seconds") -> float:
    if not (0 < seconds <= MAX_SECONDS) or math.isnan(seconds):
        raise ImproviserError(f"{what} must be more than 0 and at most {MAX_SECONDS:.0f} (got {seconds})")
    return seconds


def check_bpm(bpm: float) -> float:
    if not (20 <= bpm <= 400) or math.isnan(bpm):
        raise ImproviserError(f"--bpm must be between 20 and 400 (got {bpm})")
    return bpm


def check_output(path: Path) -> Path:
    """The file can be written: its folder exists and is writable, and it is not a folder itself."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ImproviserError(f"{path} is a folder; give a file name such as {path / 'out.mid'}")
    if not folder.is_dir():
        raise ImproviserError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ImproviserError(f"cannot write {path}: permission denied")
    return path


def load_model(checkpoint: Optional[Path]):
    from .model import default_checkpoint, load_checkpoint

    model, ckpt = load_checkpoint(checkpoint or default_checkpoint())
    return model, ckpt


def load_prime(prime: Optional[Path], steps_per_beat: int):
    if prime is None:
        return None
    from .encoding import read_midi

    return read_midi(prime, steps_per_beat)


CHECKPOINT_OPT = typer.Option(None, "--checkpoint", "-c", help="Checkpoint file (default: the shipped Bach model).")
TEMPERATURE_OPT = typer.Option(0.9, "--temperature", "-t",
                               help="Sampling temperature, 0..5 (0 = always the likeliest).")
STABILITY_OPT = typer.Option(1, "--stability", "-s", help="Minimum note length in steps (16ths), 1..64.")
SEED_OPT = typer.Option(None, "--seed", help="Random seed; the same seed gives the same music.")
BPM_OPT = typer.Option(100.0, "--bpm", help="Tempo in beats (quarter notes) per minute, 20..400.")
PRIME_OPT = typer.Option(None, "--prime", help="A MIDI phrase the model listens to before it plays.")


@app.command()
@cli_errors
def generate(
    out: Path = typer.Argument(..., help="MIDI file to write."),
    seconds: float = typer.Option(30.0, "--seconds", help="Length of the file in seconds."),
    bpm: float = BPM_OPT,
    temperature: float = TEMPERATURE_OPT,
    stability: int = STABILITY_OPT,
    seed: Optional[int] = SEED_OPT,
    prime: Optional[Path] = PRIME_OPT,
    checkpoint: Optional[Path] = CHECKPOINT_OPT,
) -> None:
    """Write SECONDS of improvised music to a MIDI file, offline and much faster than real time.

    Example: improviser generate out.mid --seconds 30 --bpm 90 --seed 7
    """
    from .encoding import grid_to_timed_notes, write_midi
    from .generator import check_controls
    from .generator import generate as gen

    check_seconds(seconds)
    check_bpm(bpm)
    check_controls(temperature, stability)
    check_output(out)
    model, _ = load_model(checkpoint)
    primer = load_prime(prime, model.cfg.steps_per_beat)
    t0 = time.perf_counter()
    n_steps = math.ceil(seconds * bpm / 60.0 * model.cfg.steps_per_beat)
    grid = gen(model, n_steps, temperature, stability, seed, primer)
    notes = grid_to_timed_notes(grid, bpm)
    write_midi(out, {"improviser": notes}, bpm, length=seconds)
    typer.echo(f"wrote {out}: {seconds:g} s, {len(notes)} notes at {bpm:g} bpm "
               f"in {time.perf_counter() - t0:.2f} s", err=True)


@app.command()
@cli_errors
def train(
    data: Optional[list[Path]] = typer.Argument(None, help="MIDI files or folders to train on."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the best checkpoint."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Train on a built-in corpus: bach-chorales."),
    epochs: int = typer.Option(40, "--epochs", help="Most epochs to run (early stopping may end sooner)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue from a checkpoint (OUT.last.pt)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="LSTM size (default: sized by the data)."),
    layers: int = typer.Option(2, "--layers", help="LSTM layers."),
    dropout: float = typer.Option(0.3, "--dropout", help="Dropout between layers and before the output."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per batch."),
    lr: float = typer.Option(2e-3, "--lr", help="Adam learning rate."),
    patience: int = typer.Option(6, "--patience", help="Stop after this many epochs without improvement."),
    seed: int = typer.Option(0, "--seed", help="Random seed for initialisation, shuffling and augmentation."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N pieces (quick trials)."),
) -> None:
    """Train a model on MIDI files/folders or on the Bach chorales, keeping the best checkpoint.

    Example: improviser train --corpus bach-chorales --out checkpoints/bach.pt
             improviser train my_midi_folder/ --out mine.pt --epochs 20
    """
    from .data import load_bach_chorales, load_midi_files, split
    from .model import ModelConfig
    from .train import TrainConfig
    from .train import train as run_train

    if not data and not corpus:
        raise ImproviserError("give MIDI files/folders to train on, or --corpus bach-chorales")
    if corpus and corpus != "bach-chorales":
        raise ImproviserError(f"unknown corpus {corpus!r}; the built-in one is bach-chorales")
    if not (1 <= epochs <= 10_000) or not (1 <= batch_size <= 4096) or not (1 <= layers <= 8):
        raise ImproviserError("--epochs must be 1..10000, --batch-size 1..4096, --layers 1..8")
    if hidden is not None and not (8 <= hidden <= 4096):
        raise ImproviserError("--hidden must be 8..4096")
    if not (0 <= dropout < 1) or not (0 < lr < 1):
        raise ImproviserError("--dropout must be in [0, 1) and --lr in (0, 1)")
    check_output(out)
    pieces = []
    description = []
    if corpus:
        pieces += load_bach_chorales(limit=limit)
        description.append(f"music21 Bach chorales ({len(pieces)} pieces)")
    if data:
        mine = load_midi_files(data)[:limit]
        pieces += mine
        description.append(f"{len(mine)} MIDI files")
    train_p, valid_p = split(pieces)
    model_cfg = None
    if hidden is not None or layers != 2 or dropout != 0.3:
        from .model import default_size

        n_steps = sum(len(p.grid) for p in train_p)
        model_cfg = ModelConfig(hidden=hidden or default_size(n_steps, layers), layers=layers, dropout=dropout)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
    summary = run_train(train_p, valid_p, out, model_cfg, cfg, str(resume) if resume else None,
                        description=" + ".join(description) + ", transposed to 12 keys",
                        log=lambda s: typer.echo(s, err=True))
    if summary["rank"] == 0:
        typer.echo(f"best validation loss {summary['best_val_loss']:.3f} nats/step; wrote {out}", err=True)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except ImproviserError as e:  # raised outside a command (should not happen, but never show a trace)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
