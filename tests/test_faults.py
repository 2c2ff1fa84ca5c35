"""Faults and security of the live service, on a real JACK server.

- the program on the other end of ``--output NAME`` quits and comes back: ``play`` keeps playing
  and recording, says so in one line each way, and plays into it again;
- the sessions folder vanishes (and is a file for a while): one line at the time, the sessions wait
  in memory and are all written, in order, when the folder is back;
- SIGKILL mid-session: every file written before is whole; temporary leftovers are never taken
  for sessions, and the next run tidies them and overwrites nothing;
- ``record`` and ``play`` write only where asked, and listen on no network socket.

These tests are about survival and completeness, not timing: the CPU is shared, so waits are long.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from improviser.model.data import find_midi_files
from improviser.testing import Monitor, Run, file_notes, wait_for

pytestmark = pytest.mark.jack

SESSION_NAME = re.compile(r"session-.*-(\d{4})(-\d+)?\.mid$")


def sessions_by_index(*folders: Path) -> dict[int, Path]:
    """Session files of one run by their index; fails if an index is written twice."""
    found: dict[int, Path] = {}
    for folder in folders:
        for f in folder.glob("session-*.mid"):
            index = int(SESSION_NAME.search(f.name).group(1))
            assert index not in found, f"session {index} written twice: {found[index]} and {f}"
            found[index] = f
    return found


def note_onsets(files: list[Path]) -> tuple[list[tuple[float, int]], float]:
    """(time, pitch) of every note start in ``files`` laid end to end, and their total length."""
    onsets, offset = [], 0.0
    for f in files:
        notes, length, _ = file_notes(f)
        onsets += [(offset + start, pitch) for pitch, start, _ in notes]
        offset += length
    return sorted(onsets), offset


def heard_onsets(monitor: Monitor) -> list[tuple[float, int]]:
    return [(t, m.note) for t, m in monitor.messages("note_on") if m.velocity > 0]


def test_output_peer_quits_and_comes_back(jack_server, tmp_path):
    folder = tmp_path / "sessions"
    client = f"synth{os.getpid()}"
    first = Monitor(client=client)
    svc = Run("play", "--sessions", str(folder), "--session-seconds", "2", "--bpm", "200", "--seed", "4",
                  "--api", "jack", "--output", client)
    second = None
    try:
        wait_for(lambda: len(heard_onsets(first)) >= 10, 40, "the improviser to play into the first synth")
        first.close()  # the synth quits mid-phrase
        svc.wait_for(r"warning: lost MIDI output .*still playing and recording", timeout=15)
        time.sleep(1.0)  # it plays into the void for a while
        second = Monitor(client=client)  # the synth is started again, same name
        svc.wait_for(r"^reconnected to MIDI output", timeout=15)
        wait_for(lambda: len(heard_onsets(second)) >= 10, 30, "the improviser to play into the restarted synth")
        assert svc.proc.poll() is None, svc.text()
        code = svc.stop()
    finally:
        svc.stop(signal.SIGKILL)
        if second is not None:
            second.close()
    assert code == 0, svc.text()
    assert svc.count("lost MIDI output") == 1 and svc.count("reconnected") == 1, svc.text()

    # Every note either synth heard is in the files, at its time; the files go on through the gap.
    files = [f for _, f in sorted(sessions_by_index(folder).items())]
    saved, _ = note_onsets(files)
    heard = heard_onsets(first) + heard_onsets(second)
    tolerance = 0.04  # s; about half a step at 200 bpm
    t0 = heard[0][0] - next(t for t, p in saved if p == heard[0][1])  # the monitor's time of the files' 0
    missing = [(round(t - t0, 3), p) for t, p in heard
               if not any(p == q and abs(t - t0 - s) < tolerance for s, q in saved)]
    assert not missing, f"{len(missing)} of {len(heard)} heard notes are not in the files: {missing[:10]}"
    gap = [s for s, _ in saved if heard_onsets(first)[-1][0] - t0 + 0.2 < s < heard_onsets(second)[0][0] - t0 - 0.2]
    assert gap, "nothing was recorded while the synth was away"


def test_sessions_folder_vanishes_and_comes_back(jack_server, tmp_path):
    folder = tmp_path / "sessions"
    moved = tmp_path / "moved-away"
    svc = Run("play", "--sessions", str(folder), "--session-seconds", "1", "--bpm", "240", "--seed", "2",
                  "--api", "jack")
    try:
        svc.wait_for(r"^wrote ", 2, timeout=40)
        folder.rename(moved)  # the folder vanishes (its earlier files stay with it)
        svc.wait_for(r"warning: cannot save session \d+ in .*the folder .* is gone.*keeping it in memory")
        folder.write_text("not a folder")  # now a file stands where the folder was
        svc.wait_for(r"warning: cannot save session \d+ in .*no longer a folder", timeout=15)
        assert_no_socket_listens(svc.proc.pid)  # while it plays, nothing listens on the network
        folder.unlink()
        folder.mkdir()  # the folder is back
        svc.wait_for(r"saving works again", timeout=15)
        written = svc.count(r"^wrote ")
        svc.wait_for(r"^wrote ", written + 1, timeout=15)  # and later sessions are saved as they come
        code = svc.stop()
    finally:
        svc.stop(signal.SIGKILL)
    assert code == 0, svc.text()
    assert "Traceback" not in svc.text()
    found = sessions_by_index(moved, folder)
    assert sorted(found) == list(range(len(found))), f"sessions missing: {sorted(found)}"
    assert len(found) >= 6
    for _, f in sorted(found.items())[:-1]:  # every one but the partial last is a whole second
        assert file_notes(f)[1] == pytest.approx(1.0, abs=0.002), f.name
    names = {f.name for f in found.values()}
    assert {Path(line.split()[1]).name for line in svc.lines if line.startswith("wrote ")} <= names
    # The waiting ones were written in playing order: names (start times) sort as indices do.
    in_folder = sorted(i for i, f in found.items() if f.parent == folder)
    assert [found[i].name for i in in_folder] == sorted(found[i].name for i in in_folder)


def test_sigkill_keeps_every_earlier_session_whole(jack_server, tmp_path):
    folder = tmp_path / "sessions"
    svc = Run("play", "--sessions", str(folder), "--session-seconds", "1", "--bpm", "240", "--seed", "6",
                  "--api", "jack")
    try:
        svc.wait_for(r"^wrote ", 3, timeout=40)
        time.sleep(0.5)  # mid-session
    finally:
        svc.stop(signal.SIGKILL)
    reported = [Path(m.group(1)) for m in (re.match(r"^wrote (\S+) ", line) for line in svc.lines) if m]
    assert len(reported) >= 3
    sessions = sessions_by_index(folder)
    assert set(reported) <= set(sessions.values()), "a file it said it wrote is not there"
    assert sorted(sessions) == list(range(len(sessions)))
    for f in sessions.values():  # every session file is whole: parses, full length
        assert file_notes(f)[1] == pytest.approx(1.0, abs=0.002), f.name
    strays = [f.name for f in folder.iterdir() if f not in sessions.values()]
    assert all(name.startswith(".session-") and name.endswith(".part") for name in strays), strays
    before = {f: f.read_bytes() for f in sessions.values()}

    # A leftover of a write that SIGKILL cut short is never taken for a MIDI file ...
    leftover = folder / f".{sessions[0].name}.x1y2z3.part"
    leftover.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")  # half a header
    assert leftover not in find_midi_files([folder])
    # ... and the next run in the same folder tidies it away and overwrites nothing.
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    again = Run("play", "--sessions", str(folder), "--session-seconds", "1", "--bpm", "240", "--seed", "6",
                    "--api", "jack")
    try:
        again.wait_for(r"^wrote ", 1, timeout=40)
        code = again.stop()
    finally:
        again.stop(signal.SIGKILL)
    assert code == 0, again.text()
    assert not leftover.exists()
    assert {f: f.read_bytes() for f in before} == before
    assert len(list(folder.glob("session-*.mid"))) >= len(before) + 1


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_record_and_play_write_only_where_asked(jack_server, tmp_path):
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "IMPROVISER_CACHE"}
    # HOME, the temp folder and the working folder all point into the test's folder, where they are watched.
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    before = tree(tmp_path)
    take = Run("record", "take.mid", "--seconds", "1", "--api", "jack", env=env, cwd=cwd)
    try:
        code = take.proc.wait(60)
    finally:
        take.stop(signal.SIGKILL)
    assert code == 0, take.text()
    svc = Run("play", "--sessions", "out", "--session-seconds", "1", "--bpm", "240", "--api", "jack",
                  env=env, cwd=cwd)
    try:
        svc.wait_for(r"^wrote ", 1, timeout=40)
        assert_no_socket_listens(svc.proc.pid)
        code = svc.stop()
    finally:
        svc.stop(signal.SIGKILL)
    assert code == 0, svc.text()
    new = tree(tmp_path) - before
    allowed = re.compile(r"^cwd/(take\.mid|out|out/session-[^/]+\.mid)$")
    assert {p for p in new if not allowed.match(p)} == set()
    assert "cwd/take.mid" in new and any(p.startswith("cwd/out/session-") for p in new)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def network_sockets(pid: int) -> dict[int, str]:
    """inode -> 'tcp LISTEN', 'udp', ... for every TCP/UDP/raw socket in the process's network namespace."""
    found = {}
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            state = "LISTEN" if table.startswith("tcp") and fields[3] == "0A" else fields[3]
            found[int(fields[9])] = f"{table} {state} {fields[1]}"
    return found


def assert_no_socket_listens(pid: int) -> None:
    """The process holds no TCP, UDP or raw socket at all (JACK talks over Unix sockets, which is fine)."""
    mine = socket_inodes(pid)
    assert mine, "the process has no sockets at all: is it really talking to JACK?"
    net = network_sockets(pid)
    assert not [net[i] for i in mine if i in net], "network sockets held by the service"

