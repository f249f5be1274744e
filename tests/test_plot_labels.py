"""quality_vs_nfe: the point labels of models at the same NFE never overlap."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from matplotlib.text import Text

from benchmarks.plots import QUALITY_AXES, quality_vs_nfe_figure

FID = next(m for m in QUALITY_AXES if m.startswith("fid"))


def crowded_frame() -> pd.DataFrame:
    """Five models at NFE 4 (two at the very same scores), three at NFE 8 and 9, and two close references."""
    rows = [
        ("ground-truth", "reference", 0, 1.0, 0.016),
        ("ground-truth-2", "reference", 0, 0.995, 0.017),
        ("add", "adversarial", 4, 0.047, 0.666),
        ("consistency", "consistency", 4, 0.104, 0.081),
        ("consistency-lcm", "consistency", 4, 0.104, 0.081),
        ("progressive", "distilled", 4, 0.105, 0.080),
        ("progressive-2", "distilled", 4, 0.103, 0.082),
        ("fm-teacher-4", "flow-matching", 8, 0.167, 0.069),
        ("ntm", "ntm", 8, 0.089, 0.124),
        ("ntm-eta0.5", "ntm", 8, 0.089, 0.124),
        ("ntm-fast", "ntm", 9, 0.089, 0.125),
    ]
    return pd.DataFrame(rows, columns=["model", "family", "nfe", "geneval_overall", FID])


def test_labels_of_points_at_the_same_nfe_do_not_overlap():
    frame = crowded_frame()
    fig = quality_vs_nfe_figure(frame)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    assert len(fig.axes) == 2
    for ax, metric in zip(fig.axes, ("geneval_overall", FID), strict=True):
        labels = {t.get_text(): t for t in ax.texts}
        assert set(labels) == set(frame["model"])
        # the text alone (without a leader line): Text's own extent, not the Annotation's union with its arrow
        boxes = {name: Text.get_window_extent(t, renderer) for name, t in labels.items()}
        for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
            assert not box_a.overlaps(box_b), (metric, a, b, box_a, box_b)
        for name, box in boxes.items():
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, name
        for _, row in frame[frame["nfe"] > 0].iterrows():  # each label still points at its model's point
            assert labels[row["model"]].xy == pytest.approx((row["nfe"], row[metric]))


def test_label_placement_is_deterministic():
    def positions():
        fig = quality_vs_nfe_figure(crowded_frame())
        fig.canvas.draw()
        return [(t.get_text(), tuple(t.xyann)) for ax in fig.axes for t in ax.texts]

    assert positions() == positions()
