"""A MIDI file to a 16-bit WAV through FluidSynth, offline.

The synth is driven, not played in real time: for each event FluidSynth renders exactly the frames up to
the event's frame (``fluid_synth_write_float`` into the output buffer), then the event is applied, so
every note is placed by its own time in the file, not by a player's timer. FluidSynth starts a voice on
the edge of its 64-frame internal block, whatever the frame it was asked at; events are therefore handed
to it half a block early, and a note starts on the block edge nearest its own frame: within 32 frames
(0.73 ms at 44.1 kHz) of it, early or late, rather than up to 63 frames late.

After the file's end every note is released (sustain up, all notes off), and the release and the reverb
ring on until they fall 70 dB below the piece's peak, at most ``TAIL_SECONDS``. The floats are kept in a
temporary file (any length in constant memory), then scaled so the peak is at ``PEAK_DBFS`` -- never
clipped -- and written as 16-bit stereo, the WAV renamed into place when whole.
"""

from __future__ import annotations

import ctypes
import math
import os
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from ..errors import MidiFileError, SynthError
from ..music.encoding import DEFAULT_PROGRAM, atomic_write
from .synth import DRUM_CHANNEL, N_CHANNELS, _c, all_notes_off, open_synth, play_message

DEFAULT_SAMPLE_RATE = 44100
SAMPLE_RATES = (8000, 96000)  # what FluidSynth takes
MAX_RENDER_SECONDS = 30 * 60.0  # a longer file is refused: a night of sessions is rendered file by file
TAIL_SECONDS = 3.0  # the most of release kept after the file's end
TAIL_FLOOR_DB = -70.0  # the tail is cut once it stays this far below the piece's peak for two pieces of 10 ms
PEAK_DBFS = -1.0  # the loudest sample after normalising
FADE_SECONDS = 0.02  # a fade over the very end, so a cut tail never clicks
RENDER_GAIN = 0.5  # FluidSynth's gain; its float output is normalised afterwards, so only headroom matters
FLUID_BLOCK = 64  # FluidSynth's internal block (FLUID_BUFSIZE): voices start on its edges
CHUNK = 1 << 16  # frames rendered into memory before they go to the temporary file


@dataclass
class Rendered:
    """What ``render_midi`` wrote."""

    path: Path
    seconds: float  # of audio
    piece_seconds: float  # the MIDI file's own length
    sample_rate: int
    notes: int
    peak_dbfs: float  # after normalising
    rms_dbfs: float  # over the whole file, both channels
    gain_db: float  # what normalising applied
    render_seconds: float  # wall-clock time it took, reading the file and writing the WAV included

    @property
    def tail_seconds(self) -> float:
        return self.seconds - self.piece_seconds


def midi_events(path: str | os.PathLike) -> tuple[list[tuple[float, mido.Message]], float]:
    """(time in seconds, message) of every channel message of a MIDI file, in order, through its tempo map,
    and the file's length in seconds. MidiFileError (one line) for a file that is not MIDI or too long."""
    path = Path(path)
    if not path.is_file():
        raise MidiFileError(f"{path}: no such MIDI file")
    events, now = [], 0.0
    try:
        mid = mido.MidiFile(path)
        for msg in mid:  # all tracks merged; msg.time: seconds since the message before
            now += msg.time
            if now > MAX_RENDER_SECONDS:
                raise MidiFileError(f"{path}: lasts more than {MAX_RENDER_SECONDS / 60:.0f} minutes; render "
                                    "takes up to that: split it into smaller files")
            if not msg.is_meta and hasattr(msg, "channel"):
                events.append((now, msg))
    except MidiFileError:
        raise
    except Exception as e:  # mido raises many kinds of errors on files that are not MIDI
        raise MidiFileError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from None
    return events, now


def start_programs(events: list[tuple[float, mido.Message]], program: int | None):
    """(events, {channel: program at the start}).

    program None: the file's own program changes are kept, and channels without one get DEFAULT_PROGRAM.
    A program: it is given to every channel, and the file's own program changes are left out. The drum
    channel (10) keeps its drum kit either way.
    """
    melodic = [c for c in range(N_CHANNELS) if c != DRUM_CHANNEL]
    if program is not None:
        return [(t, m) for t, m in events if m.type != "program_change"], dict.fromkeys(melodic, program)
    own = {m.channel for _, m in events if m.type == "program_change"}
    return events, {c: DEFAULT_PROGRAM for c in melodic if c not in own}


