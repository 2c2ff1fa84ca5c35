"""Saving sessions without a MIDI system: a full disk or a vanished folder loses no session.

End to end on JACK (folder removed under a running ``play``): test_faults.py.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import mido
import pytest

from improviser.live.recorder import Session
from improviser.live.saver import SessionSaver, SessionsNotSaved, tidy_parts
from improviser.music.encoding import TimedNote


def session(index: int) -> Session:
    return Session(index, float(index), 1.0, {"improviser": [TimedNote(60 + index, 0.0, 0.5, 80, 0)]})


class Disk:
    """Makes Session.write fail with 'no space left' while ``full`` is set."""

    def __init__(self, monkeypatch):
        self.full = False
        real = Session.write

        def write(s, path, bpm):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(s, path, bpm)

        monkeypatch.setattr(Session, "write", write)


def saver_in(folder: Path, lines: list[str], retry: float = 3600) -> SessionSaver:
    return SessionSaver(folder, 120, lambda s: folder / f"session-{s.index:04d}.mid", warn=lines.append,
                        retry=retry)


def test_a_full_disk_keeps_sessions_in_memory_and_writes_them_in_order_when_space_frees(tmp_path, monkeypatch):
    disk, lines = Disk(monkeypatch), []
    saver = saver_in(tmp_path, lines)
    saver.save(session(0))
    disk.full = True
    saver.save(session(1))
    saver.save(session(2))
    assert [f.name for f in sorted(tmp_path.glob("*.mid"))] == ["session-0000.mid"]
    assert len(lines) == 2 and all("the disk is full" in line and "free some space" in line for line in lines)
    assert "(2 waiting)" in lines[1]
    disk.full = False
    saver.save(session(3))  # the next session boundary retries the waiting ones first
    paths = saver.close()
    assert [p.name for p in paths] == [f"session-{i:04d}.mid" for i in range(4)]
    assert [mido.MidiFile(p).tracks[1][1].note for p in paths if len(mido.MidiFile(p).tracks[1]) > 2] == [
        60, 61, 62, 63]
    assert "saving works again" in lines[-1]


def test_waiting_sessions_are_retried_without_a_new_session(tmp_path, monkeypatch):
    disk, lines = Disk(monkeypatch), []
    disk.full = True
    saver = saver_in(tmp_path, lines, retry=0.05)
    saver.save(session(0))
    disk.full = False
    deadline = time.monotonic() + 10
    while saver.waiting and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not saver.waiting and (tmp_path / "session-0000.mid").exists()
    saver.close()


def test_a_vanished_folder_is_made_again_at_the_end_so_nothing_is_lost(tmp_path):
    folder, lines = tmp_path / "sessions", []
    folder.mkdir()
    saver = saver_in(folder, lines)
    folder.rmdir()
    saver.save(session(0))
    assert "the folder" in lines[0] and "is gone" in lines[0] and f"mkdir {folder}" in lines[0]
    assert not folder.exists()  # not made again while playing: it may be a drive not mounted right now
    paths = saver.close()
    assert [p.name for p in paths] == ["session-0000.mid"] and paths[0].exists()


def test_sessions_that_never_can_be_written_are_one_clear_error_at_the_end(tmp_path):
    folder, lines = tmp_path / "sessions", []
    folder.mkdir()
    saver = saver_in(folder, lines)
    folder.rmdir()
    folder.write_text("a file where the folder was")
    saver.save(session(0))
    assert "is no longer a folder" in lines[0]
    with pytest.raises(SessionsNotSaved, match=r"1 sessions could not be saved .* move the file"):
        saver.close()


def test_only_old_temporary_session_files_are_tidied(tmp_path):
    old = tmp_path / ".session-x-0000.mid.abc.part"
    fresh = tmp_path / ".session-x-0001.mid.def.part"  # another run may be writing it right now
    other = tmp_path / ".notes.txt.ghi.part"
    for f in (old, fresh, other):
        f.write_bytes(b"MThd")
    os.utime(old, (time.time() - 3600,) * 2)
    os.utime(other, (time.time() - 3600,) * 2)
    assert tidy_parts(tmp_path) == 1
    assert not old.exists() and fresh.exists() and other.exists()
