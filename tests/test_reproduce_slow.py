"""End to end: the README's main command on the tiny preset (minutes; run with -m slow)."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    result = CliRunner().invoke(app, ["reproduce", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "summary.csv").set_index("model")
    students = {"consistency", "progressive", "add"}
    assert {"ground-truth", "fm-teacher", "fm-teacher-4", "ntm", "ntm-fast"} | students <= set(frame.index)
    required = ["family", "steps", "nfe", "params", "train_steps", "teacher_nfe", "geneval_overall", "nll_bpd", "nll_estimator"]
    assert all(c in frame.columns for c in required)
    assert frame.loc["ground-truth", "geneval_overall"] == 1.0
    assert frame.loc["fm-teacher", "nll_bpd"] < 8.0  # better than the uniform density
    assert frame.loc["ntm", "nll_bpd"] < 8.0 and frame.loc["ntm", "nll_estimator"] == "iwae"
    assert set(frame.loc[sorted(students), "family"]) == {"consistency", "distilled", "adversarial"}
    assert (frame.loc[sorted(students), "steps"] == 4).all() and (frame.loc[sorted(students), "teacher_nfe"] > 0).all()
    for name in ("summary.md", "summary.tex", "samples/fm-teacher.png", "samples/fm-teacher-4.png"):
        assert (out / name).is_file()
