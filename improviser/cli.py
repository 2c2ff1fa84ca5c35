"""The command line. Each command only wires library calls; ImproviserErrors become one line on stderr."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from .errors import ImproviserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A real-time MIDI improviser: an LSTM trained on J. S. Bach.")

MAX_SECONDS = 24 * 3600.0


@app.callback()
def _main(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors.")) -> None:
    ctx.obj = {"debug": debug}


def _debugging(ctx: typer.Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def cli_errors(fn):
    """Turn an ImproviserError (or a bad number, or Ctrl-C) into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, cli_context: typer.Context | None = None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImproviserError as e:
            if _debugging(cli_context):
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    # The command's context (where --debug was said) reaches the wrapper as one more parameter.
    sig = inspect.signature(fn)
    ctx_param = inspect.Parameter("cli_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), ctx_param])
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
    from .model.network import default_checkpoint, load_checkpoint

    model, ckpt = load_checkpoint(checkpoint or default_checkpoint())
    return model, ckpt


def load_prime(prime: Optional[Path], steps_per_beat: int):
    if prime is None:
        return None
    from .music.encoding import read_midi

    return read_midi(prime, steps_per_beat)


CHECKPOINT_OPT = typer.Option(None, "--checkpoint", "-c", help="Checkpoint file (default: the shipped Bach model).")
TEMPERATURE_OPT = typer.Option(0.9, "--temperature", "-t",
                               help="Sampling temperature, 0..5: lower is plainer (0: the likeliest notes, slow "
                               "chords), higher is wilder. After silence or a bar held it starts again at 0.9 "
                               "or more, so a low temperature never leaves it silent.")
STABILITY_OPT = typer.Option(1, "--stability", "-s", help="Minimum note length in steps (16ths), 1..64.")
SEED_OPT = typer.Option(None, "--seed", help="Random seed; the same seed gives the same music.")
DEFAULT_BPM = 100.0
BPM_OPT = typer.Option(str(int(DEFAULT_BPM)), "--bpm", help="Tempo in beats (quarter notes) per minute, 20..400; "
                       "record and play with --input also take auto: the tempo, beat and meter of what you play.")
PRIME_OPT = typer.Option(None, "--prime", help="A MIDI phrase the model listens to before it plays (heard as a "
                         "player's phrase is).")
KEY_OPT = typer.Option("auto", "--key", help="auto: follow the key of what it hears (and plays); a key such as "
                       "'D minor' or 'F# major' holds it there.")
KEY_HOLD_OPT = typer.Option(3.0, "--key-hold", help="How firmly it keeps to the key (the player's, or --key's), "
                            "0..20: 0 lets it wander and modulate as Bach would, 3 keeps an answer in your key.")
VOICES_OPT = typer.Option(False, "--voices-on-channels", help="Soprano, alto, tenor and bass on MIDI channels "
                          "1-4 (a four-part checkpoint, such as the shipped one), so a DAW can give each line its "
                          "own instrument; its files then have a track per voice. --channel is not used.")
VELOCITY_OPT = typer.Option(None, "--velocity", help="Bounds for its velocities, LO..HI (1..127), e.g. 40..110. "
                            "They follow how hard you play, with a metrical accent (96/84/72 with nobody heard).")
CHANNEL_OPT = typer.Option(None, "--channel", help="MIDI channel for its own notes, 1..16 (default 1; 2 with "
                           "--thru, so your keyboard on channel 1 keeps its own sound).")
PROGRAM_OPT = typer.Option(None, "--program", help="General MIDI program, 0..127, sent as a program change at the "
                           "start on its channel and written in its files (default 48, String Ensemble 1; "
                           "-1 sends none).")


@dataclass
class MusicOptions:
    """The options every command that makes music takes (generate, record, play, accompany)."""

    bpm: Optional[float] = DEFAULT_BPM  # (given as text: a number, or "auto", which sets tempo_auto)
    temperature: float = 0.9
    stability: int = 1
    seed: Optional[int] = None
    prime: Optional[Path] = None
    checkpoint: Optional[Path] = None
    key: str = "auto"
    key_hold: float = 3.0
    velocity: Optional[str] = None
    channel: Optional[int] = None
    program: Optional[int] = None
    voices: bool = False
    meter: Optional[str] = None
    tempo_auto: bool = False  # --bpm auto: the tempo taken from the player (bpm is then the starting tempo)

    def __post_init__(self) -> None:
        if isinstance(self.bpm, str):
            text = self.bpm.strip().lower()
            if text == "auto":
                self.tempo_auto, self.bpm = True, DEFAULT_BPM
            else:
                try:
                    self.bpm = float(text)
                except ValueError:
                    raise ImproviserError(f"--bpm {self.bpm!r}: give a tempo in beats per minute, 20..400, "
                                          "or auto (take it from what you play)") from None

    def check(self, auto: bool = False) -> MusicOptions:
        """Bad options, one line each. auto: the command can take the tempo from a player (--bpm auto)."""
        from .model.generator import check_controls, parse_key, parse_velocity_range

        if self.tempo_auto and not auto:
            raise ImproviserError("--bpm auto takes the tempo from what a player plays: record and play with "
                                  "--input, and accompany, take it; give this command a number")
        if self.bpm is not None:
            check_bpm(self.bpm)
        check_controls(self.temperature, self.stability)
        parse_key(self.key)
        if not (0 <= self.key_hold <= 20) or math.isnan(self.key_hold):
            raise ImproviserError(f"--key-hold {self.key_hold}: give 0 (free) .. 20 (the default is 3)")
        parse_velocity_range(self.velocity)
        self.time_signature()
        if self.channel is not None and not 1 <= self.channel <= 16:
            raise ImproviserError(f"--channel {self.channel}: MIDI channels are 1..16")
        if self.program is not None and not -1 <= self.program <= 127:
            raise ImproviserError(f"--program {self.program}: General MIDI programs are 0..127 (-1: send none)")
        return self

    def time_signature(self, default=None):
        """--meter as a Meter; without it ``default`` (a melody file's own), else 4/4."""
        from .music.encoding import Meter

        if self.meter is None:
            return default or Meter()
        try:
            return Meter.parse(self.meter)
        except ValueError as e:
            raise ImproviserError(f"--meter: {e}") from None

    def midi_channel(self, thru: bool = False) -> int:
        """Its own channel, 0-based: --channel, else 1 (2 with --thru, leaving 1 to the player)."""
        return (self.channel if self.channel is not None else 2 if thru else 1) - 1

    def check_model(self, model, checkpoint: Optional[Path]) -> None:
        """What the options ask of the checkpoint: --voices-on-channels needs a four-part model."""
        if self.voices and not getattr(model, "four_part", False):
            name = checkpoint or "the checkpoint"
            raise ImproviserError(f"--voices-on-channels: {name} was not trained on four-part music, so its notes "
                                  "are not four voices; use a checkpoint trained on chorales (the shipped one)")

    def gm_program(self) -> int | None:
        """The program change to send (None: send none)."""
        from .music.encoding import DEFAULT_PROGRAM

        program = DEFAULT_PROGRAM if self.program is None else self.program
        return None if program < 0 else program


MUSIC_PARAMS = {  # name: (annotation, typer option), in --help order
    "bpm": (str, BPM_OPT),
    "temperature": (float, TEMPERATURE_OPT),
    "stability": (int, STABILITY_OPT),
    "seed": (Optional[int], SEED_OPT),
    "prime": (Optional[Path], PRIME_OPT),
    "checkpoint": (Optional[Path], CHECKPOINT_OPT),
    "key": (str, KEY_OPT),
    "key_hold": (float, KEY_HOLD_OPT),
    "velocity": (Optional[str], VELOCITY_OPT),
    "channel": (Optional[int], CHANNEL_OPT),
    "program": (Optional[int], PROGRAM_OPT),
    "voices": (bool, VOICES_OPT),
    "meter": (Optional[str], typer.Option(None, "--meter", help="Time signature, e.g. 3/4 or 6/8 (default 4/4; "
                                          "accompany: the melody file's own): bar lines and accents.")),
}


def with_options(name: str, cls, params: dict, nested: dict | None = None):
    """Give a command the shared options ``params``; it receives them as one ``cls`` object named ``name``.

    nested: {field: (class, params)} built first and passed to ``cls`` as that field.
    The options are written once here, so every command that takes them spells them alike.
    """
    nested = nested or {}

    def decorate(fn):
        sig = inspect.signature(fn)
        all_params = dict(params)
        for _, sub in nested.values():
            all_params.update(sub)
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
                 for n, (ann, opt) in all_params.items()]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            fields = {f: sub_cls(**{n: kwargs.pop(n) for n in sub}) for f, (sub_cls, sub) in nested.items()}
            kwargs[name] = cls(**{n: kwargs.pop(n) for n in params}, **fields)
            return fn(*args, **kwargs)

        kept = [p for p in sig.parameters.values() if p.name != name]
        wrapper.__signature__ = sig.replace(parameters=kept + extra)
        return wrapper

    return decorate


