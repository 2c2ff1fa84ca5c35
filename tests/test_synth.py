"""The built-in synth, for real: FluidSynth with the system's General MIDI SoundFont renders files to WAV
(length, level, no clipping, each note at its time, the program rule), sounds on a JACK server's audio ports
while it records, and says what is wrong in one line."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mido
import numpy as np
import pytest
from conftest import skip_or_fail
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from improviser.music.encoding import TimedNote, write_midi
from improviser.testing import Run, attack_delays, cli, dbfs, file_notes, mangled, one_line_error, read_wav

MELODY = [67, 69, 71, 72, 74, 72, 71, 69, 67, 71, 74, 79, 78, 76, 74, 72]  # G major, in quarter notes


@pytest.fixture(scope="module")
def synth() -> Path:
    """The SoundFont the synth finds here; the test skips (fails in CI) without FluidSynth or a SoundFont."""
    from improviser.errors import SynthError
    from improviser.sound.synth import find_soundfont, fluidsynth_module

    try:
        fluidsynth_module()
        return find_soundfont()
    except SynthError as e:
        skip_or_fail(str(e))


def melody_file(path: Path) -> Path:
    write_midi(path, {"tune": [TimedNote(p, i * 0.6, i * 0.6 + 0.55, 90) for i, p in enumerate(MELODY)]}, bpm=100)
    return path


@pytest.mark.parametrize("kind", ["generated", "session"])
def test_a_file_renders_to_its_length_plus_release_loud_enough_and_never_clipped(synth, tmp_path, kind):
    mid, wav = tmp_path / f"{kind}.mid", tmp_path / f"{kind}.wav"
    if kind == "generated":
        assert cli("generate", mid, "--seconds", 12, "--seed", 5).exit_code == 0
    else:  # the player's track and its own, as a session file has them
        assert cli("accompany", melody_file(tmp_path / "tune.mid"), mid, "--seed", 2).exit_code == 0
        assert {"improviser", "player"} <= set(file_notes(mid)[2])
    r = cli("render", mid, wav)
    assert r.exit_code == 0, r.output
    x, rate = read_wav(wav)
    piece = mido.MidiFile(mid).length
    assert rate == 44100 and x.shape[1] == 2
    assert piece <= len(x) / rate <= piece + 4.0, (len(x) / rate, piece)
    assert dbfs(x) >= -35, dbfs(x)
    peak = np.abs(x).max()
    assert peak < 32767 / 32768  # no sample at full scale
    assert abs(20 * np.log10(peak) + 1.0) < 0.1  # normalised to -1 dBFS
    assert np.abs(x[-10:]).max() < 1e-3  # ends in silence: no click


def test_sixteen_isolated_notes_start_at_their_own_times(synth, tmp_path):
    # Irregular times, so they fall on every phase of the synth's 64-frame block; a piano's sharp attack.
    times = [0.2 + 0.45 * i + 0.0173 * i for i in range(16)]
    mid, wav = tmp_path / "isolated.mid", tmp_path / "isolated.wav"
    write_midi(mid, {"notes": [TimedNote(64, t, t + 0.12, 100) for t in times]}, bpm=120)
    r = cli("render", mid, wav, "--program", 0, "--sample-rate", 48000)
    assert r.exit_code == 0, r.output
    x, rate = read_wav(wav)
    assert rate == 48000
    delays = attack_delays(x, rate, times) * 1e3  # where each note first reaches a tenth of its peak
    assert delays.max() - delays.min() <= 5.0, delays
    assert -1.0 <= delays.min() and delays.max() <= 10.0, delays


def test_program_replaces_the_files_own_and_the_files_own_is_kept_otherwise(synth, tmp_path):
    mid = tmp_path / "held.mid"
    write_midi(mid, {"piano": [TimedNote(60, 0.0, 2.5, 100)]}, bpm=120, programs={"piano": [(0, 0)]})

    def sustain(*extra) -> float:  # the end of the held note against its start: a piano fades, an organ holds
        wav = tmp_path / f"held{len(extra)}.wav"
        assert cli("render", mid, wav, *extra).exit_code == 0
        x, rate = read_wav(wav)
        return dbfs(x[round(2.0 * rate):round(2.5 * rate)]) - dbfs(x[round(0.1 * rate):round(0.6 * rate)])

    assert sustain() < -12  # the file's piano
    assert sustain("--program", 19) > -3  # church organ on every channel instead


def corrupt_soundfont(path: Path) -> Path:
    path.write_bytes(b"RIFF" + (1000).to_bytes(4, "little") + b"sfbk" + b"LIST" + bytes(100))
    return path


@pytest.mark.parametrize("case", ["no soundfont", "not a soundfont", "corrupt soundfont", "not midi", "no midi",
                                  "no folder", "a folder", "itself", "program", "sample rate"])
def test_bad_render_input_is_one_line(synth, tmp_path, case):
    mid = melody_file(tmp_path / "tune.mid")
    text = tmp_path / "notes.txt"
    text.write_text("not music\n")
    args, words = {
        "no soundfont": ([mid, tmp_path / "a.wav", "--soundfont", tmp_path / "missing.sf2"], ["no such file"]),
        "not a soundfont": ([mid, tmp_path / "a.wav", "--soundfont", text], ["not a SoundFont"]),
        "corrupt soundfont": ([mid, tmp_path / "a.wav", "--soundfont", corrupt_soundfont(tmp_path / "bad.sf2")],
                              ["cannot load the SoundFont"]),
        "not midi": ([text, tmp_path / "a.wav"], ["not a readable MIDI file"]),
        "no midi": ([tmp_path / "missing.mid", tmp_path / "a.wav"], ["no such MIDI file"]),
        "no folder": ([mid, tmp_path / "gone" / "a.wav"], ["does not exist"]),
        "a folder": ([mid, tmp_path], ["is a folder"]),
        "itself": ([mid, mid], ["the MIDI file itself"]),
        "program": ([mid, tmp_path / "a.wav", "--program", 128], ["0..127"]),
        "sample rate": ([mid, tmp_path / "a.wav", "--sample-rate", 1000], ["8000..96000"]),
    }[case]
    one_line_error(cli("render", *args), *words)
    assert not (tmp_path / "a.wav").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_bad_synth_options_are_one_line_before_any_port_opens(synth, tmp_path):
    out = tmp_path / "out.mid"
    one_line_error(cli("record", out, "--synth", "--soundfont", tmp_path / "missing.sf2"), "no such file")
    one_line_error(cli("record", out, "--soundfont", corrupt_soundfont(tmp_path / "x.sf2")), "add --synth")
    one_line_error(cli("play", "--audio-driver", "alsa"), "add --synth")
    assert not out.exists()


def test_without_fluidsynth_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # as if pyfluidsynth were not installed
    mid = melody_file(tmp_path / "tune.mid")
    one_line_error(cli("render", mid, tmp_path / "a.wav"), "pip install 'improviser[synth]'", "fluidsynth")
    one_line_error(cli("record", tmp_path / "out.mid", "--synth"), "pip install 'improviser[synth]'")
    one_line_error(cli("play", "--sessions", tmp_path, "--render"), "pip install 'improviser[synth]'")
    doctor = cli("doctor").stdout
    assert re.search(r"^MISSING synth .*pip install 'improviser\[synth\]'", doctor, re.M), doctor


# ---- on a JACK server ------------------------------------------------------------------------------------

def synth_ports() -> list[str]:
    lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return sorted(p.strip() for p in lsp if re.fullmatch(r"improviser-synth[^:]*:(left|right)", p.strip()))


@pytest.mark.jack
def test_record_with_the_synth_sounds_on_jack_audio_ports_and_writes_its_file(synth, jack_server, tmp_path):
    if shutil.which("jack_rec") is None:
        skip_or_fail("jack_rec not found: install JACK's tools (Debian/Ubuntu: apt-get install jackd2)")
    out, wav = tmp_path / "take.mid", tmp_path / "heard.wav"
    run = Run("record", str(out), "--api", "jack", "--synth", "--seconds", "5", "--seed", "4")
    try:
        run.wait_for("playing into")
        ports = synth_ports()
        assert len(ports) == 2, ports
        connected = subprocess.run(["jack_lsp", "-c", *ports], capture_output=True, text=True).stdout
        assert not re.search(r"^\s+\S", connected, re.M), connected  # it connects itself nowhere
        subprocess.run(["jack_rec", "-f", str(wav), "-d", "3", *ports], check=True, capture_output=True, timeout=30)
    finally:
        if run.proc.poll() is None and not wav.exists():
            run.proc.send_signal(signal.SIGTERM)
    err = run.finish()
    assert "sounding on JACK audio ports" in err
    x, rate = read_wav(wav)
    assert rate == 48000 and len(x) >= 2.9 * rate
    assert dbfs(x) >= -40, dbfs(x)
    notes, length, _ = file_notes(out)
    assert notes and abs(length - 5) < 0.1


@pytest.mark.jack
def test_play_render_writes_a_wav_beside_each_session(synth, jack_server, tmp_path):
    run = Run("play", "--sessions", str(tmp_path), "--session-seconds", "3", "--api", "jack", "--render",
              "--seed", "1", "--bpm", "160")
    try:
        run.wait_for(r"wrote .*\.mid", n=1, timeout=60)
    finally:
        run.stop()
    sessions = sorted(tmp_path.glob("*.mid"))
    assert sessions
    for mid in sessions:
        x, rate = read_wav(mid.with_suffix(".wav"))
        piece = mido.MidiFile(mid).length
        assert piece <= len(x) / rate <= piece + 4.0
        assert dbfs(x) >= -35


@pytest.mark.jack
def test_doctor_reports_the_synth_its_soundfont_and_jack_audio(synth, jack_server):
    lines = cli("doctor").stdout.splitlines()
    fluid = next(line for line in lines if " synth " in line)
    font = next(line for line in lines if " soundfont " in line)
    jack_audio = next(line for line in lines if re.match(r"\S+\s+audio\s+jack:", line))
    assert fluid.startswith("ok") and "FluidSynth" in fluid, fluid
    assert font.startswith("ok") and str(synth) in font, font
    assert jack_audio.startswith("ok"), jack_audio


@pytest.mark.jack
def test_with_no_midi_system_record_still_plays_in_time_through_the_synth(synth, jack_server, tmp_path):
    # ALSA has no sequencer on these machines: no MIDI port, but the synth sounds on JACK's audio ports.
    out = tmp_path / "take.mid"
    started = time.monotonic()
    run = Run("record", str(out), "--api", "alsa", "--synth", "--audio-driver", "jack", "--seconds", "3")
    err = run.finish()
    if "playing into MIDI port" in err:
        pytest.skip("this machine has an ALSA sequencer")
    assert "playing through the synth only" in err and "sounding on JACK audio ports" in err, err
    assert time.monotonic() - started >= 3.0  # in time, not as fast as the model goes
    notes, length, _ = file_notes(out)
    assert notes and abs(length - 3) < 0.1


SEED = (Path(__file__).parent / "data" / "bwv10_7.mid").read_bytes()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(20, len(SEED)))
def test_what_render_reads_of_a_mangled_file_is_in_order_or_a_clean_error(tmp_path, flips, cut):
    from improviser.errors import MidiFileError
    from improviser.sound.render import MAX_RENDER_SECONDS, midi_events

    data = mangled(SEED, flips, cut)
    path = tmp_path / "mangled.mid"
    path.write_bytes(data)
    try:
        events, length = midi_events(path)
    except MidiFileError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    times = [t for t, _ in events]
    assert times == sorted(times) and all(0 <= t <= length <= MAX_RENDER_SECONDS for t in times)
