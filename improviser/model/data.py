"""Training data: MIDI files or the music21 Bach chorales -> cached step grids -> train/valid split."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError, MidiFileError
from ..music.cache import cache_dir
from ..music.encoding import STEPS_PER_BEAT, Grid, notes_to_grid, read_midi

MIDI_SUFFIXES = {".mid", ".midi", ".smf", ".kar"}
CACHE_VERSION = 1


class Piece:
    """A named piece. Read from files it is kept compact (its notes) and put on the grid when asked,
    so a folder of thousands of pieces fits in memory and training builds grids a chunk at a time."""

    def __init__(self, name: str, grid: Grid | None = None, arrays: dict | None = None):
        if (grid is None) == (arrays is None):
            raise ValueError("give a piece a grid or its compact arrays")
        self.name = name
        self._grid = grid
        self._arrays = arrays

    @property
    def grid(self) -> Grid:
        return self._grid if self._grid is not None else _arrays_to_grid(self._arrays)

    @property
    def voices(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """(onset, sound) bool (T, 128) per part, highest part first; None if the piece does not keep its parts."""
        if not self.has_voices:
            return None
        notes, n = self._arrays["notes"], int(self._arrays["n_steps"])
        out = []
        for v in range(int(notes[:, 4].max()) + 1):
            mine = notes[notes[:, 4] == v]
            out.append(notes_to_grid(mine[:, 0], mine[:, 1], mine[:, 2], n)[:2])
        return out

    @property
    def has_voices(self) -> bool:
        return self._arrays is not None and self._arrays["notes"].shape[1] == 5

    @property
    def n_steps(self) -> int:
        return len(self._grid) if self._grid is not None else int(self._arrays["n_steps"])

    def __repr__(self) -> str:
        return f"Piece({self.name!r}, {self.n_steps} steps)"


def _grid_to_arrays(grid: Grid) -> dict:
    notes = grid.notes()
    return {"notes": notes.astype(np.int32), "n_steps": np.int64(len(grid)),
            "meta": np.array([grid.steps_per_beat, grid.beats_per_bar, grid.bar_start], np.int64),
            "bpm": np.float64(grid.bpm)}


def _arrays_to_grid(a) -> Grid:
    notes = a["notes"]
    spb, bpb, bar_start = (int(v) for v in a["meta"])
    onset, sound, vel = notes_to_grid(notes[:, 0], notes[:, 1], notes[:, 2], int(a["n_steps"]), notes[:, 3])
    return Grid(onset, sound, spb, bpb, float(a["bpm"]), vel, bar_start)


# ---- any MIDI files --------------------------------------------------------------------------------

def find_midi_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively) into MIDI files; keep files as given. Sorted, deterministic."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in MIDI_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def _read_cached(path: Path, steps_per_beat: int) -> Grid:
    """read_midi, cached by the file's content hash so a folder is parsed once."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    cached = cache_dir() / "midi" / f"{digest}-{steps_per_beat}-v{CACHE_VERSION}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as a:
                return _arrays_to_grid(a)
        except Exception:
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    grid = read_midi(path, steps_per_beat)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **_grid_to_arrays(grid))
    os.replace(tmp, cached)
    return grid


def _read_one(args) -> tuple[str, dict | None, str]:
    path, spb = args
    try:
        return str(path), _grid_to_arrays(_read_cached(Path(path), spb)), ""
    except MidiFileError as e:
        return str(path), None, str(e)
    except Exception as e:  # a file that breaks the parser in an unforeseen way is skipped, not fatal
        return str(path), None, f"{path}: unreadable ({type(e).__name__})"


