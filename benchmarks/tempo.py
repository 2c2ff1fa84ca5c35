"""--bpm auto: the tempo, beat and meter taken from a player, on held-out folk tunes the estimator was not tuned on.

    python benchmarks/tempo.py [--part report] [--tunes N] [--live N] [--checkpoint P]

Each tune (music21's reserved folk collections, the ``report`` part: the constants were tuned on the other) is
played as a person would: from an arbitrary moment, at a tempo drawn from 66..150 bpm, each onset off by a
Gaussian 10 ms, velocities 50..110, each note held for 90% of its length (``tempo.perform``). Four parts:

- **estimate**: ``estimate_beat`` on each tune's first 4 bars: the tempo (right, half, double), the beat (its
  beats on beats of the tune's own meter: every dotted quarter in 6/8) and the meter (2/4 and 4/4 count alike).
- **respond** (virtual clock, the shipped checkpoint, the engine and listening part of ``record --input``): the
  4 bars are played, and it answers. Of the answer's onsets (an answer as long as the phrase), the share
  within 20 ms of the phrase's 16th grid continued, and how often its first note is on a beat of the tune's
  meter. Baseline in the same run: ``--bpm 100`` (its own grid, as before --bpm auto).
- **accompany** (virtual clock): 10 bars, 2 steady and then 8 whose tempo drifts by 10% (faster and slower in
  turn). Of its onsets on its own beats during the drift, the share within 40 ms of a beat of the player's; and,
  whatever it plays, how many of the steps it counts as beats fall on the player's beats (precision) and how
  many of the player's beats it has a beat on (recall): marking fewer beats cannot raise both.
  Baselines: ``--bpm`` the player's starting tempo (a perfect start, never following) and ``--bpm 100``.
- **live** (``--live N``, JACK): N of the tunes through the command a user runs, ``improviser record --api
  jack --input stage:player --output stage:monitor --bpm auto --mode respond``, the phrase written on its frames
  by a JACK client of this script, which also takes the answer with each message's frame; the respond figures.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

import mido
import numpy as np

from improviser.live.clock import VirtualClock
from improviser.live.engine import LiveEngine
from improviser.live.listen import InputListener, Listening
from improviser.live.tempo import PlayerTempo, estimate_beat, perform, played_time
from improviser.model.generator import StreamingGenerator
from improviser.music.melodies import load_heldout_melodies
from improviser.music.melody_files import part_of
from improviser.testing import logged_grid

N_TUNES = 160  # the held-out tunes drawn (both parts); each part gets about half
DRIFT = 0.10
LIVE_PERIOD = 256  # frames (5.3 ms at 48 kHz): the period the instrument is measured sample-accurate at


class BarWatch:
    """Told of each step the listening part hears: whether the model's step is on one of its beats."""

    def __init__(self, generator):
        self.generator = generator
        self.on_beat: dict[int, bool] = {}

    def heard(self, t, msg):
        pass

    def stepped(self, k):
        self.on_beat[k] = self.generator.bar_position() % self.generator.beat_steps == 0


def beat_steps(melody) -> int:
    return 6 if melody.meter.compound else 4


def playing(melody, bars: int, seed_name: str, drift: float = 0.0):
    """(performance, bpm, start, drift begin, drift over) of a tune's first ``bars`` bars."""
    rng = np.random.default_rng(zlib.crc32(seed_name.encode()))
    bpm, t0 = rng.uniform(66, 150), rng.uniform(1, 5)
    begin, over = melody.first_bar + 2 * melody.bar_steps, 8 * melody.bar_steps
    notes = melody.phrase(bars).notes()
    return perform(notes, bpm, rng, start=t0, drift=drift, over=over, begin=begin), bpm, t0, begin, over


