"""Session seams: notes held over a seam, and notes struck again exactly on it, survive in the files."""

import mido

from improviser.live.recorder import SessionRecorder


def notes_of(session):
    return [(n.pitch, round(n.start, 4), round(n.end, 4)) for n in session.notes()]


def on(p):
    return mido.Message("note_on", note=p, velocity=80)


def off(p):
    return mido.Message("note_off", note=p, velocity=0)


def test_note_struck_again_on_the_seam_step_is_kept(tmp_path):
    rec = SessionRecorder(0.0)
    rec.record(on(60), 0.5)
    rec.record(on(64), 0.5)
    # Seam at 2.0; the sender's messages for that step go out a fraction of a ms later.
    first = rec.split(2.0)
    rec.record(off(60), 2.0003)
    rec.record(on(60), 2.0003)  # 60 is struck again on the seam step
    rec.record(off(64), 2.0003)  # 64 ends on the seam step
    rec.record(off(60), 3.0)
    second = rec.finish(4.0)
    assert notes_of(first) == [(60, 0.5, 2.0), (64, 0.5, 2.0)]
    assert notes_of(second) == [(60, 0.0003, 1.0)]
    second.write(tmp_path / "s.mid", bpm=120)
    msgs = [m for m in mido.MidiFile(tmp_path / "s.mid") if m.type in ("note_on", "note_off")]
    assert [(m.type, m.note) for m in msgs] == [("note_on", 60), ("note_off", 60)]
    assert sum(m.time for m in msgs) > 0.99  # the one-second note, not a sliver


def test_note_held_over_the_seam_is_struck_again_in_the_next_session():
    rec = SessionRecorder(0.0)
    rec.record(on(67), 1.0)
    first = rec.split(2.0)
    rec.record(off(67), 2.5)
    second = rec.finish(3.0)
    assert notes_of(first) == [(67, 1.0, 2.0)]
    assert notes_of(second) == [(67, 0.0, 0.5)]
