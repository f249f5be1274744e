"""Area under the ROC curve and the curve itself, for scores where larger means "positive".

AUROC = P(S+ > S-) + P(S+ = S-) / 2 over independent positive and negative scores, the
Mann-Whitney U statistic divided by n+ n- (Hanley & McNeil, 1982), computed from mid-ranks so
ties count one half.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _check(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(positives, np.float64).ravel(), np.asarray(negatives, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {len(pos)} and {len(neg)}")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("AUROC scores must be finite")
    return pos, neg


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted 1/2: U / (n+ n-) from mid-ranks."""
    pos, neg = _check(positives, negatives)
    ranks = rankdata(np.concatenate([pos, neg]))  # mid-ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def roc_curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) for every threshold, from (0, 0) to (1, 1)."""
    pos, neg = _check(positives, negatives)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = (pos[None, :] >= thresholds[:, None]).mean(1)
    fpr = (neg[None, :] >= thresholds[:, None]).mean(1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