class _Frames:
    """The synth's output rendered frame by frame into memory, full chunks spilled to ``out`` as float32."""

    def __init__(self, synth, out):
        self.synth = synth
        self.out = out
        self.buf = np.zeros((CHUNK, 2), np.float32)  # interleaved stereo
        self.fill = 0  # frames in buf
        self.pos = 0  # frames rendered in all
        self.peak = 0.0
        # fluid_synth_write_float(synth, frames, left, left offset, left step, right, right offset, right step)
        self._write = _c("fluid_synth_write_float", ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                         ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)

    def render_to(self, frame: int) -> float:
        """Render up to ``frame`` (nothing if already there); the peak of what was rendered."""
        n, peak = frame - self.pos, 0.0
        while n > 0:
            k = min(n, CHUNK - self.fill)
            ptr = self.buf.ctypes.data + self.fill * self.buf.strides[0]
            if self._write(self.synth.synth, k, ptr, 0, 2, ptr, 1, 2) != 0:
                raise SynthError("FluidSynth failed to render")
            peak = max(peak, float(np.abs(self.buf[self.fill:self.fill + k]).max()))
            self.fill += k
            self.pos += k
            n -= k
            if self.fill == CHUNK:
                self.spill()
        self.peak = max(self.peak, peak)
        return peak

    def spill(self) -> None:
        self.out.write(self.buf[:self.fill].tobytes())
        self.fill = 0

    def ring_out(self, rate: int) -> None:
        """Render the release until it stays ``TAIL_FLOOR_DB`` below the peak for 20 ms, or ``TAIL_SECONDS``."""
        floor = self.peak * 10 ** (TAIL_FLOOR_DB / 20)
        piece, quiet = rate // 100, 0
        for _ in range(math.ceil(TAIL_SECONDS * 100)):
            quiet = quiet + 1 if self.render_to(self.pos + piece) <= floor else 0
            if quiet == 2:
                break


def render_midi(midi_path: str | os.PathLike, wav_path: str | os.PathLike, soundfont: str | os.PathLike,
                program: int | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE) -> Rendered:
    """Render ``midi_path`` through ``soundfont`` to a 16-bit stereo WAV at ``wav_path``.

    program: None keeps the file's own program changes (DEFAULT_PROGRAM where a channel has none); 0..127
    plays every channel (but the drums) with that General MIDI program instead.
    """
    t0 = time.perf_counter()
    if not SAMPLE_RATES[0] <= sample_rate <= SAMPLE_RATES[1]:
        raise SynthError(f"--sample-rate {sample_rate}: FluidSynth takes {SAMPLE_RATES[0]}..{SAMPLE_RATES[1]} Hz")
    if program is not None and not 0 <= program <= 127:
        raise SynthError(f"--program {program}: General MIDI programs are 0..127")
    events, length = midi_events(midi_path)
    notes = sum(1 for _, m in events if m.type == "note_on" and m.velocity > 0)
    if not notes:
        raise MidiFileError(f"{midi_path}: holds no notes to render")
    events, programs = start_programs(events, program)
    synth = open_synth(Path(soundfont), sample_rate, RENDER_GAIN, settings={"synth.dynamic-sample-loading": 1})
    try:
        for channel, p in programs.items():
            synth.program_change(channel, p)
        with tempfile.TemporaryFile() as raw:
            frames = _Frames(synth, raw)
            for t, msg in events:
                frames.render_to(round(t * sample_rate) - FLUID_BLOCK // 2)  # half a block early: see above
                play_message(synth, msg)
            frames.render_to(round(length * sample_rate))
            all_notes_off(synth)
            frames.ring_out(sample_rate)
            frames.spill()
            if frames.peak <= 0:
                raise SynthError(f"{midi_path} rendered as silence: the SoundFont has none of its programs")
            gain = 10 ** (PEAK_DBFS / 20) / frames.peak
            raw.seek(0)
            try:
                sum_sq, peak = _write_wav(wav_path, raw, frames.pos, sample_rate, gain)
            except OSError as e:
                raise SynthError(f"cannot write {wav_path}: {e.strerror or e}") from None
    finally:
        synth.delete()
    rms = math.sqrt(sum_sq / (2 * frames.pos)) if frames.pos else 0.0
    return Rendered(Path(wav_path), frames.pos / sample_rate, length, sample_rate, notes,
                    peak_dbfs=20 * math.log10(max(peak, 1e-10)), rms_dbfs=20 * math.log10(max(rms, 1e-10)),
                    gain_db=20 * math.log10(gain), render_seconds=time.perf_counter() - t0)


def _write_wav(path: str | os.PathLike, raw, n_frames: int, rate: int, gain: float) -> tuple[float, float]:
    """Write ``n_frames`` float32 stereo frames from ``raw``, times ``gain``, as a 16-bit WAV (atomically);
    returns the sum of the squares of the samples written and their peak (full scale = 1)."""
    fade = max(1, round(FADE_SECONDS * rate))
    total = peak = 0.0

    def write(tmp: str) -> None:
        nonlocal total, peak
        with wave.open(tmp, "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(rate)
            done = 0
            while done < n_frames:
                k = min(CHUNK, n_frames - done)
                x = np.frombuffer(raw.read(k * 8), np.float32).reshape(-1, 2) * gain
                ramp_from = n_frames - fade  # the fade-out's first frame
                if done + k > ramp_from:
                    i = np.arange(done, done + k)
                    x *= np.clip((n_frames - i) / fade, 0.0, 1.0)[:, None]
                pcm = np.clip(np.round(x * 32767), -32767, 32767).astype("<i2")
                total += float(np.sum((pcm / 32767.0) ** 2))
                peak = max(peak, float(np.abs(pcm).max()) / 32767.0)
                w.writeframes(pcm.tobytes())
                done += k

    atomic_write(path, write)
    return total, peak
