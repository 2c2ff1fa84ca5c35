"""`improviser plot` draws the notes: pixels of the improviser's colour where its notes are, the player's too."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from improviser.cli import app
from improviser.music.encoding import TimedNote, write_midi


def colour_mask(img: np.ndarray, hex_colour: str) -> np.ndarray:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
    return (np.abs(img[..., :3] - rgb) < 0.03).all(axis=-1)


def test_plot_shows_both_tracks_where_their_notes_are(tmp_path):
    import matplotlib.image as mpimg

    from improviser.plot import IMPROVISER_COLOUR, PLAYER_COLOUR

    # Improviser: high notes in the first half; player: low notes in the second half.
    ours = [TimedNote(80 + i % 3, i * 0.5, i * 0.5 + 0.4) for i in range(10)]
    theirs = [TimedNote(50 + i % 3, 5 + i * 0.5, 5 + i * 0.5 + 0.4) for i in range(10)]
    write_midi(tmp_path / "s.mid", {"improviser": ours, "player": theirs}, 120, length=10.0)
    r = CliRunner().invoke(app, ["plot", str(tmp_path / "s.mid"), str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    img = mpimg.imread(tmp_path / "s.png")
    blue, orange = colour_mask(img, IMPROVISER_COLOUR), colour_mask(img, PLAYER_COLOUR)
    assert blue.sum() > 500 and orange.sum() > 500
    by, bx = np.nonzero(blue)
    oy, ox = np.nonzero(orange)
    # Ignore the legend swatches (top right): compare where most of each colour is.
    assert np.median(bx) < np.median(ox), "the improviser plays first, the player second"
    assert np.median(by) < np.median(oy), "the improviser's notes are higher (smaller row index)"


def test_plot_errors_are_one_line(tmp_path):
    (tmp_path / "bad.mid").write_text("nope")
    r = CliRunner().invoke(app, ["plot", str(tmp_path / "bad.mid"), str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "not a readable MIDI" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["plot", str(Path(tmp_path) / "gone.mid"), str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "no such MIDI file" in r.stderr


def test_play_plot_draws_a_picture_beside_each_session_file(jack_server, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import matplotlib.image as mpimg

    from improviser.plot import IMPROVISER_COLOUR

    folder = tmp_path / "sessions"
    proc = subprocess.Popen([sys.executable, "-m", "improviser", "play", "--sessions", str(folder),
                             "--session-seconds", "2", "--bpm", "120", "--api", "jack", "--plot", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.png"))) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no pictures appeared"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    for png in sorted(folder.glob("*.png"))[:2]:
        assert png.with_suffix(".mid").is_file()
        assert colour_mask(mpimg.imread(png), IMPROVISER_COLOUR).sum() > 200