def run_engine(model, mode: str, played, bpm: float | None, seconds: float, seed: int, meter=None):
    """The engine on a virtual clock hearing ``played``; bpm None: --bpm auto (meter: --meter). (result, grid,
    watch, said)."""
    clock = VirtualClock()
    listener = InputListener(now=clock.now)
    said: list[str] = []
    tempo = PlayerTempo(meter=meter, say=said.append) if bpm is None else None
    listening = Listening(listener, mode=mode, respond_after=2.0, just_in_time=True, tempo=tempo)
    gen = StreamingGenerator(model, 0.9, 1, seed=seed)
    watch = BarWatch(gen)
    listening.watch = watch
    grid = logged_grid(60 / (bpm or 100) / 4, clock)
    engine = LiveEngine(gen, bpm or 100, None, clock=clock, listening=listening, lookahead=0, timing=grid)
    for n in played:
        clock.at(n.onset, lambda n=n: listener.on_message(mido.Message("note_on", note=n.pitch, velocity=n.velocity)))
        clock.at(n.off, lambda n=n: listener.on_message(mido.Message("note_off", note=n.pitch)))
    result = engine.run(seconds)
    return result, grid, watch, said


def onsets_of(result) -> np.ndarray:
    s = result.sessions[-1]
    return np.array(sorted({round(n.start + s.start, 6) for n in s.notes()}))


def answer_figures(own: np.ndarray, melody, bpm: float, t0: float, end: float) -> tuple[int, int, bool | None]:
    """(onsets within 20 ms of the phrase's 16th grid continued, onsets, first on a beat) of an answer as long
    as the phrase, from its first onset after the phrase ends."""
    own = own[own > end]
    if own.size == 0:
        return 0, 0, None
    step = 60 / bpm / 4
    own = own[own < own[0] + 4 * melody.bar_steps * step]
    x = (own - t0) / step
    near = int(np.sum(np.abs(x - np.round(x)) * step <= 0.020))
    beat = beat_steps(melody)
    first = x[0] - melody.first_bar
    return near, own.size, bool(abs(first / beat - round(first / beat)) * beat * step <= 0.020)


# ---- the four parts -------------------------------------------------------------------------------------

def part_estimate(tunes) -> dict:
    r = {"tunes": 0, "right": 0, "half": 0, "double": 0, "none": 0, "beat": 0, "meter": 0}
    for m in tunes:
        played, bpm, t0, *_ = playing(m, 4, m.name)
        est = estimate_beat(played)
        r["tunes"] += 1
        if est is None:
            r["none"] += 1
            continue
        ratio = est.bpm / bpm
        right, half = abs(ratio - 1) < 0.02, abs(ratio - 0.5) < 0.01
        r["right"] += right
        r["half"] += half
        r["double"] += abs(ratio - 2) < 0.04
        if right or half:
            step = 60 / bpm / 4
            beat = beat_steps(m)
            _, n0 = est.next_beat(t0)
            est_beats = est.time_of(n0 + est.meter.beat_steps(4) * np.arange(8))
            x = (est_beats - t0) / step - m.first_bar
            r["beat"] += bool(np.all(np.abs(x / beat - np.round(x / beat)) * beat < 0.3))
        guessed, true = str(est.meter), str(m.meter)
        r["meter"] += guessed == true or {guessed, true} <= {"2/4", "4/4"}
    return r


def part_respond(model, tunes, bpm_setting: float | None) -> dict:
    r = {"near": 0, "onsets": 0, "first": 0, "answered": 0, "tunes": 0}
    for m in tunes:
        played, bpm, t0, *_ = playing(m, 4, m.name)
        end = max(n.off for n in played)
        result, *_ = run_engine(model, "respond", played, bpm_setting, end + 8 * m.bar_steps * 60 / bpm / 4 + 3, 1)
        near, n, first = answer_figures(onsets_of(result), m, bpm, t0, end)
        r["tunes"] += 1
        r["near"] += near
        r["onsets"] += n
        r["answered"] += first is not None
        r["first"] += bool(first)
    return r


