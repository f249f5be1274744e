"""AUROC and ROC curve against scikit-learn, ties included."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.audit.roc import auroc, roc_curve


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float) + 0.5
    neg = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
    neg[: len(neg) // 2] += 0.5  # half the negatives tie some positives
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    expected = roc_auc_score(labels, np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    fpr, tpr = roc_curve(pos, neg)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, abs=1e-12)  # ties are diagonal segments


def test_hand_cases():
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([1, 3], [2]) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc([], [1.0])
