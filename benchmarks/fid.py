"""FID and KID between two image sets, from features of a fixed image network.

FID (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", eq. 6) is the Frechet distance between Gaussians fitted to the two feature sets:
d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2). KID (Binkowski et al., 2018,
"Demystifying MMD GANs", sec. 5 / appendix) is the unbiased MMD^2 estimate under the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

Feature networks: the eval-CLIP image tower for our worlds (`benchmarks.features`), or clean-fid's
InceptionV3 torchscript with clean-fid's "clean" resize (Parmar et al., 2022) for real photos. Feature
statistics are cached on disk, keyed by the image bytes and the network's hash.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.records import atomic_write_bytes

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CLEANFID_CACHE = Path("/tmp")
"""Where clean-fid itself downloads the Inception torchscript on Linux/macOS (cleanfid.features)."""


@dataclass(frozen=True)
class FeatureNet:
    """An image embedding uint8 (N, C, H, W) -> float (N, d), named and identified by a hash of its weights."""

    name: str
    weights_hash: str
    embed: Callable[[np.ndarray], np.ndarray]
    accuracy: float | None = None
    """The network's own measured accuracy as a ruler (eval-CLIP: held-out retrieval top-1), if known."""


@dataclass(frozen=True)
class FeatureStats:
    """Gaussian fit of a feature set (mean, unbiased covariance, count) and the features themselves (for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray


def gaussian_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased (n - 1) covariance of (n, d) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (n >= 2, d) features, got shape {f.shape}")
    return FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), len(f),
                        np.asarray(features, dtype=np.float32))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix, rounding-negative eigenvalues clipped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 between N(mu1, S1) and N(mu2, S2) (Heusel et al., 2017, eq. 6).

    tr (S1 S2)^1/2 is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2, which has the same spectrum as S1 S2; this needs no general sqrtm and stays
    real and finite for singular covariances (fewer samples than dimensions).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root = _psd_sqrt(s1)
    middle = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_bootstrap(
    generated: np.ndarray, reference: FeatureStats, draws: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """A `level` interval for FID(generated, reference) over the generated images, the reference held fixed.

    Each draw resamples the generated features with replacement (numpy default_rng(seed)) and recomputes
    FID against the fixed reference. Resampling with replacement repeats images, which inflates FID on
    average; the percentile interval is therefore shifted by the draws' mean minus the point estimate
    (a bias-corrected percentile interval), so it is centred where the point estimate's sampling
    distribution is. S_ref^1/2 is computed once; a draw needs the eigenvalues of R S R (R = S_ref^1/2), which
    are those of the smaller of Y^T Y and Y Y^T for Y = (X - mean) R / sqrt(n - 1): cheap in 2048-d Inception
    features when the sample is smaller than that.
    """
    g = np.asarray(generated, np.float64)
    if g.ndim != 2 or len(g) < 2:
        raise ValueError(f"need (n >= 2, d) generated features, got shape {g.shape}")
    if draws < 2:
        raise ValueError(f"fid bootstrap needs draws >= 2, got {draws}")
    root = _psd_sqrt(reference.sigma)
    const = np.trace(reference.sigma)
    n, d = g.shape

    def fid(x: np.ndarray) -> float:
        mu = x.mean(axis=0)
        centred = x - mu
        y = centred @ root / np.sqrt(n - 1)
        gram = y @ y.T if n < d else y.T @ y
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)).sum()
        diff = mu - reference.mu
        return float(diff @ diff + (centred * centred).sum() / (n - 1) + const - 2.0 * tr_covmean)

    rng = np.random.default_rng(seed)
    point = fid(g)
    values = np.array([fid(g[rng.integers(0, len(g), len(g))]) for _ in range(draws)])
    shift = values.mean() - point
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) - shift
    return float(lo), float(hi)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under k(x, y) = (x.y / d + 1)^3 (Binkowski et al., 2018)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise ValueError(f"need two (m >= 2, d) samples of one shape, got {x.shape} and {y.shape}")
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and (population) std of `mmd2_unbiased` over `subsets` random subset pairs.

    Each subset draws min(subset_size, n1, n2) rows without replacement from each set, first from
    set 1 then from set 2, with numpy's default_rng(seed).
    """
    if subsets < 1:
        raise ValueError(f"kid subsets must be >= 1, got {subsets}")
    m = min(subset_size, len(features1), len(features2))
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        x = features1[rng.choice(len(features1), m, replace=False)]
        y = features2[rng.choice(len(features2), m, replace=False)]
        scores.append(mmd2_unbiased(x, y))
    return float(np.mean(scores)), float(np.std(scores))