def part_accompany(model, tunes, setting: str) -> dict:
    """setting: auto, meter (--bpm auto --meter the tune's), start (--bpm the player's first tempo) or 100. near /
    onsets: its onsets on its beats within 40 ms of a player's beat; grid / all: all its onsets within 40 ms of
    the player's 16th grid (how closely it follows, whichever steps it takes for beats). Whether it plays on them
    or not, its beats (the steps it counts as beats) against the player's: beats_on / beats, its beats within 40 ms
    of one of the player's (precision); found / player: the player's beats with one of its beats within 40 ms
    (recall)."""
    r = {"near": 0, "onsets": 0, "tunes": 0, "grid": 0, "all": 0, "beats_on": 0, "beats": 0, "found": 0, "player": 0}
    for i, m in enumerate(tunes):
        drift = DRIFT if i % 2 == 0 else -DRIFT
        played, bpm, t0, begin, over = playing(m, 10, m.name, drift)
        end = max(n.off for n in played)
        bpm_setting = {"auto": None, "meter": None, "start": bpm, "100": 100.0}[setting]
        result, grid, watch, _ = run_engine(model, "accompany", played, bpm_setting, end, 1,
                                            m.meter if setting == "meter" else None)
        ks = np.array(sorted(grid.dues))
        dues = np.array([grid.dues[k] for k in ks])
        beat = beat_steps(m)
        player_beats = t0 + played_time(np.arange(m.first_bar % beat, 10 * m.bar_steps + m.first_bar + 1, beat),
                                        bpm, drift, over, begin)
        drifting = t0 + played_time(begin, bpm, drift, over, begin)
        sixteenths = t0 + played_time(np.arange(0, 10 * m.bar_steps + m.first_bar + 1), bpm, drift, over, begin)
        r["tunes"] += 1
        ours = dues[[bool(watch.on_beat.get(int(k))) for k in ks]]
        ours = ours[(ours >= drifting) & (ours <= end)]
        theirs = player_beats[(player_beats >= drifting) & (player_beats <= end)]
        r["beats"] += ours.size
        r["beats_on"] += int(sum(np.min(np.abs(player_beats - t)) <= 0.040 for t in ours))
        r["player"] += theirs.size
        r["found"] += int(sum(ours.size and np.min(np.abs(ours - t)) <= 0.040 for t in theirs))
        for t in onsets_of(result):
            if drifting <= t <= end:
                r["all"] += 1
                r["grid"] += bool(np.min(np.abs(sixteenths - t)) <= 0.040)
            j = int(np.argmin(np.abs(dues - t)))
            if drifting <= t <= end and abs(dues[j] - t) < 1e-3 and watch.on_beat.get(int(ks[j])):
                r["onsets"] += 1
                r["near"] += bool(np.min(np.abs(player_beats - t)) <= 0.040)
    return r


# ---- live, through JACK -----------------------------------------------------------------------------------

def live_respond(tunes, checkpoint: str | None) -> None:
    """Each tune's phrase into ``improviser record --bpm auto --mode respond`` on JACK; the respond figures at the
    monitor port, on JACK's frames."""
    import re
    import tempfile

    from improviser.testing import RATE, Run, Stage, realtime_jack_server

    r = {"near": 0, "onsets": 0, "first": 0, "answered": 0, "late": 0, "xruns": 0, "taken": 0}
    with realtime_jack_server("improviser-tempo", period=LIVE_PERIOD) as (_, realtime), \
            tempfile.TemporaryDirectory() as folder:
        stage = Stage()
        try:
            for m in tunes:
                played, bpm, t0, *_ = playing(m, 4, m.name)
                phrase_end = max(n.off for n in played)
                seconds = phrase_end + 8 * m.bar_steps * 60 / bpm / 4 + 8
                run = Run("record", f"{folder}/take.mid", "--seconds", f"{seconds:.1f}", "--api", "jack", "--input",
                          f"{stage.name}:player", "--output", f"{stage.name}:monitor", "--bpm", "auto", "--mode",
                          "respond", "--seed", "1", *(["--checkpoint", checkpoint] if checkpoint else []))
                run.wait_for("playing into")
                time.sleep(1.0)
                stage.heard.clear()
                xruns = stage.xruns
                base = stage.client.frame_time  # the phrase's time 0; its first onset t0 later (1..5 s)
                stage.play(played, base, RATE)
                run.finish(timeout=seconds + 60)
                said = re.findall(r"took the tempo from your playing: ([0-9.]+) bpm", run.text())
                ons = np.array(sorted({(f - base) / RATE for f, d in stage.heard if d[0] & 0xF0 == 0x90 and d[2]}))
                near, n, first = answer_figures(ons, m, bpm, t0, phrase_end)
                r["near"] += near
                r["onsets"] += n
                r["answered"] += first is not None
                r["first"] += bool(first)
                r["taken"] += bool(said)
                r["xruns"] += stage.xruns - xruns
                print(f"  live {m.name[:40]:40s} {bpm:6.1f} bpm: took {said[-1] if said else '-'}; "
                      f"{near}/{n} within 20 ms, first on a beat: {first}", file=sys.stderr)
            r["late"] = stage.late
        finally:
            stage.close()
    server = f"{'real-time' if realtime else 'not real-time'}, {LIVE_PERIOD} frames"
    command = "`improviser record --api jack --bpm auto --mode respond`"
    print(f"live on JACK ({server}), {len(tunes)} phrases through {command}: "
          f"answer onsets within 20 ms of the phrase's grid continued {share(r['near'], r['onsets'])}; first note "
          f"on a beat {share(r['first'], r['answered'])}; a tempo said for {r['taken']}; player messages written "
          f"late {r['late']}; xruns {r['xruns']}")


