"""A piano roll of a session file: the improviser's and the player's notes in two colours, beats and bars marked."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImproviserError, MidiFileError

IMPROVISER_COLOUR = "#1f6fb4"
PLAYER_COLOUR = "#e4572e"
OTHER_COLOUR = "#555555"


def read_tracks(path: str | os.PathLike):
    """(notes per track name, beat times in seconds, bar times, end time) of a MIDI file."""
    import warnings

    import pretty_midi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = pretty_midi.PrettyMIDI(str(path))
    except FileNotFoundError:
        raise MidiFileError(f"{path}: no such MIDI file") from None
    except Exception as e:
        raise MidiFileError(f"{path}: not a readable MIDI file ({type(e).__name__})") from None
    tracks: dict[str, list] = {}
    for inst in pm.instruments:
        if not inst.is_drum:
            tracks.setdefault(inst.name or "notes", []).extend(inst.notes)
    if not any(tracks.values()):
        raise MidiFileError(f"{path}: holds no pitched notes to draw")
    end = pm.get_end_time()
    beats = pm.get_beats()
    downbeats = pm.get_downbeats()
    return tracks, beats[beats <= end], downbeats[downbeats <= end], end


def plot_session(midi_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw the piano roll of ``midi_path`` into ``png_path``; returns the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise ImproviserError("plotting needs matplotlib: pip install matplotlib") from None
    tracks, beats, bars, end = read_tracks(midi_path)
    pitches = [n.pitch for notes in tracks.values() for n in notes]
    lo, hi = min(pitches) - 2, max(pitches) + 2
    fig, ax = plt.subplots(figsize=(max(8.0, min(30.0, end / 2.5)), 4.5), dpi=100)
    for t in beats:
        ax.axvline(t, color="#dddddd", lw=0.5, zorder=0)
    for t in bars:
        ax.axvline(t, color="#999999", lw=1.0, zorder=0)
    for c in range(lo, hi + 1):
        if c % 12 == 0:
            ax.axhline(c - 0.5, color="#eeeeee", lw=0.8, zorder=0)  # the C of each octave
    legend = []
    for name, notes in tracks.items():
        colour = {"improviser": IMPROVISER_COLOUR, "player": PLAYER_COLOUR}.get(name, OTHER_COLOUR)
        by_pitch: dict[int, list] = {}
        for n in notes:
            by_pitch.setdefault(n.pitch, []).append((n.start, max(n.end - n.start, 0.01)))
        for pitch, spans in by_pitch.items():
            ax.broken_barh(spans, (pitch - 0.4, 0.8), facecolors=colour, edgecolors="white", linewidth=0.3)
        legend.append(Patch(color=colour, label=f"{name} ({len(notes)} notes)"))
    ax.set_xlim(0, end)
    ax.set_ylim(lo - 0.5, hi + 0.5)
    ax.set_xlabel("seconds (thin lines: beats, thick: bars)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or Path(midi_path).name)
    ax.legend(handles=legend, loc="upper right", fontsize=8)
    fig.tight_layout()
    from .music.encoding import atomic_write

    png_path = Path(png_path)
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return png_path