music_options = with_options("music", MusicOptions, MUSIC_PARAMS)


@app.command()
@cli_errors
@music_options
def generate(
    out: Path = typer.Argument(..., help="MIDI file to write."),
    seconds: float = typer.Option(30.0, "--seconds", help="Length of the file in seconds."),
    music: MusicOptions = None,
) -> None:
    """Write SECONDS of improvised music to a MIDI file, offline and much faster than real time.

    Example: improviser generate out.mid --seconds 30 --bpm 90 --seed 7
    """
    from .model.generator import generate as gen
    from .model.generator import parse_velocity_range
    from .music.encoding import grid_to_timed_notes, write_midi

    check_seconds(seconds)
    music.check()
    check_output(out)
    model, _ = load_model(music.checkpoint)
    music.check_model(model, music.checkpoint)
    primer = load_prime(music.prime, model.cfg.steps_per_beat)
    t0 = time.perf_counter()
    n_steps = math.ceil(seconds * music.bpm / 60.0 * model.cfg.steps_per_beat)
    meter = music.time_signature()
    grid = gen(model, n_steps, music.temperature, music.stability, music.seed, primer, key=music.key,
               key_hold=music.key_hold, velocity=parse_velocity_range(music.velocity), meter=meter)
    channel, program = music.midi_channel(), music.gm_program()
    if music.voices:
        from .music.voices import voice_tracks

        tracks = voice_tracks(grid, music.bpm)
        notes = [n for part in tracks.values() for n in part]
        programs = {name: [(part[0].channel if part else i, program)] for i, (name, part) in enumerate(tracks.items())}
    else:
        notes = grid_to_timed_notes(grid, music.bpm, channel)
        tracks, programs = {"improviser": notes}, {"improviser": [(channel, program)]}
    write_midi(out, tracks, music.bpm, length=seconds, programs=programs if program is not None else None,
               meter=meter)
    typer.echo(f"wrote {out}: {seconds:g} s, {len(notes)} notes at {music.bpm:g} bpm "
               f"in {time.perf_counter() - t0:.2f} s", err=True)


@app.command()
@cli_errors
def train(
    data: Optional[list[Path]] = typer.Argument(None, help="MIDI files or folders to train on."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the best checkpoint."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Train on a built-in corpus: bach-chorales."),
    jsb: Optional[Path] = typer.Option(None, "--jsb", help="Train a benchmark model on a JSB Chorales JSON file "
                                       "(its train split; valid chooses the model)."),
    head: str = typer.Option("nade", "--head", help="Output head: nade (notes of a step jointly) or independent."),
    nade_hidden: int = typer.Option(64, "--nade-hidden", help="Hidden units of the NADE head."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: all cores)."),
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
    listening: Optional[bool] = typer.Option(None, "--listening/--no-listening",
                                             help="A model that hears the player apart from itself, with a key "
                                             "memory, trained to answer and to accompany one part (default: on "
                                             "for --corpus bach-chorales, whose parts it needs)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start a listening model from a "
                                             "non-listening checkpoint of the same size."),
    device: str = typer.Option("auto", "--device", help="Where to train: auto (CUDA, else Apple's MPS, else the "
                               "CPU), cpu, cuda, cuda:N or mps. Under torchrun each rank takes its own GPU."),
    bf16: bool = typer.Option(False, "--bf16", help="CUDA only: bfloat16 autocast (its loss against float32 "
                              "is not measured yet; float32 by default)."),
) -> None:
    """Train a model on MIDI files/folders or on the Bach chorales, keeping the best checkpoint.

    Example: improviser train --corpus bach-chorales --out checkpoints/bach.pt
             improviser train my_midi_folder/ --out mine.pt --epochs 20
             torchrun --standalone --nproc_per_node 2 -m improviser train --corpus bach-chorales --out bach.pt
    """
    from .model.data import load_bach_chorales, load_midi_files, split
    from .model.network import ModelConfig
    from .model.train import TooManyRanks, TrainConfig, train_device
    from .model.train import train as run_train

    try:
        on = train_device(device)  # a device this machine lacks is said before any data is read
    except TooManyRanks:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            raise typer.Exit(1) from None  # the machine's first rank says it, once
        raise
    if bf16 and on.type != "cuda":
        raise ImproviserError(f"--bf16 is for CUDA GPUs; this would train on {on} (leave out --bf16)")
    if not data and not corpus and not jsb:
        raise ImproviserError("give MIDI files/folders to train on, or --corpus bach-chorales, or --jsb FILE.json")
    if head not in ("nade", "independent"):
        raise ImproviserError(f"unknown --head {head!r}; choose nade or independent")
    if not (4 <= nade_hidden <= 2048):
        raise ImproviserError("--nade-hidden must be 4..2048")
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    if corpus and corpus != "bach-chorales":
        raise ImproviserError(f"unknown corpus {corpus!r}; the built-in one is bach-chorales")
    if not (1 <= epochs <= 10_000) or not (1 <= batch_size <= 4096) or not (1 <= layers <= 8):
        raise ImproviserError("--epochs must be 1..10000, --batch-size 1..4096, --layers 1..8")
    if hidden is not None and not (8 <= hidden <= 4096):
        raise ImproviserError("--hidden must be 8..4096")
    if not (0 <= dropout < 1) or not (0 < lr < 1):
        raise ImproviserError("--dropout must be in [0, 1) and --lr in (0, 1)")
    check_output(out)
    if jsb:
        from .model.data import load_jsb

        if data or corpus:
            raise ImproviserError("--jsb trains a benchmark model on its own; leave out other data")
        train_p, valid_p = load_jsb(jsb, "train")[:limit], load_jsb(jsb, "valid")
        model_cfg = ModelConfig.for_jsb(hidden=hidden or 256, layers=layers, dropout=dropout, head=head,
                                        nade_hidden=nade_hidden)
        seq_len, unit = 64, "frame"
        description = f"JSB Chorales {jsb.name}, train split ({len(train_p)} pieces)"
    else:
        from .model.network import default_size

        listening = bool(corpus) and not data if listening is None else listening
        if listening and (data or not corpus):
            raise ImproviserError("--listening trains on pieces that keep their parts: use --corpus bach-chorales "
                                  "(without MIDI files), or --no-listening")
        pieces, sources = [], []
        if corpus:
            pieces += load_bach_chorales(limit=limit, voices=listening)
            sources.append(f"music21 Bach chorales ({len(pieces)} pieces)")
        if data:
            mine = load_midi_files(data)[:limit]
            pieces += mine
            sources.append(f"{len(mine)} MIDI files")
        train_p, valid_p = split(pieces)
        n_steps = sum(p.n_steps for p in train_p)
        model_cfg = ModelConfig(hidden=hidden or default_size(n_steps, layers), layers=layers, dropout=dropout,
                                head=head, nade_hidden=nade_hidden, player_input=listening, key_memory=listening,
                                player_intervals=listening, player_key_memory=listening,
                                key_bias=listening)
        seq_len, unit = TrainConfig.seq_len, "step"
        description = " + ".join(sources)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed, seq_len=seq_len,
                      bf16=bf16)
    summary = run_train(train_p, valid_p, out, model_cfg, cfg, str(resume) if resume else None,
                        description=description + ", transposed to 12 keys", log=lambda s: typer.echo(s, err=True),
                        init_from=str(init_from) if init_from else None, device=device)
    if summary["rank"] == 0:
        typer.echo(f"best validation loss {summary['best_val_loss']:.3f} nats/{unit}; wrote {out}", err=True)