def share(a: int, b: int) -> str:
    return f"{a}/{b} = {100 * a / max(b, 1):.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="report", choices=["report", "tune"],
                    help="report: the tunes nothing was tuned on (tune: those the constants were tuned on)")
    ap.add_argument("--tunes", type=int, default=None, help="at most this many tunes (default: all of the part)")
    ap.add_argument("--live", type=int, default=0, help="also play this many tunes through JACK")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    from improviser.model.network import default_checkpoint, load_checkpoint

    model = load_checkpoint(args.checkpoint or default_checkpoint())[0]
    tunes = [m for m in load_heldout_melodies(N_TUNES, 0) if part_of(m.name) == args.part]
    four = [m for m in tunes if m.whole_bars >= 4][: args.tunes]
    ten = [m for m in tunes if m.whole_bars >= 10][: args.tunes]
    print(f"--bpm auto on held-out folk tunes ({args.part} part): tempo 66..150 bpm, onsets off by a Gaussian "
          f"10 ms, velocities 50..110, from an arbitrary moment")
    t = time.perf_counter()
    e = part_estimate(four)
    print(f"estimate, {e['tunes']} phrases of 4 bars: tempo right {share(e['right'], e['tunes'])}, half "
          f"{e['half']}, double {e['double']}, none {e['none']}; beats on the tune's beats "
          f"{share(e['beat'], e['tunes'])}; meter right (2/4 = 4/4) {share(e['meter'], e['tunes'])}")
    auto, fixed = part_respond(model, four, None), part_respond(model, four, 100.0)
    print(f"respond, {auto['tunes']} phrases: answer onsets within 20 ms of the phrase's 16th grid continued: "
          f"--bpm auto {share(auto['near'], auto['onsets'])}, --bpm 100 {share(fixed['near'], fixed['onsets'])} "
          f"(x{(auto['near'] / max(auto['onsets'], 1)) / max(fixed['near'] / max(fixed['onsets'], 1), 1e-9):.1f}); "
          f"first note on a beat: auto {share(auto['first'], auto['answered'])}, 100 "
          f"{share(fixed['first'], fixed['answered'])}")
    acc = {s: part_accompany(model, ten, s) for s in ("auto", "meter", "start", "100")}
    names = {"auto": "--bpm auto", "meter": "--bpm auto --meter (the tune's)", "start": "--bpm the player's first",
             "100": "--bpm 100"}
    print(f"accompany, {acc['auto']['tunes']} tunes of 10 bars drifting {DRIFT:.0%} over 8 (its onsets while it "
          f"drifts):")
    for key, name in names.items():
        a = acc[key]
        print(f"  {name:34s} on its beats within 40 ms of the player's beats {share(a['near'], a['onsets'])}; "
              f"all within 40 ms of the player's 16ths {share(a['grid'], a['all'])}; its beats on the player's "
              f"{share(a['beats_on'], a['beats'])}, the player's beats it has {share(a['found'], a['player'])}")
    print(f"({time.perf_counter() - t:.0f} s on a virtual clock)")
    if args.live:
        live_respond(four[: args.live], args.checkpoint)


if __name__ == "__main__":
    sys.exit(main())
