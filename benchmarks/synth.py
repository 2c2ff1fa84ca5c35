"""The built-in synth: how much faster than real time ``render`` is, how exactly it places notes, how loud its
files are -- and, with --jack, how loud ``record --synth`` is on a JACK server's audio ports.

    python benchmarks/synth.py [--pieces 5] [--seconds 30] [--soundfont P] [--jack]

- **render**: PIECES pieces of SECONDS from the shipped model (``generate``, seeds 0..), each rendered by
  ``render_midi`` at 44.1 kHz; its wall-clock time (reading the MIDI file and writing the WAV included)
  against the audio's length, the release kept, and the level.
- **attacks**: 16 isolated piano notes at irregular times (so they fall on every phase of FluidSynth's
  64-frame block), at 44.1 and 48 kHz: where each attack first reaches a tenth of its peak, after the note's
  time; the spread (largest less smallest) is what the timing adds.
- **jack** (``--jack``): ``record --api jack --synth`` for 12 s on its own JACK server (dummy driver, 48 kHz,
  -p 32); ``jack_rec`` records its audio ports for 8 s of the middle.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from improviser.music.encoding import TimedNote, write_midi
from improviser.sound.render import render_midi
from improviser.sound.synth import find_soundfont
from improviser.testing import JackUnavailable, Run, attack_delays, cli, dbfs, jack_server, read_wav


def render_speed(folder: Path, soundfont: Path, pieces: int, seconds: float) -> None:
    rows = []
    for seed in range(pieces):
        mid = folder / f"piece{seed}.mid"
        r = cli("generate", mid, "--seconds", seconds, "--seed", seed)
        assert r.exit_code == 0, r.output
        out = render_midi(mid, folder / f"piece{seed}.wav", soundfont)
        x, _ = read_wav(out.path)
        rows.append((out.seconds / out.render_seconds, out.render_seconds, out.tail_seconds, dbfs(x), out.notes))
        print(f"  seed {seed}: {out.notes} notes, {out.seconds:.2f} s of audio in {out.render_seconds:.3f} s "
              f"({rows[-1][0]:.0f}x real time), release {out.tail_seconds:.2f} s, RMS {rows[-1][3]:.1f} dBFS")
    speed, took, tail, rms, _ = (np.array(c) for c in zip(*rows))
    print(f"render, {pieces} pieces of {seconds:g} s: median {np.median(speed):.0f}x real time "
          f"(min {speed.min():.0f}x), {np.median(took):.3f} s each; release kept {tail.min():.2f}..{tail.max():.2f} s; "
          f"RMS {rms.min():.1f}..{rms.max():.1f} dBFS (peak -1.0 dBFS)")


def attacks(folder: Path, soundfont: Path) -> None:
    times = [0.2 + 0.45 * i + 0.0173 * i for i in range(16)]
    mid = folder / "isolated.mid"
    write_midi(mid, {"notes": [TimedNote(64, t, t + 0.12, 100) for t in times]}, bpm=120)
    for rate in (44100, 48000):
        out = render_midi(mid, folder / "isolated.wav", soundfont, program=0, sample_rate=rate)
        x, _ = read_wav(out.path)
        d = attack_delays(x, rate, times) * 1e3
        print(f"attacks at {rate} Hz, 16 isolated notes: delay {d.min():.2f}..{d.max():.2f} ms after the note's "
              f"time (median {np.median(d):.2f}), spread {d.max() - d.min():.2f} ms; FluidSynth's block is "
              f"{64 / rate * 1e3:.2f} ms")


def jack(folder: Path) -> None:
    try:
        with jack_server("improviser-synth-bench", log=folder / "jackd.log"):
            run = Run("record", str(folder / "take.mid"), "--api", "jack", "--synth", "--seconds", "12", "--seed", "1")
            run.wait_for("playing into")
            time.sleep(2)
            lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout.splitlines()
            ports = sorted(p for p in lsp if re.fullmatch(r"improviser-synth[^:]*:(left|right)", p))
            subprocess.run(["jack_rec", "-f", str(folder / "heard.wav"), "-d", "8", *ports], check=True,
                           capture_output=True, timeout=60)
            err = run.finish()
    except JackUnavailable as e:
        print(f"jack: {e}")
        return
    x, rate = read_wav(folder / "heard.wav")
    peak = 20 * np.log10(np.abs(x).max())
    print(f"record --api jack --synth, 8 s from its JACK ports at {rate} Hz: RMS {dbfs(x):.1f} dBFS, "
          f"peak {peak:.1f} dBFS; {err.splitlines()[-1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--soundfont", type=Path, default=None)
    ap.add_argument("--jack", action="store_true", help="also measure record --synth on a JACK server")
    args = ap.parse_args()
    soundfont = find_soundfont(args.soundfont)
    print(f"SoundFont {soundfont}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        render_speed(folder, soundfont, args.pieces, args.seconds)
        attacks(folder, soundfont)
        if args.jack:
            jack(folder)


if __name__ == "__main__":
    main()
