"""evaluate --accompaniment: the real accompany command on held-out tune files, its output read back and measured
beside Bach (improviser.live.accompaniment_eval)."""

from __future__ import annotations

import math

import numpy as np
from typer.testing import CliRunner

from improviser.cli import _invoke_self, app
from improviser.live.accompaniment_eval import (
    BACH,
    evaluate_accompaniment,
    file_counts,
    format_accompaniment,
    output_rolls,
)
from improviser.music.accompaniment_metrics import FIGURES
from improviser.music.encoding import read_midi
from improviser.music.melody_files import melody_files


def test_two_tunes_through_accompany_give_six_figures_in_range_beside_bach():
    result = evaluate_accompaniment(_invoke_self, ["accompany"], n_tunes=2, part="report", progress=False)
    live = result["rows"]["accompany (live)"]
    assert live["tunes"] == 2 and live["failed"] == 0
    for k in FIGURES[:5]:
        assert 0.0 <= live[k] <= 1.0, k
    assert live["parallels_per_100"] >= 0 or math.isnan(live["parallels_per_100"])
    assert live["seconds_per_tune"] > 0
    assert result["rows"]["harmonise"] is None  # not asked for here
    bach = result["rows"][BACH]
    assert bach["pieces"] > 20
    assert bach["on_top"] > 0.95 and bach["four_voices"] > 0.8  # four parts under the soprano
    table = "\n".join(format_accompaniment(result))
    assert "accompany (live)" in table and "harmonise: not available" in table and "Bach" in table


def test_an_output_is_aligned_on_the_players_first_note(tmp_path):
    source = melody_files(1, "report")[0].path
    out = tmp_path / "out.mid"
    code, text = _invoke_self(["accompany", str(source), str(out), "--seed", "0"])
    assert code == 0, text
    onset, _, own = output_rolls(out)
    tune = read_midi(source)
    by = int(np.flatnonzero(onset.any(axis=1))[0]) - int(np.flatnonzero(tune.onset.any(axis=1))[0])
    played = onset[by:by + len(tune)]
    assert (played == tune.onset[:len(played)]).all()  # the player track is the source tune, moved by ``by``
    counts = file_counts(source, out)
    assert counts["beats"] > 0 and counts["pairs"] > 0


def test_evaluate_accompaniment_checks_the_part():
    result = CliRunner().invoke(app, ["evaluate", "--accompaniment", "--part", "middle"])
    assert result.exit_code == 1 and "--part must be tune or report" in result.output