def cache_key(images: np.ndarray, net: FeatureNet) -> str:
    """sha256 over the network's hash, the array's dtype and shape, and the image bytes."""
    h = hashlib.sha256()
    h.update(f"{net.name}|{net.weights_hash}|{images.dtype}|{images.shape}|".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where reference feature statistics are cached unless a suite option says otherwise:
    $NTM_BENCH_CACHE/fid-stats, else $XDG_CACHE_HOME/ntm-bench/fid-stats, else ~/.cache/ntm-bench/fid-stats."""
    import os

    if os.environ.get("NTM_BENCH_CACHE"):
        return Path(os.environ["NTM_BENCH_CACHE"]) / "fid-stats"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ntm-bench" / "fid-stats"


def feature_stats(
    images: np.ndarray, net: FeatureNet, batch_size: int = 64, cache_dir: str | Path | None = None
) -> FeatureStats:
    """Features and their Gaussian fit for uint8 (N, C, H, W) images; read from / written to `cache_dir`."""
    path = None if cache_dir is None else Path(cache_dir) / f"{cache_key(images, net)}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return FeatureStats(z["mu"], z["sigma"], int(z["n"]), z["features"])
    with torch.no_grad():
        parts = [np.asarray(net.embed(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    stats = gaussian_stats(np.concatenate(parts))
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=stats.n, features=stats.features)
        atomic_write_bytes(path, buf.getvalue())
    return stats


def _numpy_features(out: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float32)


def eval_clip_net(world: str, resolution: int, device: torch.device | str) -> FeatureNet:
    """The world's eval-CLIP image tower (`benchmarks.features.load_eval_clip`) as a FeatureNet."""
    from benchmarks.features import load_eval_clip

    clip = load_eval_clip(world, resolution, device)
    embed = lambda images: _numpy_features(clip.image_features(images))  # noqa: E731
    return FeatureNet("eval-clip", clip.weights_hash, embed, clip.report.get("accuracy"))


def find_inception(path: str | Path | None) -> Path:
    """clean-fid's Inception torchscript file: `path` (the file or its folder), else clean-fid's own cache."""
    if path is None:
        candidate, told = CLEANFID_CACHE / INCEPTION_FILE, f"clean-fid's cache {CLEANFID_CACHE / INCEPTION_FILE}"
    else:
        p = Path(path).expanduser()
        candidate, told = (p / INCEPTION_FILE if p.is_dir() else p), f"inception_path={str(path)!r}"
    if candidate.name != INCEPTION_FILE or not candidate.is_file():
        raise FileNotFoundError(
            f"clean-fid's InceptionV3 weights were not found at {told}. Download {INCEPTION_URL} "
            f"(keep the name {INCEPTION_FILE}) and pass the file or its folder as the fid suite's inception_path "
            f"option, or place it at {CLEANFID_CACHE / INCEPTION_FILE}; nothing is downloaded at run time."
        )
    return candidate


def clean_resize(images: np.ndarray) -> torch.Tensor:
    """clean-fid's "clean" preprocessing: per-channel float PIL bicubic resize to 299x299, values in [0, 255].

    Grey (1-channel) images are repeated to RGB first, as PIL's convert("RGB") does for clean-fid's files.
    """
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return torch.from_numpy(np.stack([resize(img.transpose(1, 2, 0)).transpose(2, 0, 1) for img in images]))


def inception_net(path: str | Path | None, device: torch.device | str) -> FeatureNet:
    """clean-fid's InceptionV3 (2048-d pool features) from a local file, with its clean resize."""
    from cleanfid.fid import get_batch_features
    from cleanfid.inception_torchscript import InceptionV3W

    file = find_inception(path)
    model = InceptionV3W(str(file.parent), download=False, resize_inside=False).to(device).eval()
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return FeatureNet(
        "inception", f"cleanfid-inception:{digest}",
        lambda images: get_batch_features(clean_resize(images), model, torch.device(device)),
    )