@app.command()
@cli_errors
def evaluate(
    checkpoint: Optional[Path] = CHECKPOINT_OPT,
    jsb: Optional[Path] = typer.Option(None, "--jsb", help="JSB Chorales JSON file to score (published protocol)."),
    split_name: str = typer.Option("valid", "--split", help="Which split of --jsb: valid or test (or train)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="MIDI files/folders held out from training."),
    originality_check: bool = typer.Option(False, "--originality", help="Generate pieces and look for copies of "
                                           "the training data, and compare profiles with held-out Bach."),
    listening_check: bool = typer.Option(False, "--listening", help="On held-out folk melodies: does it answer in "
                                         "the phrase's key, and does its accompaniment fit the tune? Beside "
                                         "references (the tunes' own continuations, Bach's lower voices). Also "
                                         "runs --accompaniment: the tunes as files through accompany and "
                                         "harmonise."),
    harmony_check: bool = typer.Option(False, "--harmony", help="Four-part writing of --pieces free pieces of "
                                       "--seconds (default 20 of 30 s): parallel fifths and octaves, common "
                                       "chords on beats, four notes sounding; beside held-out Bach chorales."),
    accompaniment_check: bool = typer.Option(False, "--accompaniment", help="Run accompany (and harmonise) on "
                                             "held-out folk-tune files as a user would, and measure the files they "
                                             "write beside Bach's lower voices: consonance, notes on top, bass, "
                                             "common chords, four voices, parallels."),
    part: str = typer.Option("report", "--part", help="Which part of the tune files --accompaniment uses: report "
                             "(for figures) or tune (for tuning constants)."),
    tunes: int = typer.Option(60, "--tunes", help="How many held-out melodies --listening or --accompaniment uses."),
    pieces: Optional[int] = typer.Option(None, "--pieces", help="How many pieces --originality (default 10) or "
                                         "--harmony (default 20) generates."),
    seconds: float = typer.Option(30.0, "--seconds", help="Length of each generated piece."),
    temperature: float = TEMPERATURE_OPT,
) -> None:
    """Score a model: NLL per frame on the JSB Chorales benchmark, NLL on your own held-out MIDI, originality.

    Example: improviser evaluate --checkpoint checkpoints/jsb.pt --jsb jsb-chorales-quarter.json --split test
             improviser evaluate --originality --pieces 10
    """
    from .model.evaluate import check_jsb_model, frame_nll, perplexity_note

    if not (jsb or data or originality_check or listening_check or harmony_check or accompaniment_check):
        raise ImproviserError("say what to evaluate: --jsb FILE.json, --data DIR, --originality, --listening, "
                              "--harmony or --accompaniment")
    if part not in ("tune", "report"):
        raise ImproviserError(f"--part must be tune or report (got {part!r})")
    if not (1 <= tunes <= 500):
        raise ImproviserError("--tunes must be 1..500")
    if split_name not in ("train", "valid", "test"):
        raise ImproviserError(f"--split must be train, valid or test (got {split_name!r})")
    if pieces is not None and not (1 <= pieces <= 1000):
        raise ImproviserError("--pieces must be 1..1000")
    check_seconds(seconds)
    model, ckpt = load_model(checkpoint)
    if jsb:
        from .model.data import load_jsb

        check_jsb_model(model)
        total, frames = frame_nll(model, [p.grid for p in load_jsb(jsb, split_name)], skip_first=True)
        typer.echo(f"nll {total / frames:.4f}")
        typer.echo(f"frames {frames}")
        typer.echo(f"JSB {split_name}: {total / frames:.4f} nats per predicted frame over {frames} frames "
                   f"{perplexity_note(total / frames)}", err=True)
    if data:
        from .model.data import load_midi_files

        grids = [p.grid for p in load_midi_files(data, model.cfg.steps_per_beat)]
        total, steps = frame_nll(model, grids, skip_first=True)
        typer.echo(f"nll {total / steps:.4f} nats/step")
        typer.echo(f"steps {steps}")
    if originality_check:
        _originality(model, ckpt, pieces or 10, seconds, temperature)
    if harmony_check:
        from .model.data import load_bach_chorales, split
        from .model.evaluate import format_harmony, harmony

        if model.cfg.steps_per_beat != 4:
            raise ImproviserError("--harmony counts on a 16th-note grid; this checkpoint is a benchmark model")
        n_steps = math.ceil(seconds * DEFAULT_BPM / 60 * model.cfg.steps_per_beat)
        _, valid_p = split(load_bach_chorales(progress=False))
        typer.echo(f"four-part writing of {pieces or 20} free pieces of {seconds:g} s, beside {len(valid_p)} held-out "
                   "chorales:")
        for line in format_harmony(harmony(model, [p.grid for p in valid_p], pieces or 20, n_steps, temperature)):
            typer.echo(line)
    if listening_check:
        from .live.audition import format_listening, listening

        if model.cfg.steps_per_beat != 4:
            raise ImproviserError("--listening plays along on a 16th-note grid; this checkpoint is a benchmark model")
        for line in format_listening(listening(model, tunes, temperature=temperature)):
            typer.echo(line)
    if accompaniment_check or listening_check:  # --listening measures the way a user accompanies a file too
        from .live.accompaniment_eval import evaluate_accompaniment, format_accompaniment

        available = [c.name or c.callback.__name__ for c in app.registered_commands]
        extra = ["--checkpoint", str(checkpoint)] if checkpoint else []
        for line in format_accompaniment(evaluate_accompaniment(_invoke_self, available, tunes, part, extra=extra)):
            typer.echo(line)


def _invoke_self(args: list[str]) -> tuple[int, str]:
    """One of this CLI's commands, run in-process as a user would type it: (exit code, its output)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def _originality(model, ckpt, n_pieces: int, seconds: float, temperature: float) -> None:
    from .model.data import load_bach_chorales, split
    from .model.evaluate import format_profile, originality
    from .model.generator import generate as gen

    if model.cfg.steps_per_beat != 4:
        raise ImproviserError("--originality compares 16th-note models with the Bach chorales")
    typer.echo("generating and comparing with the Bach chorales...", err=True)
    train_p, valid_p = split(load_bach_chorales())
    n_steps = math.ceil(seconds * DEFAULT_BPM / 60 * model.cfg.steps_per_beat)
    generated = [gen(model, n_steps, temperature, 1, seed) for seed in range(n_pieces)]
    r = originality(generated, [p.grid for p in train_p], [p.grid for p in valid_p])
    typer.echo(f"longest verbatim copy of the training chorales (any transposition): {r['longest_copy_steps']} steps"
               f" = {r['longest_copy_bars']:.2f} bars")
    typer.echo(f"1-bar windows copied verbatim: {r['bars_copied']} of {r['bars_total']}")
    typer.echo(f"profile overlap with {len(valid_p)} held-out chorales (1 = identical):")
    for name, value in r["profile_overlap"].items():
        typer.echo(f"  {name}: {value:.3f}")
    for name, (ours, ref) in r["profiles"].items():
        typer.echo(format_profile(name, ours, ref))


# ---- live: record, play, ports (issue 3) ------------------------------------------------------------

API_OPT = typer.Option(None, "--api", help="MIDI system: alsa, jack, coremidi or winmm (default: the platform's own).")
OUTPUT_OPT = typer.Option(None, "--output",
                          help="Play into the existing MIDI port whose name contains NAME "
                               "(default: open a virtual port named 'improviser').")


def _warn(text: str) -> None:
    typer.echo(f"warning: {text}", err=True)


# ---- listening (issue 4): --input, --mode, --respond-after, --cc, --sync ------------------------------

INPUT_OPT = typer.Option(None, "--input", help="Listen to the MIDI input port whose name contains NAME, or "
                         "'virtual' to open an input port named 'improviser' (a keyboard or DAW plays into it).")
MODE_OPT = typer.Option(None, "--mode", help="With --input: respond (the default: it listens while you play and "
                        "answers when you pause) or accompany (it plays along and hears you as part of the music).")
RESPOND_AFTER_OPT = typer.Option(2.0, "--respond-after", help="Respond mode: beats of silence before it answers.")
CC_OPT = typer.Option(None, "--cc", help="Move a live control to another controller number, NAME=NUMBER "
                      "(repeatable). Defaults: temperature=74, stability=71, tempo=76, panic=119.")
SYNC_OPT = typer.Option("internal", "--sync", help="internal: its own clock at --bpm; clock: follow the 24 ppqn "
                        "MIDI clock (start/stop/continue) arriving on --input.")
JACK_BACKEND_OPT = typer.Option(None, "--jack-backend", help="With --api jack: jack (the default: each message "
                                "written on its own frame, handed over one period ahead) or rtmidi (python-rtmidi's "
                                "backend, which starts everything at the next period).")

THRU_OPT = typer.Option(False, "--thru", help="Forward every note and control you play on --input to the output "
                        "at once, on your own channel, so you hear yourself through the same synth.")


# ---- hearing it (issue 12): --synth, --soundfont, --audio-driver; render ------------------------------

SYNTH_OPT = typer.Option(False, "--synth", help="Hear it here: its notes (and yours, with --thru) through the "
                         "built-in General MIDI synth (FluidSynth) on the default audio output, or with --api jack "
                         "on the JACK audio ports improviser-synth:left and :right (connect them with jack_connect). "
                         "Needs pyfluidsynth (the project's 'synth' extra) and the FluidSynth library (apt "
                         "fluidsynth, brew fluid-synth); `improviser doctor` says what is missing.")
SOUNDFONT_OPT = typer.Option(None, "--soundfont", help="The General MIDI SoundFont (.sf2, .sf3) to play with "
                             "(default: the system's, e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2; "
                             "`improviser doctor` says which it finds).")
AUDIO_DRIVER_OPT = typer.Option(None, "--audio-driver", help="FluidSynth's audio driver for --synth: pulseaudio, "
                                "pipewire, alsa, jack, coreaudio, wasapi, dsound, ... (default: the platform's own "
                                "output, tried in turn; jack with --api jack).")


@dataclass
class SoundOptions:
    """How the live commands sound here: --synth (FluidSynth), its SoundFont and audio driver."""

    synth: bool = False
    soundfont: Optional[Path] = None
    audio_driver: Optional[str] = None
    render: bool = False  # play --render (a WAV beside each session file): set by play, not an option here

    def check(self) -> SoundOptions:
        """FluidSynth and a SoundFont are there if they are needed (one line naming the install if not)."""
        if not self.synth:
            if self.audio_driver is not None or (self.soundfont is not None and not self.render):
                raise ImproviserError("--soundfont and --audio-driver are for the synth: add --synth")
            if not self.render:
                return self
        self.soundfont_file()
        return self

    def soundfont_file(self) -> Path:
        from .sound.synth import find_soundfont, fluidsynth_module

        fluidsynth_module()
        return find_soundfont(self.soundfont)

    def open_synth(self, api: Optional[str]):
        """The live synth, a sink for the engine (None without --synth); says where it sounds."""
        if not self.synth:
            return None
        from .sound.synth import JACK_CLIENT, LiveSynth

        synth = LiveSynth(self.soundfont_file(), api=api, audio_driver=self.audio_driver)
        where = (f"on JACK audio ports {JACK_CLIENT}:left and :right (not connected: jack_connect them, e.g. to "
                 "system:playback_1 and _2)" if synth.driver == "jack" else f"through {synth.driver}")
        typer.echo(f"sounding {where} with FluidSynth and {synth.soundfont}", err=True)
        return synth


SOUND_PARAMS = {
    "synth": (bool, SYNTH_OPT),
    "soundfont": (Optional[Path], SOUNDFONT_OPT),
    "audio_driver": (Optional[str], AUDIO_DRIVER_OPT),
}


# ---- a face (issue 21): --web, --web-port, --web-host, --web-token, --osc, --osc-send ---------------------------

@dataclass
class FaceOptions:
    """The web page and OSC of the live commands. Checked in the process the user starts (a port in use, a host
    unknown: one line before any port opens); served by the worker (``_live``), never by the real-time side."""

    web: bool = False
    web_port: int = 8765
    web_host: str = "127.0.0.1"
    web_token: Optional[str] = None
    osc: Optional[int] = None
    osc_send: Optional[str] = None

    @property
    def on(self) -> bool:
        return self.web or self.osc is not None or self.osc_send is not None

    def check(self) -> FaceOptions:
        if not self.web and (self.web_token is not None or self.web_port != 8765 or self.web_host != "127.0.0.1"):
            if self.osc is None:
                raise ImproviserError("--web-port, --web-host and --web-token are for the web page: add --web")
        if self.web:
            from .live.web import check_web

            check_web(self.web_host, self.web_port, self.web_token)
        if self.osc is not None:
            from .live.osc import udp_socket_free

            udp_socket_free(self.web_host, self.osc)
        if self.osc_send is not None:
            from .live.osc import parse_target

            parse_target(self.osc_send)
        return self

    @contextlib.contextmanager
    def opened(self, listener, listening, generator, bpm: Optional[float]):
        """The face (``live.face.Face``) with its web server and OSC running on their own threads (None when
        neither is asked for); closed after the block. bpm: None when following a DAW's clock."""
        if not self.on:
            yield None
            return
        from .live.face import Face

        face = Face(listener, listening, generator, bpm)
        parts = []
        try:
            if self.web:
                from .live.web import WebFace

                web = WebFace(face, self.web_host, self.web_port, self.web_token)
                parts.append(web)
            if self.osc is not None or self.osc_send is not None:
                from .live.osc import OscFace, parse_target

                target = parse_target(self.osc_send) if self.osc_send is not None else None
                parts.append(OscFace(face, self.osc, self.web_host, target))
            for part in parts:
                part.start()
            face.start()
            for part in parts:
                if hasattr(part, "url"):
                    typer.echo(f"the web page: {part.url}", err=True)
                elif part.server is not None:
                    typer.echo(f"OSC: listening on udp {self.web_host}:{part.port} (/improviser/tempo, ...)"
                               + (f"; sending to {self.osc_send}" if part.client else ""), err=True)
                else:
                    typer.echo(f"OSC: sending its notes and state to {self.osc_send}", err=True)
            yield face
        finally:
            face.close()
            for part in parts:
                part.close()


FACE_PARAMS = {
    "web": (bool, typer.Option(False, "--web", help="Serve a live web page: a piano roll of what it plays and "
                               "hears, its key and tempo, its controls and a keyboard, this run's sessions.")),
    "web_port": (int, typer.Option(8765, "--web-port", help="The web page's port.")),
    "web_host": (str, typer.Option("127.0.0.1", "--web-host", help="Where the web page (and OSC) listen: "
                                   "127.0.0.1 is this computer only; another address (0.0.0.0: every network) "
                                   "needs a token, made at start and printed in the page's address.")),
    "web_token": (Optional[str], typer.Option(None, "--web-token", help="The web page's token (default: made at "
                                              "start when --web-host is not this computer).")),
    "osc": (Optional[int], typer.Option(None, "--osc", help="Take Open Sound Control on this UDP port: "
                                        "/improviser/tempo f, /temperature f, /stability i, /key s, /key_hold f, "
                                        "/mode s, /panic.")),
    "osc_send": (Optional[str], typer.Option(None, "--osc-send", help="Send /improviser/note (pitch, velocity, "
                                             "channel) for every note it plays and /improviser/state when a "
                                             "setting changes to HOST:PORT over OSC.")),
}


@dataclass
class LiveOptions:
    """The options of the live commands (record, play): where to play and listen, and the music's."""

    api: Optional[str]
    output: Optional[str]
    input_name: Optional[str]
    mode: Optional[str]
    respond_after: float
    cc: Optional[list[str]]
    sync: str
    thru: bool
    jack_backend: Optional[str]
    music: MusicOptions
    sound: SoundOptions = field(default_factory=SoundOptions)
    face: FaceOptions = field(default_factory=FaceOptions)

    def check(self) -> LiveOptions:
        """Bad options, one line each, before any port opens."""
        from .live.listen import check_mode, parse_cc_map
        from .ports.midi import jack_backend_of

        self.music.check(auto=True)
        jack_backend_of(self.api, self.jack_backend)
        self.sound.check()
        if self.sync not in ("internal", "clock"):
            raise ImproviserError(f"unknown --sync {self.sync!r}; choose internal or clock")
        self.face.check()
        if self.music.tempo_auto and self.sync == "clock":
            raise ImproviserError("--bpm auto takes the tempo from what you play, --sync clock from a DAW's clock: "
                                  "choose one")
        if self.music.tempo_auto and self.input_name is None and not self.face.on:
            raise ImproviserError("--bpm auto takes the tempo from what you play: add --input NAME or --input virtual")
        if self.input_name is None:
            if self.cc or self.sync == "clock" or self.thru or (self.mode is not None and not self.face.on):
                raise ImproviserError("--mode, --cc, --thru and --sync clock need a MIDI input: add --input NAME "
                                      "or --input virtual")
            if self.mode is not None:
                check_mode(self.mode)
            return self
        check_mode(self.mode or "respond")
        if not (0.25 <= self.respond_after <= 64) or math.isnan(self.respond_after):
            raise ImproviserError(f"--respond-after must be 0.25..64 beats (got {self.respond_after})")
        parse_cc_map(self.cc)
        return self


LIVE_PARAMS = {
    "api": (Optional[str], API_OPT),
    "output": (Optional[str], OUTPUT_OPT),
    "input_name": (Optional[str], INPUT_OPT),
    "mode": (Optional[str], MODE_OPT),
    "respond_after": (float, RESPOND_AFTER_OPT),
    "cc": (Optional[list[str]], CC_OPT),
    "sync": (str, SYNC_OPT),
    "thru": (bool, THRU_OPT),
    "jack_backend": (Optional[str], JACK_BACKEND_OPT),
}
live_options = with_options("live", LiveOptions, LIVE_PARAMS, nested={"music": (MusicOptions, MUSIC_PARAMS),
                                                                      "sound": (SoundOptions, SOUND_PARAMS),
                                                                      "face": (FaceOptions, FACE_PARAMS)})


def _listening(api: Optional[str], opts: LiveOptions, primed: bool, clock=None):
    """(listening part, timing source or None, listener) for record/play: listening on --input, or Nones."""
    from .live.listen import InputListener, Listening, parse_cc_map, start_listening

    if opts.check().input_name is None:
        if not opts.face.on:
            return None, None, None
        # The web page or OSC and no MIDI input: a listener without a port, which their keyboard and controls
        # reach; it plays alone (accompany) until told otherwise.
        listener = InputListener(panic_cc=None)
        return Listening(listener, mode=opts.mode or "accompany", primed=primed,
                         tempo=_player_tempo(opts.music)), None, listener
    mode = opts.mode or "respond"
    cc_map = parse_cc_map(opts.cc)
    follower = timing = None
    if opts.sync == "clock":
        from .live.sync import ClockFollower, MidiClockSync

        follower = ClockFollower()
        timing = MidiClockSync(follower)
    listener = InputListener(on_clock=follower.handle if follower else None, panic_cc=cc_map["panic"])
    name = start_listening(listener, api, opts.input_name, opts.jack_backend)
    tempo = _player_tempo(opts.music)
    typer.echo(f"listening on MIDI port {name!r} ({mode}"
               f"{', following its MIDI clock' if follower else ''}"
               f"{', taking the tempo from your playing' if tempo else ''})", err=True)
    if follower is not None:
        typer.echo(f"the tempo is the DAW's: the tempo control (CC {cc_map['tempo']}) and --bpm are not used "
                   "while following its clock", err=True)
    listening = Listening(listener, mode=mode, respond_after=opts.respond_after, cc=cc_map, primed=primed,
                          tempo=tempo)
    return listening, timing, listener


def _player_tempo(music: MusicOptions):
    """--bpm auto: the listening part's ear for the player's tempo (``live.tempo``), which says each tempo it
    takes in one line; else None."""
    if not music.tempo_auto:
        return None
    from .live.tempo import PlayerTempo

    return PlayerTempo(meter=music.time_signature() if music.meter else None,
                       say=lambda line: typer.echo(line, err=True))


def _live_generator(music: MusicOptions, meter=None, bar_start: int = 0):
    """The streaming generator the live commands play, having listened to the primer if any. Made before any
    port is opened: loading stalls Python for a while, and so does the one garbage collection after it (what
    is loaded is then frozen out of later ones: ``realtime_process``), and JACK's clock is upset by a client
    whose process callback waits that long."""
    import gc

    from .model.generator import StreamingGenerator, parse_velocity_range

    model, _ = load_model(music.checkpoint)
    music.check_model(model, music.checkpoint)
    gen = StreamingGenerator(model, music.temperature, music.stability, music.seed, key=music.key,
                             key_hold=music.key_hold, velocity=parse_velocity_range(music.velocity),
                             meter=music.time_signature(meter), bar_start=0 if music.meter else bar_start)
    primer = load_prime(music.prime, model.cfg.steps_per_beat)
    if primer is not None:
        gen.prime(primer)
    gc.collect()
    return gen


@dataclass
class LiveParts:
    """What record and play are given: the generator, and the engine's listening part and timing source."""

    generator: object
    listening: object = None
    timing: object = None
    engine: dict = field(default_factory=dict)  # more LiveEngine options: channel, program, thru, sinks
    face: object = None  # the web page and OSC (``live.face.Face``), told of each session file written


@contextlib.contextmanager
def _live(gen, port, api: Optional[str], opts: LiveOptions):
    """The engine parts for record/play around ``gen`` (``_live_generator``), in a process set up for playing
    live; afterwards closes the input and ``port`` (which may be None) and, if the run ended normally, says
    what was heard."""
    from .live.engine import realtime_process

    listener = synth = None
    try:
        listening, timing, listener = _listening(api, opts, opts.music.prime is not None)
        engine = {"channel": opts.music.midi_channel(opts.thru), "program": opts.music.gm_program(),
                  "thru": opts.thru, "voices": opts.music.voices}
        synth = opts.sound.open_synth(api)
        if synth is not None:
            engine["sinks"] = [synth]  # the same messages as the port, at the same moment
        bpm = opts.music.bpm if opts.sync == "internal" else None
        with opts.face.opened(listener, listening, gen, bpm) as face, realtime_process():
            if face is not None:
                engine["sinks"] = [*engine.get("sinks", []), face]
            yield LiveParts(gen, listening, timing, engine, face)
    finally:
        if listener is not None:
            listener.close()
        if synth is not None:
            synth.close()  # lets the last notes ring out
        if port is not None:
            port.close()
    if listener is not None:
        from .live.listen import listening_summary

        typer.echo(listening_summary(listener), err=True)
        if listening.tempo_ignored:
            whose = "your playing's (--bpm auto)" if listening.tempo is not None else "the DAW's clock"
            typer.echo(f"ignored {listening.tempo_ignored} tempo controls (the tempo is {whose})", err=True)


def _open_output(api: Optional[str], output: Optional[str], jack_backend: Optional[str] = None):
    """A virtual output port, or (--output NAME) a connection that comes back when that program restarts."""
    from .ports import remote
    from .ports.midi import open_output
    from .ports.reconnect import open_reconnecting_output

    if output is None or remote.link() is not None:  # (the real-time process keeps its connection itself)
        port = open_output(api, None, jack_backend)
    else:
        port = open_reconnecting_output(api, output, warn=_warn, info=lambda text: typer.echo(text, err=True),
                                        jack_backend=jack_backend)
    if port.lead and port.period:
        typer.echo(f"JACK backend: a real-time process writes each message on its own frame, handed over "
                   f"{port.lead * 1e3:.1f} ms ahead (one period, {port.period * 1e3:.2f} ms, plus a margin)", err=True)
    elif port.lead:
        typer.echo(f"a real-time process sends each message at its time, handed over {port.lead * 1e3:.1f} ms ahead",
                   err=True)
    elif (api or "").lower() == "jack" and jack_backend is None:
        _warn("JACK-Client is not installed, so python-rtmidi's JACK backend plays (every message at the start "
              "of a period); pip install 'improviser[jack]' to place each on its own frame")
    return port


def _timing_line(result) -> str:
    s = result.stats
    line = f"{s.played} steps played, {s.late_steps} late, worst send delay {s.max_send_delay * 1e3:.2f} ms"
    if result.port_late is not None:
        line += f"; {result.port_late} messages written after their time"
    if result.xruns is not None:
        line += f"; {result.xruns} JACK xruns"
    return line


LIVE_COMMANDS = {"record": lambda a: _record(**a), "play": lambda a: _play(**a)}


def _in_two_processes(command: str, live: LiveOptions, **arguments) -> None:
    """Play in two processes (``live.split``): this one opens the ports and keeps their time, a worker runs
    ``command``; exits with the worker's code. Returns at once in the worker, on Windows, and where there is
    no MIDI system (the command then says so, or writes its file without playing)."""
    from .ports import remote
    from .ports.midi import MidiSystemMissing, jack_backend_of

    if remote.link() is not None or sys.platform.startswith("win"):  # (Windows: no descriptors to hand down)
        return
    import gc

    from .live.split import Worker, supervise
    from .ports.realtime import RealtimeSide, realtime_settings
    from .ports.realtime_rtmidi import RtmidiSide

    backend = jack_backend_of(live.api, live.jack_backend)

    gc.collect()  # (and frozen below: see there)
    info = lambda text: typer.echo(text, err=True)  # noqa: E731
    try:
        if backend == "jack":
            side = RealtimeSide(live.output, live.input_name, live.thru, warn=_warn, info=info)
        else:
            side = RtmidiSide(live.api, live.output, live.input_name, live.thru, warn=_warn, info=info,
                              jack_backend=backend)
    except MidiSystemMissing:
        return  # the command itself says what is missing (or writes its file without playing)
    # Everything this process holds now is never collected again: a full collection once the ports are open
    # would hold the GIL for tens of ms, and JACK would take the process callback out of time (an xrun).
    gc.freeze()
    realtime_settings()
    try:
        worker = Worker()
    except BaseException:
        side.close()
        raise
    code = supervise(side, worker, command, {**arguments, "live": live},
                     say=lambda text: typer.echo(f"error: {text}", err=True))
    raise typer.Exit(code)


@app.command("worker", hidden=True)
@cli_errors
def worker(fd: int = typer.Argument(..., help="The socket to the real-time process.")) -> None:
    """The worker process of record and play on JACK (started by them, not by hand): runs the model."""
    from .live.split import worker_arguments

    hello = worker_arguments(fd)
    LIVE_COMMANDS[hello["command"]](hello["arguments"])


ACCOMPANY_PARAMS = {**MUSIC_PARAMS, "bpm": (Optional[str], typer.Option(
    None, "--bpm", help="Tempo in beats per minute, 20..400 (default: the melody file's own); auto: the melody "
    "plays at its own tempo and the improviser, starting at 100, takes the tempo, beat and meter from its notes "
    "as from a player's (--meter gives the meter)."))}


@app.command()
@cli_errors
@with_options("music", MusicOptions, ACCOMPANY_PARAMS)
def accompany(
    melody: Path = typer.Argument(..., help="A MIDI file holding the melody (or any part) you would play."),
    out: Path = typer.Argument(..., help="MIDI file to write: the melody on a track named 'player', and its own."),
    mode: str = typer.Option("accompany", "--mode", help="accompany: it plays along with the melody; respond: it "
                             "listens, and answers when the melody pauses or ends."),
    respond_after: float = RESPOND_AFTER_OPT,
    extra_beats: Optional[float] = typer.Option(None, "--extra-beats", help="Beats it plays on after the melody "
                                                "(default: 4 accompanying, 16 responding)."),
    music: MusicOptions = None,
) -> None:
    """Play along with a melody file exactly as it would with a player live (no MIDI system needed).

    The same engine as record --input, on a virtual clock: a harmoniser for songwriters, and a
    reproducible live session (--seed).

    Example: improviser accompany tune.mid harmonised.mid --seed 1 --key "G major"
    """
    from .live.engine import accompany as run_accompany
    from .live.listen import check_mode
    from .music.encoding import read_midi

    music.check(auto=True)
    check_mode(mode)
    if not (0.25 <= respond_after <= 64) or math.isnan(respond_after):
        raise ImproviserError(f"--respond-after must be 0.25..64 beats (got {respond_after})")
    extra = extra_beats if extra_beats is not None else (4.0 if mode == "accompany" else 16.0)
    if not (0 <= extra <= 256) or math.isnan(extra):
        raise ImproviserError(f"--extra-beats must be 0..256 (got {extra})")
    if music.prime is not None:
        raise ImproviserError("accompany hears the melody itself; leave out --prime")
    check_output(out)
    model, _ = load_model(music.checkpoint)
    tune = read_midi(melody, model.cfg.steps_per_beat)
    auto = music.tempo_auto
    bpm = tune.bpm if auto or music.bpm is None else music.bpm
    check_bpm(bpm)
    # (--bpm auto: the improviser knows of the melody only what it hears, as of a player: no meter but --meter's)
    gen = _live_generator(music, None, 0) if auto else _live_generator(music, tune.time_signature, tune.bar_start)
    t0 = time.perf_counter()
    tempo = _player_tempo(music)
    session = run_accompany(gen, tune, bpm, mode, respond_after, extra, channel=music.midi_channel(),
                            program=music.gm_program(), voices=music.voices, tempo=tempo,
                            start_bpm=DEFAULT_BPM if auto else None)
    session.write(out, bpm, tune.tempo_beats() if auto or music.bpm is None else ())
    typer.echo(f"wrote {out}: {session.length:.1f} s at {bpm:g} bpm, {len(session.notes('player'))} melody notes, "
               f"{len(session.notes())} of its own ({mode}) in {time.perf_counter() - t0:.2f} s", err=True)


HARMONISE_PARAMS = {name: ACCOMPANY_PARAMS[name] for name in ("bpm", "seed", "checkpoint", "key", "program", "voices")}
HARMONISE_PARAMS["temperature"] = (float, typer.Option(
    0.5, "--temperature", "-t", help="0: the likeliest harmonisation; higher tries further from it (0..5)."))
HARMONISE_PARAMS["channel"] = (Optional[int], typer.Option(
    None, "--channel", help="MIDI channel for its parts, 1..16 (default 2; the tune keeps its own, 1)."))
MAX_HARMONISE_SECONDS = 20 * 60.0


@app.command()
@cli_errors
@with_options("music", MusicOptions, HARMONISE_PARAMS)
def harmonise(
    melody: Path = typer.Argument(..., help="A MIDI file holding the melody (its top line is taken)."),
    out: Path = typer.Argument(..., help="MIDI file to write: the melody on a track named 'player', and its parts."),
    music: MusicOptions = None,
) -> None:
    """Write alto, tenor and bass beneath a melody, as in a Bach chorale: offline, the whole tune known.

    A chord on every beat of the melody's own meter, under its note, with a cadence where its phrases
    end; the model judges each chord against what came before, rules keep the voices in order. The
    melody is kept note for note, with its meter, pickup and tempo. The same seed gives the same file.

    Example: improviser harmonise tune.mid chorale.mid --seed 1 --voices-on-channels
    """
    from .model.generator import parse_key
    from .model.harmonise import harmonise as run_harmonise
    from .model.harmonise import part_tracks
    from .music.analysis import key_name
    from .music.encoding import grid_to_timed_notes, read_midi, write_midi

    music.check()
    check_output(out)
    model, _ = load_model(music.checkpoint)
    tune = read_midi(melody, model.cfg.steps_per_beat)
    seconds = tune.seconds()  # through its tempo changes
    if seconds > MAX_HARMONISE_SECONDS:
        raise ImproviserError(f"{melody}: lasts {seconds / 60:.0f} minutes; harmonise takes up to "
                              f"{MAX_HARMONISE_SECONDS / 60:.0f}: cut it into parts")
    bpm = check_bpm(music.bpm or tune.bpm)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(1)  # small batches: one thread is faster than two that wait for each other
    h = run_harmonise(model, tune, music.temperature, music.seed, parse_key(music.key))
    if h.polyphonic:
        typer.echo(f"{melody} has more than one note at a time: harmonised its top line", err=True)
    channel = music.midi_channel(thru=True)
    tracks = part_tracks(h, bpm, channel, music.voices)
    tracks["player"] = grid_to_timed_notes(h.tune, bpm, 0)
    program = music.gm_program()
    programs = None
    if program is not None:
        programs = {name: sorted({(n.channel, program) for n in notes}) or [(channel, program)]
                    for name, notes in tracks.items()}
    step_s = 60.0 / bpm / tune.steps_per_beat
    bar_line = ((tune.steps_per_bar - tune.bar_start) % tune.steps_per_bar) * step_s
    write_midi(out, tracks, bpm, length=len(tune) * step_s, programs=programs, meter=tune.time_signature,
               bar_line=bar_line, tempo_map=tune.tempo_beats() if music.bpm is None else ())
    parts = sum(len(n) for name, n in tracks.items() if name != "player")
    typer.echo(f"wrote {out}: {len(tracks['player'])} melody notes in {tune.time_signature} at {bpm:g} bpm, "
               f"{parts} notes in three parts ({len(h.chords)} beats, {key_name(*h.key)}) "
               f"in {time.perf_counter() - t0:.2f} s", err=True)


@app.command()
@cli_errors
@live_options
def record(
    out: Path = typer.Argument(..., help="MIDI file to write."),
    seconds: float = typer.Option(30.0, "--seconds", help="How long to play, in seconds."),
    live: LiveOptions = None,
) -> None:
    """Play SECONDS live, at tempo, into a MIDI port and save exactly what was played to a MIDI file.

    Without --output it opens a virtual port named 'improviser' for a synth or DAW to listen to.
    Ctrl-C stops early and keeps what was played. With no MIDI system at all it warns and
    writes the file without playing it (as fast as the model goes).

    Example: improviser record out.mid --seconds 30 --bpm 90 --api jack --output synth
             improviser record out.mid --synth      (hear it on this computer's speakers)
    """
    check_seconds(seconds)
    live.check()
    check_output(out)
    _in_two_processes("record", live, out=out, seconds=seconds)
    _record(out, seconds, live)


def _record(out: Path, seconds: float, live: LiveOptions) -> None:
    """record's work (in the worker process on the JACK backend)."""
    from .live.clock import MonotonicClock
    from .live.engine import record as run_record
    from .ports.midi import MidiSystemMissing

    gen = _live_generator(live.music)
    try:
        port = _open_output(live.api, live.output, live.jack_backend)
    except MidiSystemMissing as e:
        if live.input_name is not None or live.jack_backend is not None:
            raise  # nothing to listen on, or the JACK backend asked for: say what to install
        _warn(f"{e} -- " + ("playing through the synth only" if live.sound.synth else
                            f"writing {out} without playing it"))
        port = None
    bpm = live.music.bpm
    # With the synth and no port it still plays in time (without either, a virtual clock: as fast as it goes).
    clock = MonotonicClock() if port is None and live.sound.synth else None
    with _live(gen, port, live.api, live) as parts:
        if port is not None:
            typer.echo(f"playing into MIDI port {port.name!r} for {seconds:g} s (Ctrl-C stops)", err=True)
        result = run_record(parts.generator, out, seconds, bpm, port, clock=clock, warn=_warn,
                            listening=parts.listening, timing=parts.timing, **parts.engine)
        if parts.face is not None:
            parts.face.session_written(out, result.sessions[-1])
    session = result.sessions[-1]
    stopped = " (stopped early)" if result.interrupted else ""
    bpm = result.file_bpm or bpm
    typer.echo(f"wrote {out}: {session.length:.1f} s{stopped}, {len(session.notes())} notes at {bpm:.4g} bpm; "
               f"{_timing_line(result)}", err=True)


@app.command()
@cli_errors
@live_options
def play(
    sessions: Path = typer.Option(Path("sessions"), "--sessions", help="Folder for the session files."),
    plot_sessions: bool = typer.Option(False, "--plot", help="Draw a piano roll (PNG) beside each session file."),
    session_seconds: float = typer.Option(30.0, "--session-seconds", help="Length of each session file."),
    render_sessions: bool = typer.Option(False, "--render", help="Write a WAV beside each session file, rendered "
                                         "by the built-in synth as `improviser render` does (--soundfont)."),
    live: LiveOptions = None,
) -> None:
    """Improvise live into a MIDI port until Ctrl-C or SIGTERM, saving every session to a MIDI file.

    Sessions follow each other without a break; files are named by start time; the partial last one is kept.

    Example: improviser play --sessions ~/improvised --session-seconds 30 --api jack
             improviser play --synth --render      (hear it here, and keep each session as a WAV too)
    """
    check_seconds(session_seconds, "--session-seconds")
    live.sound.render = render_sessions
    live.check()
    if sessions.exists() and not sessions.is_dir():
        raise ImproviserError(f"--sessions {sessions} is a file; give a folder")
    try:
        sessions.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImproviserError(f"cannot create the sessions folder {sessions}: {e.strerror}") from None
    check_output(sessions / "session.mid")
    _in_two_processes("play", live, sessions=sessions, plot_sessions=plot_sessions,
                      session_seconds=session_seconds, render_sessions=render_sessions)
    _play(sessions, plot_sessions, session_seconds, render_sessions, live)


def _play(sessions: Path, plot_sessions: bool, session_seconds: float, render_sessions: bool,
          live: LiveOptions) -> None:
    """play's work (in the worker process on the JACK backend)."""
    from .live.engine import play as run_play

    gen = _live_generator(live.music)
    port = _open_output(live.api, live.output, live.jack_backend)  # no MIDI system: a PortError saying what to install

    face = None  # the web page's, once it runs

    def written(path: Path, session) -> None:
        typer.echo(f"wrote {path} ({session.length:.1f} s, {len(session.notes())} notes)", err=True)
        if face is not None:
            face.session_written(path, session)
        if plot_sessions and (session.notes() or session.notes("player")):
            from .plot import plot_session

            try:  # a picture that cannot be drawn must never stop the music
                plot_session(path, path.with_suffix(".png"))
            except Exception as e:  # noqa: BLE001
                _warn(f"could not draw {path.with_suffix('.png')}: {e}")
        if render_sessions and (session.notes() or session.notes("player")):
            from .sound.render import render_midi

            try:  # nor a WAV that cannot be written
                render_midi(path, path.with_suffix(".wav"), live.sound.soundfont_file())
            except Exception as e:  # noqa: BLE001
                _warn(f"could not render {path.with_suffix('.wav')}: {e}")

    with _live(gen, port, live.api, live) as parts:
        face = parts.face
        typer.echo(f"playing into MIDI port {port.name!r}, a session file every {session_seconds:g} s "
                   f"in {sessions}/ (Ctrl-C or SIGTERM stops)", err=True)
        result = run_play(parts.generator, sessions, session_seconds, live.music.bpm, port, warn=_warn,
                          on_written=written, listening=parts.listening, timing=parts.timing, **parts.engine)
    typer.echo(f"stopped after {result.n_written} sessions; {_timing_line(result)}", err=True)


@app.command()
@cli_errors
def ports(api: Optional[str] = API_OPT) -> None:
    """List the MIDI ports of a MIDI system: outputs to play into and inputs to listen to.

    Example: improviser ports --api jack
    """
    from .ports.midi import list_ports

    found = list_ports(api)
    typer.echo(f"MIDI outputs ({found.api}; play into one with --output NAME):")
    for name in found.outputs or ["(none)"]:
        typer.echo(f"  {name}")
    typer.echo(f"MIDI inputs ({found.api}; ports that send MIDI):")
    for name in found.inputs or ["(none)"]:
        typer.echo(f"  {name}")


@app.command()
@cli_errors
def plot(
    midi: Path = typer.Argument(..., help="A MIDI file (e.g. a session file)."),
    png: Path = typer.Argument(..., help="The PNG picture to write."),
) -> None:
    """Draw a piano roll of a MIDI file: the improviser's notes and the player's in two colours, bars marked.

    Example: improviser plot sessions/session-0001.mid session.png
    """
    from .plot import plot_session

    check_output(png)
    plot_session(midi, png)
    typer.echo(f"wrote {png}", err=True)


@app.command()
@cli_errors
def render(
    midi: Path = typer.Argument(..., help="A MIDI file: a session file, a generated or accompanied one, any other."),
    wav: Path = typer.Argument(..., help="The WAV file to write (16-bit stereo)."),
    program: Optional[int] = typer.Option(None, "--program", help="General MIDI program, 0..127, for every channel "
                                          "but the drums, in place of the file's own program changes. Default: the "
                                          "file's own, and 48 (String Ensemble 1) on channels that have none."),
    soundfont: Optional[Path] = SOUNDFONT_OPT,
    sample_rate: int = typer.Option(44100, "--sample-rate", help="Sample rate of the WAV in Hz, 8000..96000."),
) -> None:
    """Render a MIDI file to a WAV through the built-in General MIDI synth (FluidSynth), offline.

    The synth is driven frame by frame, not played in real time, so every note starts at its own time in
    the file. The audio is normalised to a peak of -1 dBFS (never clipped) and keeps the release after the
    last note, at most 3 s, cut once it is silent.

    Example: improviser render sessions/session-0001.mid session.wav --program 19
    """
    from .sound.render import SAMPLE_RATES, render_midi

    if program is not None and not 0 <= program <= 127:
        raise ImproviserError(f"--program {program}: General MIDI programs are 0..127")
    if not SAMPLE_RATES[0] <= sample_rate <= SAMPLE_RATES[1]:
        raise ImproviserError(f"--sample-rate {sample_rate}: give {SAMPLE_RATES[0]}..{SAMPLE_RATES[1]} Hz")
    font = SoundOptions(soundfont=soundfont, render=True).soundfont_file()
    check_output(wav)
    if wav.exists() and midi.exists() and wav.samefile(midi):
        raise ImproviserError(f"{wav} is the MIDI file itself: give the WAV another name")
    r = render_midi(midi, wav, font, program, sample_rate)
    typer.echo(f"wrote {wav}: {r.seconds:.2f} s ({r.piece_seconds:.2f} s and {r.tail_seconds:.2f} s of release) at "
               f"{r.sample_rate} Hz, {r.notes} notes, peak {r.peak_dbfs:.1f} dBFS, RMS {r.rms_dbfs:.1f} dBFS, "
               f"rendered in {r.render_seconds:.2f} s ({r.seconds / r.render_seconds:.0f}x real time) "
               f"with {font.name}", err=True)


@app.command()
@cli_errors
def doctor() -> None:
    """Say which MIDI systems work here (ALSA, JACK, CoreMIDI, Windows MIDI) and how to fix each missing one;
    and whether the built-in synth (--synth, render) has FluidSynth, a SoundFont and an audio output.

    Example: improviser doctor
    """
    from .doctor import check_all, check_sound, report

    checks = check_all()
    typer.echo(report(checks, check_sound()))
    if not any(c.ok for c in checks):
        raise typer.Exit(1)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except ImproviserError as e:  # raised outside a command (should not happen, but never show a trace)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