def load_midi_files(paths: Iterable[str | os.PathLike], steps_per_beat: int = STEPS_PER_BEAT,
                    progress: bool = True, workers: int | None = None) -> list[Piece]:
    """Read MIDI files and folders, in parallel, each parsed once and cached by content hash.

    Unreadable files are skipped and counted in one line on stderr.
    """
    from tqdm import tqdm

    files = find_midi_files(paths)
    workers = workers or min(len(files) // 64 + 1, os.cpu_count() or 1)
    jobs = [(f, steps_per_beat) for f in files]
    bar = dict(total=len(files), desc="reading MIDI", unit="file", disable=not progress or len(files) < 2)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_read_one, jobs, chunksize=32), **bar))
    else:
        results = [_read_one(j) for j in tqdm(jobs, **bar)]
    pieces = [Piece(name, arrays=arr) for name, arr, _ in results if arr is not None]
    skipped = [err for _, arr, err in results if arr is None]
    if skipped:
        print(f"skipped {len(skipped)} of {len(files)} files that could not be used (first: {skipped[0]})",
              file=sys.stderr)
    if not pieces:
        raise DataError(f"no usable MIDI notes in {len(files)} file(s); give .mid files or folders holding them")
    return pieces


# ---- the Bach chorales of the music21 corpus -------------------------------------------------------

def _chorale_paths() -> list[Path]:
    try:
        from music21 import corpus
    except ImportError:
        raise DataError("the Bach chorales come from music21: pip install music21") from None
    return sorted(p for p in corpus.getComposer("bach") if Path(p).suffix in {".mxl", ".xml", ".krn"})


def parse_chorale(path: str | os.PathLike, steps_per_beat: int = STEPS_PER_BEAT) -> Grid | None:
    """One music21 score -> Grid (ties joined, pickup bar kept in the bar position). None if unusable."""
    from music21 import converter, meter

    score = converter.parse(str(path)).stripTies()
    notes = []
    for el in score.flatten().notes:
        for p in el.pitches:
            start = float(el.offset) * steps_per_beat
            notes.append((p.midi, round(start), round(start + float(el.duration.quarterLength) * steps_per_beat)))
    if not notes:
        return None
    ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    beats_per_bar = ts.numerator if ts is not None and ts.denominator == 4 and 2 <= ts.numerator <= 8 else 4
    # A pickup (anacrusis) bar is shorter than a full bar: step 0 is then partway into a bar.
    first = next(iter(score.parts[0].getElementsByClass("Measure")), None) if score.parts else None
    pad = float(first.paddingLeft) if first is not None else 0.0
    bar_start = round(pad * steps_per_beat) % (beats_per_bar * steps_per_beat)
    a = np.array(notes)
    onset, sound, vel = notes_to_grid(a[:, 0], a[:, 1], a[:, 2])
    return Grid(onset, sound, steps_per_beat, beats_per_bar, 100.0, None, bar_start)


def parse_chorale_voices(path: str | os.PathLike, steps_per_beat: int = STEPS_PER_BEAT) -> dict | None:
    """One music21 score -> its notes by part: {"notes": int (N, 5) pitch, start, end, velocity, voice; "n_steps";
    "meta": [steps_per_beat, beats_per_bar, bar_start]; "bpm"}. Voice 0 is the highest part (soprano),
    parts ranked by mean pitch. None if unusable."""
    from music21 import converter, meter

    score = converter.parse(str(path)).stripTies()
    parts = []
    for part in score.parts:
        notes = []
        for el in part.flatten().notes:
            start = float(el.offset) * steps_per_beat
            end = start + float(el.duration.quarterLength) * steps_per_beat
            for p in el.pitches:
                notes.append((p.midi, round(start), round(end)))
        if notes:
            parts.append(np.array(notes, np.int64))
    if not parts:
        return None
    parts.sort(key=lambda a: -a[:, 0].mean())
    notes = np.concatenate([np.column_stack([a, np.full(len(a), 80), np.full(len(a), v)]) for v, a in enumerate(parts)])
    ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    beats_per_bar = ts.numerator if ts is not None and ts.denominator == 4 and 2 <= ts.numerator <= 8 else 4
    first = next(iter(score.parts[0].getElementsByClass("Measure")), None) if score.parts else None
    pad = float(first.paddingLeft) if first is not None else 0.0
    bar_start = round(pad * steps_per_beat) % (beats_per_bar * steps_per_beat)
    return {"notes": notes.astype(np.int32), "n_steps": np.int64(max(1, int(notes[:, 2].max()))),
            "meta": np.array([steps_per_beat, beats_per_bar, bar_start], np.int64), "bpm": np.float64(100.0)}


