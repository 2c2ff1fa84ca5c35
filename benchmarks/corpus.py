"""Corpus pipeline throughput: files per second reading a folder of MIDI files, cold and from the cache.

Makes N MIDI files (transposed and cut copies of the chorales in tests/data, each one
distinct so none is a cache hit for another), then reads the folder three ways in the
same process: one worker with an empty cache (the baseline), all cores with an empty
cache, and again with a warm cache.

    python benchmarks/corpus.py [--files 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from improviser.music.encoding import grid_to_timed_notes, read_midi, write_midi


def make_files(folder: Path, n: int) -> None:
    seeds = [read_midi(f) for f in sorted((Path(__file__).parents[1] / "tests" / "data").glob("*.mid"))]
    for i in range(n):
        g = seeds[i % len(seeds)]
        shift = (i // len(seeds)) % 13 - 6
        notes = grid_to_timed_notes(g.transpose(shift) or g, 80 + i % 60)  # tempo varies: bytes differ
        write_midi(folder / f"piece{i:05d}.mid", {"music": notes}, 80 + i % 60)


def timed(paths, workers: int) -> tuple[float, int]:
    from improviser.model.data import load_midi_files

    t0 = time.perf_counter()
    pieces = load_midi_files(paths, progress=False, workers=workers)
    return time.perf_counter() - t0, len(pieces)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "midi"
        folder.mkdir()
        make_files(folder, args.files)
        cores = os.cpu_count() or 1
        rows = []
        for label, workers, cache in (("1 worker, cold cache", 1, "a"), (f"{cores} workers, cold cache", cores, "b"),
                                      (f"{cores} workers, warm cache", cores, "b")):
            os.environ["IMPROVISER_CACHE"] = str(Path(tmp) / f"cache-{cache}")
            secs, n = timed([folder], workers)
            rows.append((label, secs, n))
        base = rows[0][1]
        print(f"{args.files} MIDI files of {sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.1f} MB")
        for label, secs, n in rows:
            print(f"  {label:26} {secs:7.2f} s  {n / secs:8.0f} files/s  ({base / secs:.1f}x the 1-worker run)")


if __name__ == "__main__":
    main()
