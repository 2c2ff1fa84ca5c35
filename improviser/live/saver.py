"""Saving finished sessions so that none is lost when the disk is full or the sessions folder vanishes.

``SessionSaver.save(session)`` writes a session file at once if it can. If the
write fails (no space left, the folder removed or replaced, permission taken
away), it says so in one line at that moment, keeps the session in memory and
tries again every ``retry`` seconds and whenever the next session comes; the
waiting sessions are written in playing order as soon as writing works again.
The folder is not made again while playing (it may be a drive that is not
mounted right now); on ``close`` it is, as a last resort, so the music is kept.

Every file is written atomically (a hidden ``.NAME.*.part`` file beside it, then
a rename), so a crash or SIGKILL never leaves half a session under a session's
name. Temporary files that a killed run left behind are tidied away at start.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ImproviserError
from .recorder import Session

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
PATHS_KEPT = 1000  # written paths remembered for the caller; a run of days writes many more
STALE_PART_SECONDS = 60.0  # a temporary file this old belongs to no write in progress


class SessionsNotSaved(ImproviserError):
    """Sessions could not be written even at the end of the run."""


def why_not_written(e: OSError, folder: Path) -> str:
    """A short reason, in the user's terms, for a failed session write."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return "the disk is full"
    if e.errno == errno.ENOENT and not folder.exists():
        return f"the folder {folder} is gone"
    if e.errno == errno.ENOTDIR or (folder.exists() and not folder.is_dir()):
        return f"{folder} is no longer a folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write in {folder}"
    return e.strerror or str(e)


class SessionSaver:
    """Writes sessions into ``folder`` in order, keeping in memory (and retrying) those that cannot be written.

    path_for(session): the file for a session (called at each attempt).
    on_written(path, session): called after each file is written.
    warn(text): one line per session that cannot be written, and one when writing works again.
    Thread-safe: ``save`` may be called from one thread while the retry thread writes.
    """

    def __init__(self, folder: str | Path, bpm: float, path_for: Callable[[Session], Path],
                 on_written: Callable[[Path, Session], None] | None = None,
                 warn: Callable[[str], None] | None = None, retry: float = RETRY_SECONDS,
                 tempo: Callable[[Session], tuple[Session, float]] | None = None):
        self.folder = Path(folder)
        self.bpm = bpm
        self.tempo = tempo  # (session) -> (session, bpm) to write it in: --bpm auto's, the player's
        self.path_for = path_for
        self.on_written = on_written
        self.warn = warn or log.warning
        self.retry = retry
        self.paths: collections.deque = collections.deque(maxlen=PATHS_KEPT)  # the last written, in order
        self.n_written = 0
        self.waiting: list[Session] = []  # not written yet, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reason: str | None = None
        tidy_parts(self.folder)
        self._thread = threading.Thread(target=self._retry_loop, name="improviser-saver", daemon=True)
        self._thread.start()

    def save(self, session: Session) -> None:
        """Write ``session`` after any that are waiting; if that fails, keep it and say so. Never raises OSError."""
        with self._lock:
            self.waiting.append(session)
            if self._write_waiting() is not None:
                self.warn(f"cannot save session {session.index} in {self.folder}: {self._reason}; keeping it "
                          f"in memory ({len(self.waiting)} waiting) and trying again every {self.retry:g} s -- "
                          f"{self._advice()}")

    def close(self, raise_errors: bool = True) -> list[Path]:
        """Stop retrying and write what is waiting, making the folder again if it is gone.

        Returns the paths written (the last PATHS_KEPT of them; ``n_written`` counts them all).

        Raises SessionsNotSaved if sessions still cannot be written (unless ``raise_errors`` is false).
        """
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self.waiting and not self.folder.exists():
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self.warn(f"made the sessions folder {self.folder} again to save {len(self.waiting)} "
                              "waiting sessions")
                except OSError:
                    pass  # reported below, with the write error
            if self.waiting and self._write_waiting() is not None and raise_errors:
                raise SessionsNotSaved(f"{len(self.waiting)} sessions could not be saved in {self.folder}: "
                                       f"{self._reason}; {self._advice()} before stopping next time")
        return list(self.paths)

    # ---- internals ------------------------------------------------------------------------------

    def _write_waiting(self) -> OSError | None:
        """Write the waiting sessions in order (lock held); the error that stopped it, or None."""
        while self.waiting:
            session = self.waiting[0]
            try:
                shaped, bpm = self.tempo(session) if self.tempo is not None else (session, self.bpm)
                path = shaped.write(self.path_for(session), bpm)
            except OSError as e:
                self._reason = why_not_written(e, self.folder)
                return e
            if self._reason is not None:  # the first write after a failure
                self.warn(f"saving works again in {self.folder}: writing the {len(self.waiting)} waiting sessions")
                self._reason = None
            self.waiting.pop(0)
            self.paths.append(path)
            self.n_written += 1
            if self.on_written is not None:
                self.on_written(path, session)
        return None

    def _advice(self) -> str:
        if self._reason == "the disk is full":
            return "free some space"
        if not self.folder.exists():
            return f"make the folder again (mkdir {self.folder})"
        if not self.folder.is_dir():
            return f"move the file {self.folder} away and make the folder again"
        return f"make {self.folder} writable"

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry):
            with self._lock:
                if self.waiting:
                    self._write_waiting()


def tidy_parts(folder: Path, older_than: float = STALE_PART_SECONDS) -> int:
    """Remove temporary session files (``.session-*.part``) that a killed run left in ``folder``.

    Only files older than ``older_than`` seconds go, so another run's write in progress is left
    alone. Returns how many were removed.
    """
    removed = 0
    now = time.time()
    try:
        leftovers = list(folder.glob(".session-*.part"))
    except OSError:
        return 0
    for part in leftovers:
        try:
            if now - part.stat().st_mtime > older_than:
                part.unlink()
                removed += 1
        except OSError:  # gone already, or not ours to remove: leave it
            continue
    if removed:
        log.info("removed %d unfinished temporary files from an earlier run in %s", removed, folder)
    return removed
