"""Listening, end to end on a real JACK server: a player port in this process plays into the improviser's
``--input``, a monitor port timestamps what it plays. The improviser runs as ``python -m improviser record``.

Covered: call and response in the player's key (C major and F# major), silence while the player plays,
the player's notes in the session file, live CCs (panic, tempo) within one step, following a MIDI clock
at 100 then 140 bpm with start/stop, and a flood of junk that neither disturbs the timing nor loses notes.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import mido
import numpy as np
import pytest

from improviser import testing
from improviser.music.analysis import estimate_key, key_correlation, key_name
from improviser.music.encoding import Grid
from improviser.music.listening_metrics import key_relation
from improviser.testing import Monitor, Run, file_notes, grid_residuals, monitor_notes, start_flood

pytestmark = pytest.mark.jack

BPM = 150.0
BEAT = 60.0 / BPM
STEP = BEAT / 4
MAJOR_PHRASE = [0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0, 4, 7, 12, 7, 0]  # scale up, arpeggio: 16 eighth notes


class Player:
    """A JACK MIDI output in this process: the keyboard (or DAW) the improviser listens to."""

    def __init__(self):
        self.client = f"keys{uuid.uuid4().hex[:6]}"
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        self._port = backend.open_output("out", client_name=self.client)
        self.sent: list[tuple[float, mido.Message]] = []

    def send(self, msg: mido.Message) -> float:
        t = time.monotonic()
        self._port.send(msg)
        self.sent.append((t, msg))
        return t

    def close(self) -> None:
        self._port.close()


class FramePlayer(Player):
    """A player whose messages JACK writes on the frame of a given time (``send(msg, at=t)``): a DAW's
    clock, which stamps each tick with its sample, rather than a program whose messages go out at the start
    of the next period (what rtmidi does: 0 to 0.67 ms late at 32 frames, a jitter the test would count)."""

    def __init__(self):
        from improviser.ports.jack_midi import JackOutput

        self.client = f"daw{uuid.uuid4().hex[:6]}"
        self._port = JackOutput(name=self.client, port="out")
        self.lead = self._port.lead
        self.sent = []

    def send(self, msg: mido.Message, at: float | None = None) -> float:
        if at is None:
            return super().send(msg)
        self._port.send(msg, at=at)
        self.sent.append((at, msg))
        return at


@pytest.fixture
def frame_player(jack_server):
    p = FramePlayer()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def realtime_rig(jack_server, tmp_path):
    """(player, monitor) on a JACK server of their own that runs real-time (-R, as a musician's JACK does;
    the session's server is not, and its cycles come in fits of up to tens of ms on a busy machine),
    32 frames; a server that is not real-time where real-time rights are missing."""
    with testing.realtime_jack_server("improviser-rt", log=tmp_path / "jackd.log"):
        p, m, x = Player(), Monitor(), XrunWatch()
        try:
            yield p, m, x
        finally:  # every port closed before the server stops
            p.close()
            m.close()
            x.close()


class XrunWatch:
    """A JACK client that notes when the server reports an xrun (a cycle that ran late: on this 2-core virtual
    machine the dummy driver does so about once a second with nobody playing, and several times a second
    under load). Every message in the graph then arrives late, whoever sent it."""

    def __init__(self):
        import jack

        self.times: list[float] = []  # appended on JACK's notification thread
        self.client = jack.Client(f"xrun{uuid.uuid4().hex[:6]}", no_start_server=True)
        self.client.set_xrun_callback(lambda delayed_usecs: self.times.append(time.monotonic()))
        self.client.activate()

    def near(self, start: float, end: float) -> bool:
        """Was there an xrun between ``start`` and ``end`` (monotonic seconds)?"""
        return any(start <= t <= end for t in list(self.times))

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.fixture
def player(jack_server):
    p = Player()
    try:
        yield p
    finally:
        p.close()


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.002) if left > 0.003 else 0)


def play_phrase(player: Player, tonic: int, start: float) -> float:
    """The major phrase on ``tonic`` in eighth notes from ``start``; returns the time of its last note-off."""
    t = start
    for degree in MAJOR_PHRASE:
        note = 60 + tonic + degree
        sleep_until(t)
        player.send(mido.Message("note_on", note=note, velocity=90))
        sleep_until(t + BEAT / 2 * 0.9)
        last = player.send(mido.Message("note_off", note=note))
        t += BEAT / 2
    return last


def pitch_grid(notes: list[tuple[int, float, float]]) -> Grid:
    """The notes (pitch, on, off) on a grid of 16ths at BPM, for the key measures."""
    t0 = min(n[1] for n in notes)
    n_steps = int((max(n[2] for n in notes) - t0) / STEP) + 2
    sound = np.zeros((n_steps, 128), bool)
    onset = np.zeros((n_steps, 128), bool)
    for p, on, off in notes:
        a, b = round((on - t0) / STEP), max(round((off - t0) / STEP), round((on - t0) / STEP) + 1)
        sound[a:b, p] = True
        onset[a, p] = True
    return Grid(onset, sound, 4, 4)


ROUNDS = 3


def call_and_response(player: Player, monitor, out, tonic: int, seed: int, results: dict) -> None:
    """Three rounds of phrase + pause on ``tonic``; stores what the improviser played between them."""
    run = Run("record", str(out), "--seconds", "40", "--bpm", str(BPM), "--seed", str(seed), "--api", "jack",
              "--output", monitor.client, "--input", player.client, "--mode", "respond", "--respond-after", "2",
              "--temperature", "0.8")
    run.wait_for("playing into")
    time.sleep(0.5)
    windows = []
    t = time.monotonic() + 0.1
    for _ in range(ROUNDS):
        first = t
        last_off = play_phrase(player, tonic, t)
        t = last_off + 2 * BEAT + 8 * BEAT  # the pause: 2 beats of silence, then 2 bars of answer
        windows.append((first, last_off, t))
        sleep_until(t)
    run.proc.send_signal(2)
    err = run.finish()
    time.sleep(0.05)
    monitor_notes(monitor)  # nothing left hanging
    results[tonic, seed] = (file_notes(out)[0], file_notes(out, "player")[0], err, player.sent)


def test_answers_in_the_players_key_and_is_silent_while_the_player_plays(jack_server, tmp_path):
    results: dict = {}
    waves = [[(0, 1), (6, 1)], [(0, 2), (6, 2)]]  # (tonic, seed): two seeds per key
    runs = [run for wave in waves for run in wave]
    for wave in waves:
        # Both keys at once, in two improviser processes (more would overload 2 cores).
        ports = [(Player(), Monitor()) for _ in wave]
        try:
            threads = [threading.Thread(target=call_and_response,
                                        args=(p, m, tmp_path / f"{tonic}-{seed}.mid", tonic, seed, results))
                       for (p, m), (tonic, seed) in zip(ports, wave)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(150)
        finally:
            for p, m in ports:
                p.close()
                m.close()
    assert set(results) == set(runs), "a call-and-response run failed"
    answers: dict[tuple[int, int], list] = {run: [] for run in runs}
    for tonic, seed in runs:
        # Both from the session file (send and arrival times on the improviser's clock), so JACK delivering
        # late to the monitor on a loaded machine does not blur them.
        heard, player_notes, err, sent = results[tonic, seed]
        answered = 0
        phrases = [player_notes[i:i + len(MAJOR_PHRASE)] for i in range(0, len(player_notes), len(MAJOR_PHRASE))]
        for i, phrase in enumerate(phrases):
            first, last_off = phrase[0][1], max(n[2] for n in phrase)
            end = phrases[i + 1][0][1] if i + 1 < len(phrases) else last_off + 10 * BEAT
            # Silent while the player plays: no note starts from one step after a note of the phrase until
            # its last note-off. A loaded machine can delay the test's own player thread; where the notes it
            # really sent left 2 beats of silence, respond mode rightly answers, so only the stretches the
            # player kept playing (gaps under 2 beats, as sent) are held to silence.
            stretches, start, prev_off = [], phrase[0][1], phrase[0][2]
            for note in phrase[1:]:
                if note[1] - prev_off >= 2 * BEAT - STEP:
                    stretches.append((start, prev_off))
                    start = note[1]
                prev_off = max(prev_off, note[2])
            stretches.append((start, prev_off))
            during = [n for n in heard if any(a + STEP + 0.005 < n[1] < b for a, b in stretches)]
            assert not during, (f"{tonic} major, seed {seed}: played {len(during)} notes while the player played "
                                f"(phrase {i} from {first:.2f} to {last_off:.2f} s): {during[:5]}\n{err}")
            answer = [n for n in heard if last_off < n[1] < end]
            # It waits for 2 beats of silence (less a step of quantisation) before answering.
            assert not answer or answer[0][1] > last_off + 2 * BEAT - 2 * STEP, "answered before the pause"
            answers[tonic, seed] += answer
            answered += bool(answer)
        # The model may rest through a whole answer now and then (the music is sampled), but not often.
        assert answered >= ROUNDS - 1, f"answered {answered} of {ROUNDS} phrases: {err}"
        # The player's notes are in the session file, with their arrival times (not quantised to steps).
        sent_on = [t for t, m in sent if m.type == "note_on"]
        assert len(player_notes) == len(sent_on) == ROUNDS * len(MAJOR_PHRASE)
        starts = np.array([n[1] for n in player_notes])
        lag = np.abs(np.array(sent_on) - starts - np.median(np.array(sent_on) - starts))
        # Typically within a file tick (~2 ms) of the send; JACK is not real-time here, so under load
        # one can arrive late (seen in CI: one of 48 by 210 ms, the rest within a millisecond).
        assert np.median(lag) < 0.003 and np.sort(lag)[-2] < 0.15 and lag.max() < 0.5, (
            f"player notes off by {np.round(np.sort(lag)[-3:] * 1e3, 1)} ms at most")
        assert len({round(x / STEP) for x in starts}) > 0.9 * len(starts)
    # Each run on its own (one seed, its three answers): what it played fits the player's key clearly better
    # than the key a tritone away (the most different profile), and its estimated key is at most one
    # accidental from the player's (Krumhansl-Schmuckler over what it played); and all runs but at most one
    # answered in the player's key or its relative (all four did in isolation; a loaded machine that delays
    # the test's own player thread once gave the dominant).
    failures, in_key = [], 0
    for (tonic, seed), answer in answers.items():
        grid = pitch_grid(answer)
        key = estimate_key(grid)[:2]
        own, other = key_correlation(grid, tonic, "major"), key_correlation(grid, (tonic + 6) % 12, "major")
        print(f"{tonic} major, seed {seed}: answered in {key_name(*key)}; r {own:.2f} (its key), {other:.2f} (tritone)")
        in_key += key_relation((tonic, "major"), key) in ("same", "relative")
        if key_relation((tonic, "major"), key) == "far" or own - other < 0.3:
            failures.append(f"{key_name(tonic, 'major')} phrase, seed {seed}: answered in {key_name(*key)} "
                            f"(r {own:.2f} with the player's key, {other:.2f} with the key a tritone away)")
    assert not failures, "answers do not follow the player's key: " + "; ".join(failures)
    assert in_key >= len(answers) - 1, f"only {in_key} of {len(answers)} runs answered in the player's key or its " \
                                       "relative"


def sounding_at(monitor, t: float) -> list[int]:
    """Pitches the monitor had sounding at time ``t``."""
    on: dict[int, bool] = {}
    for when, m in monitor.messages("note_on", "note_off"):
        if when > t:
            break
        on[m.note] = m.type == "note_on" and m.velocity > 0
    return [p for p, v in on.items() if v]


def test_a_panic_or_a_tempo_knob_takes_effect_within_one_step(player, monitor, tmp_path):
    run = Run("record", str(tmp_path / "cc.mid"), "--seconds", "30", "--bpm", "120", "--seed", "3",
              "--api", "jack", "--output", monitor.client, "--input", player.client,
              "--mode", "accompany", "--cc", "tempo=21")
    step = 60 / 120 / 4
    try:
        run.wait_for("playing into")
        deadline = time.monotonic() + 10
        while not sounding_at(monitor, time.monotonic()):  # panic while notes sound
            assert time.monotonic() < deadline, "nothing sounding"
            time.sleep(0.01)
        tp = player.send(mido.Message("control_change", control=119, value=127))
        held = sounding_at(monitor, tp)
        time.sleep(1.0)
        # Tempo knob (moved to CC 21 by --cc) to the middle: 40 + 64/127 * 200 = 140.8 bpm.
        tt = player.send(mido.Message("control_change", control=21, value=64))
        time.sleep(5.0)  # a chorale opening moves in quarters and halves: time for several onsets
    finally:
        run.proc.send_signal(2)
    err = run.finish()
    time.sleep(0.05)
    monitor_notes(monitor)  # nothing left hanging
    offs: dict[int, float] = {}  # pitch -> its first note-off after the panic
    for t, m in monitor.messages("note_on", "note_off"):
        if t > tp and (m.type == "note_off" or m.velocity == 0):
            offs.setdefault(m.note, t)
    for p in held:
        assert p in offs and offs[p] - tp < step + 0.015, f"pitch {p} still sounding {offs.get(p, 99) - tp:.3f} s " \
                                                         "after the panic"
    # After the tempo change (and one step of the old tempo), onsets fall on the new grid, not the old one.
    new_step = 60 / (40 + 64 / 127 * 200) / 4
    times = sorted(t for t, m in monitor.messages("note_on") if m.velocity and t > tt + step + new_step)
    onsets = np.array([t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.01])  # one per chord
    assert len(onsets) >= 5, err
    gaps = np.diff(onsets) / new_step
    assert np.abs(gaps - np.round(gaps)).max() < 0.15, f"onset gaps in new steps: {np.round(gaps, 2)}"
    old = np.diff(onsets) / step
    assert np.abs(old - np.round(old)).max() > 0.25, f"onsets still on the old grid: {np.round(old, 2)}"


def send_clock(player: Player, plan: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Send MIDI clock by a plan of (what, seconds): ('tick@BPM', seconds of ticks), 'start', 'stop'.

    Ticks are sent on their exact times (sleep, then spin); returns (kind, time sent) of every message.
    """
    sent = []
    lead = getattr(player, "lead", None)  # a FramePlayer: each message handed over ahead, written on its frame
    t = time.monotonic() + 0.05

    def send(kind: str, due: float) -> None:
        if lead is not None:
            sleep_until(due - lead - 0.002)
            sent.append((kind, player.send(mido.Message(kind), at=due)))
            return
        while (left := due - time.monotonic()) > 0.0015:
            time.sleep(left - 0.0015)
        while time.monotonic() < due:
            time.sleep(0)  # spin, but let the monitor's callback timestamp meanwhile
        sent.append((kind, player.send(mido.Message(kind))))

    for what, seconds in plan:
        if what in ("start", "stop"):
            send(what, t)
            continue
        period = 60 / float(what.split("@")[1]) / 24
        for i in range(round(seconds / period)):
            send("clock", t + i * period)
        t += round(seconds / period) * period
    return sent


def test_follows_a_midi_clock_at_100_then_140_bpm_between_start_and_stop(frame_player, monitor, tmp_path):
    player = frame_player  # a DAW's clock: each tick on its own frame
    run = Run("record", str(tmp_path / "sync.mid"), "--seconds", "40", "--seed", "4", "--api", "jack",
              "--output", monitor.client, "--input", player.client, "--mode", "accompany", "--sync", "clock")
    try:
        run.wait_for("playing into")
        time.sleep(0.3)
        sent = send_clock(player, [("tick@100", 1.0), ("start", 0), ("tick@100", 4.0), ("tick@140", 4.05),
                                   ("stop", 0), ("tick@140", 1.0)])
        time.sleep(0.2)
    finally:
        run.proc.send_signal(2)
    err = run.finish()
    time.sleep(0.05)
    monitor_notes(monitor)  # nothing left hanging
    start = next(t for kind, t in sent if kind == "start")
    stop = next(t for kind, t in sent if kind == "stop")
    ticks = [t for kind, t in sent if kind == "clock" and start <= t < stop]  # song position 0, 1, 2, ...
    change = ticks[round(4.0 / (60 / 100 / 24))]  # the first tick at 140 bpm
    ons = [t for t, m in monitor.messages("note_on") if m.velocity > 0]
    assert ons and min(ons) > start, "a note before Start"
    assert max(ons) < stop, "a note after Stop"
    for t, m in monitor.messages("note_on", "note_off"):
        if t > stop + 0.03:
            pytest.fail(f"{m} {t - stop:.3f} s after Stop")
    # Timing from the session file (send times), put on this clock by the median delivery lag to the
    # monitor: JACK is not real-time here, and on a loaded machine it delivers some messages late.
    saved, _, _ = file_notes(tmp_path / "sync.mid")
    heard = monitor_notes(monitor)
    assert [n[0] for n in heard] == [n[0] for n in saved]
    offset = np.median([h[1] - f[1] for h, f in zip(heard, saved)])
    sends = np.array(sorted({round(f[1] + offset, 5) for f in saved}))
    tick_times = np.array(ticks)
    err_ms = []
    for t in ons:
        i = int(np.argmin(np.abs(tick_times - t)))
        assert i % 6 == 0, f"a note {t - start:.3f} s after Start is nearest tick {i}, not a 16th"
    for t in sends:
        i = int(np.argmin(np.abs(tick_times - t)))
        if not change < t < change + 60 / 140:  # the tempo is followed within a beat
            err_ms.append((t - ticks[i]) * 1e3)
    err_ms = np.array(err_ms)
    slow = [t for t in ons if t < change]
    fast = [t for t in ons if t > change + 60 / 140]
    assert len(slow) >= 8 and len(fast) >= 8, err
    # A constant lag (JACK delivering the tick in and the note out, ~1-2.5 ms on this
    # rig, which is not real-time) and little jitter around it; benchmarks/listening.py reports the figures.
    lag = np.median(err_ms)
    jitter = np.abs(err_ms - lag)
    print(f"clock follow: lag {lag:.2f} ms, jitter p90 {np.percentile(jitter, 90):.2f} ms, "
          f"worst {np.abs(err_ms).max():.2f} ms over {len(err_ms)} onsets")
    assert abs(lag) < 5 and np.percentile(jitter, 90) < 2.0 and np.abs(err_ms).max() < 12, (
        f"notes off the clock's 16ths: lag {lag:.2f} ms, jitter p90 {np.percentile(jitter, 90):.2f} ms, "
        f"worst {np.abs(err_ms).max():.2f} ms")


def test_a_flood_of_junk_neither_disturbs_the_timing_nor_loses_a_note(monitor, tmp_path):
    out = tmp_path / "flood.mid"
    flooder, client = start_flood(4.0, rate=2000)  # about 2,000 messages a second
    try:
        run = Run("record", str(out), "--seconds", "7", "--bpm", "150", "--seed", "6", "--api", "jack",
                  "--output", monitor.client, "--input", client, "--mode", "accompany")
        run.wait_for("playing into")
        time.sleep(0.5)
        flooder.stdin.write("go\n")
        flooder.stdin.flush()
        sent = json.loads(flooder.stdout.readline())
        err = run.finish()
    finally:
        if flooder.poll() is None:
            flooder.kill()
    time.sleep(0.05)
    assert sent["messages"] > 4000
    heard = monitor_notes(monitor)  # nothing left hanging at the monitor
    saved, _, _ = file_notes(out)
    # What was played is what was saved. JACK is not real-time here: under the flood (and the load of
    # this machine) it may deliver a message late to the monitor; the send times are what is checked.
    assert [n[0] for n in heard] == [n[0] for n in saved]
    lag = np.array([h[1] - f[1] for h, f in zip(heard, saved)])
    assert np.median(np.abs(lag - np.median(lag))) < 0.003
    # Time kept: every onset sent on the 100 ms grid of 150 bpm.
    resid = grid_residuals(np.array(sorted({n[1] for n in saved})), STEP)
    assert np.percentile(np.abs(resid), 99) < 0.003 and np.abs(resid).max() < 0.02, (
        f"onsets off the grid under the flood: p99 {np.percentile(np.abs(resid), 99) * 1e3:.2f} ms, "
        f"max {np.abs(resid).max() * 1e3:.2f} ms")
    late = int(re.search(r"(\d+) late", err).group(1))
    assert late <= 2, err
    # No note lost: every note-on the flood sent is a note on the file's player track.
    player_notes, _, _ = file_notes(out, "player")
    assert len(player_notes) == sent["note_ons"], err
    assert " 0 dropped" in err and "ignored 0 " not in err, err


def test_thru_forwards_every_player_note_at_once_on_its_channel_while_its_own_go_on_theirs(
        realtime_rig, tmp_path):
    """--thru: the player's notes (channel 1) reach the output port within 2 ms (p99) of being sent, all of
    them, with their velocities; its own notes go out on channel 2 (the default with --thru) after a program
    change there; the player track of the session file is unchanged; nothing is left hanging.

    On a real-time server: on the session's (not real-time), a full-suite run on a fresh machine once gave
    p99 2.9 ms, max 4.8 ms (median 1.1 ms), the server's own late cycles. Even a real-time JACK server on
    this virtual machine runs a cycle late (an xrun) several times a second under load, delaying every
    message in the graph; a note during which the server reported one is counted apart (at most 1 in 5 may
    be), and the p99 is over the others."""
    player, monitor, xruns = realtime_rig
    out = tmp_path / "thru.mid"
    run = Run("record", str(out), "--seconds", "30", "--bpm", "120", "--seed", "4", "--api", "jack",
              "--output", monitor.client, "--input", player.client, "--mode", "accompany", "--thru")
    sent = []
    try:
        run.wait_for("playing into")
        time.sleep(0.3)
        t = time.monotonic() + 0.05
        for i in range(160):  # 160 notes in 16ths at 120 bpm (20 s), on channel 1 (0 here), velocities 30..124
            note, velocity = 60 + MAJOR_PHRASE[i % len(MAJOR_PHRASE)], 30 + (i * 47) % 95
            sleep_until(t)
            sent.append((player.send(mido.Message("note_on", channel=0, note=note, velocity=velocity)), note,
                         velocity))
            sleep_until(t + 0.1)
            player.send(mido.Message("note_off", channel=0, note=note))
            t += 0.125
        time.sleep(0.3)
    finally:
        run.proc.send_signal(2)
    err = run.finish()
    time.sleep(0.05)
    on0 = [(t, m) for t, m in monitor.messages("note_on") if m.channel == 0 and m.velocity > 0]
    assert [(m.note, m.velocity) for _, m in on0] == [(n, v) for _, n, v in sent], err
    all_delays = np.array([t - s for (t, _), (s, _, _) in zip(on0, sent)])
    hit = np.array([xruns.near(s - 0.002, t + 0.002) for (t, _), (s, _, _) in zip(on0, sent)])
    delays = all_delays[~hit]
    print(f"thru delay: median {np.median(delays) * 1e3:.2f} ms, p90 {np.percentile(delays, 90) * 1e3:.2f} ms, "
          f"p99 {np.percentile(delays, 99) * 1e3:.2f} ms, max {delays.max() * 1e3:.2f} ms over {len(delays)} "
          f"notes; {hit.sum()} notes met a server xrun ({len(xruns.times)} xruns in all), their max "
          f"{(all_delays[hit].max() if hit.any() else 0) * 1e3:.2f} ms")
    assert hit.sum() <= len(sent) // 5, f"{hit.sum()} of {len(sent)} notes met an xrun of the JACK server"
    assert np.percentile(delays, 99) <= 0.002, f"thru p99 {np.percentile(delays, 99) * 1e3:.2f} ms"
    own = [m for _, m in monitor.messages() if m.type in ("note_on", "note_off", "program_change")
           and m.channel != 0]
    assert own and own[0].type == "program_change" and own[0].channel == 1
    assert {m.channel for m in own} == {1}
    # Both channels end silent (every note-on turned off), and the session file's player track is as played.
    for channel in (0, 1):
        sounding = set()
        for _, m in monitor.messages("note_on", "note_off"):
            if m.channel == channel:
                (sounding.add if m.type == "note_on" and m.velocity else sounding.discard)(m.note)
        assert not sounding, f"channel {channel + 1} left {sounding} sounding"
    assert [p for p, _, _ in file_notes(out, "player")[0]] == [n for _, n, _ in sent]