def _parse_voices_one(args) -> tuple[str, dict | None]:
    path, spb = args
    try:
        return str(path), parse_chorale_voices(path, spb)
    except Exception:
        return str(path), None


def _parse_one(args) -> tuple[str, dict | None]:
    path, spb = args
    try:
        g = parse_chorale(path, spb)
    except Exception:
        return str(path), None
    return str(path), None if g is None else _grid_to_arrays(g)


def load_bach_chorales(steps_per_beat: int = STEPS_PER_BEAT, progress: bool = True,
                       limit: int | None = None, voices: bool = False) -> list[Piece]:
    """All the Bach chorales of the music21 corpus, parsed in parallel once and cached.

    voices: keep which part (soprano 0 .. bass 3) plays each note (``Piece.voices``), for
    training a listening model, where one part is the player's.
    """
    from tqdm import tqdm

    paths = _chorale_paths()[:limit]
    key = hashlib.sha1("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
    kind = "bach-voices" if voices else "bach-chorales"
    cached = cache_dir() / f"{kind}-{key}-{steps_per_beat}-v{CACHE_VERSION}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as a:
            names = a["names"].tolist()
            by_piece: dict[str, dict] = {}
            for k in a.files:
                if "/" in k:
                    i, field = k.split("/", 1)
                    by_piece.setdefault(i, {})[field] = a[k]
            return [Piece(n, arrays=by_piece[str(i)]) for i, n in enumerate(names)]
    results = []
    with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        jobs = pool.map(_parse_voices_one if voices else _parse_one, [(p, steps_per_beat) for p in paths],
                        chunksize=4)
        for r in tqdm(jobs, total=len(paths), desc="parsing Bach chorales", unit="chorale", disable=not progress):
            results.append(r)
    usable = [(Path(n).stem, arr) for n, arr in results if arr is not None]
    if len(usable) < len(results):
        print(f"skipped {len(results) - len(usable)} of {len(results)} corpus files without notes", file=sys.stderr)
    if not usable:
        raise DataError("no Bach chorale could be parsed from the music21 corpus")
    flat = {"names": np.array([n for n, _ in usable])}
    for i, (_, arr) in enumerate(usable):
        flat.update({f"{i}/{k}": v for k, v in arr.items()})
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **flat)
    os.replace(tmp, cached)
    return [Piece(n, arrays=arr) for n, arr in usable]


def split(pieces: list[Piece], valid_fraction: float = 0.1) -> tuple[list[Piece], list[Piece]]:
    """Deterministic split by piece (by a hash of the name): (train, valid). Both non-empty if 2+ pieces."""
    if len(pieces) < 2:
        raise DataError(f"need at least 2 pieces to hold one out for validation (got {len(pieces)})")
    order = sorted(pieces, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    n_valid = min(len(pieces) - 1, max(1, round(valid_fraction * len(pieces))))
    return order[n_valid:], order[:n_valid]


# ---- the JSB Chorales benchmark file ---------------------------------------------------------------

def load_jsb(path: str | os.PathLike, split_name: str) -> list[Piece]:
    """One split of a JSB Chorales JSON file ({"train"|"valid"|"test": [piece, ...]}, a piece a list of
    frames, a frame a list of sounding MIDI pitches) as Grids, one step per frame.

    The frames carry no onsets: a note starts where its pitch begins to sound.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        pieces = data[split_name]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: has no split {split_name!r} (expected train, valid or test)") from None
    out = []
    for i, frames in enumerate(pieces):
        sound = np.zeros((len(frames), 128), bool)
        try:
            for t, frame in enumerate(frames):
                sound[t, [int(p) for p in frame]] = True
        except (TypeError, ValueError, IndexError):
            raise DataError(f"{path}: piece {i} of {split_name!r} is not a list of frames of MIDI pitches") from None
        prev = np.vstack([np.zeros((1, 128), bool), sound[:-1]])
        out.append(Piece(f"{split_name}/{i}", grid=Grid(sound & ~prev, sound, 1, 4, 100.0)))
    if not out:
        raise DataError(f"{path}: split {split_name!r} is empty")
    return out
