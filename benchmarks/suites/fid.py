"""FID / KID of generated images against held-out real images, with the real-vs-real floor.

With N = `images`, the reference set is the world's test scenes [0, N) and the floor set is the
disjoint test scenes [N, 2N). The generator draws one sample (item seed) for each caption of the floor
set, so a perfect generator's images are distributed exactly like the floor set and its expected
score is the floor (FID/KID of floor set vs reference): the noise level of this sample size and
feature net, below which no difference is meaningful. Features: the world's eval-CLIP image tower,
or clean-fid's InceptionV3 for real photos (`benchmarks.fid`).

Metric names carry the feature network (`fid_evalclip`, `kid_inception`, ...): an FID in a world's small
eval-CLIP is not on the scale of the Inception FIDs papers publish. `fid_<net>_lo` / `_hi` are a 95%
bootstrap interval over the generated images (`benchmarks.fid.fid_bootstrap`). The reference and floor
sets' statistics are cached (`cache_dir`, default `benchmarks.fid.default_cache_dir()`), keyed by the images'
bytes and the network's hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from baselines.base import Generator
from benchmarks.fid import (
    FeatureNet, default_cache_dir, eval_clip_net, feature_stats, fid_bootstrap, fid_from_stats,
    inception_net, kernel_inception_distance,
)
from benchmarks.suites.base import NotApplicable, Suite, SuiteResult, item_seed, sample_all

FEATURES = ("eval-clip", "inception")


def metric_tag(features: str) -> str:
    """The feature network's name as it appears in metric names: eval-clip -> evalclip."""
    return features.replace("-", "")


@dataclass(frozen=True)
class FidOptions:
    images: int = 512
    batch_size: int = 64
    kid_subsets: int = 100
    kid_subset_size: int = 100
    features: str = "eval-clip"
    inception_path: str | None = None
    cache_dir: str | None = "auto"
    """Where the reference and floor sets' feature statistics are cached: "auto" (the user cache,
    `benchmarks.fid.default_cache_dir()`), a folder, or None / "" for no cache."""
    bootstrap_draws: int = 1000
    device: str = "auto"
    grid: int = 16
    first_index: int = 0
    """Held-out scenes [first_index, first_index + 2 x images) are used; a validation run (choosing settings)
    takes a range the evaluation (first_index = 0) does not."""

    def __post_init__(self) -> None:
        if self.first_index < 0:
            raise ValueError(f"fid first_index must be >= 0, got {self.first_index}")
        if self.features not in FEATURES:
            raise ValueError(f"fid features must be one of {FEATURES}, got {self.features!r}")
        if self.images < 2:
            raise ValueError(f"fid needs images >= 2, got {self.images}")
        if self.bootstrap_draws < 2:
            raise ValueError(f"fid bootstrap_draws must be >= 2, got {self.bootstrap_draws}")


class FidSuite(Suite):
    """FID and KID against held-out real images, with the real-vs-real floor at the same size."""

    name = "fid"
    version = "1"
    Options = FidOptions

    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self._nets: dict[tuple, FeatureNet] = {}

    def _net(self, world) -> FeatureNet:
        o = self.options
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if o.device == "auto" else o.device)
        key = (o.features, world.name, world.resolution, str(device))
        if key not in self._nets:
            if o.features == "inception":
                self._nets[key] = inception_net(o.inception_path, device)
            else:
                self._nets[key] = eval_clip_net(world.name, world.resolution, device)
        return self._nets[key]

    def run(self, generator: Generator, world, seed: int, progress: bool = True) -> SuiteResult:
        o = self.options
        n = o.images
        if hasattr(world, "split_size") and o.first_index + 2 * n > world.split_size("test"):
            raise NotApplicable(
                f"fid needs 2 x images = {2 * n} distinct test images (reference + floor set); world "
                f"{world.name!r} has {world.split_size('test')}: set suite option images <= "
                f"{world.split_size('test') // 2}"
            )
        net = self._net(world)
        real = world.batch(list(range(o.first_index, o.first_index + 2 * n)), split="test")
        prompts = real.captions[n:]
        seeds = [item_seed(seed, i) for i in range(n)]
        images = sample_all(generator, prompts, seeds, o.batch_size, f"{generator.spec.name} fid", progress)

        cache = str(default_cache_dir()) if o.cache_dir == "auto" else (o.cache_dir or None)
        generated = feature_stats(images, net, o.batch_size)
        reference, held_out = (feature_stats(x, net, o.batch_size, cache) for x in (real.images[:n], real.images[n:]))
        kid, kid_std = kernel_inception_distance(
            generated.features, reference.features, o.kid_subsets, o.kid_subset_size, seed
        )
        kid_floor, kid_floor_std = kernel_inception_distance(
            held_out.features, reference.features, o.kid_subsets, o.kid_subset_size, seed
        )
        fid_lo, fid_hi = fid_bootstrap(generated.features, reference, o.bootstrap_draws, seed)
        tag = metric_tag(o.features)
        metrics = {
            f"fid_{tag}": fid_from_stats(generated, reference),
            f"fid_{tag}_lo": fid_lo,
            f"fid_{tag}_hi": fid_hi,
            f"kid_{tag}": kid,
            f"kid_{tag}_std": kid_std,
            f"fid_{tag}_floor": fid_from_stats(held_out, reference),
            f"kid_{tag}_floor": kid_floor,
            f"kid_{tag}_floor_std": kid_floor_std,
            "fid_reference": f"world {world.name!r} @ {world.resolution}px, test items [{o.first_index}, "
                             f"{o.first_index + n}); prompts and floor set: test items [{o.first_index + n}, "
                             f"{o.first_index + 2 * n})",
            "fid_features": net.name,
            "fid_feature_hash": net.weights_hash,
            "fid_feature_accuracy": net.accuracy,
            "fid_feature_dim": int(generated.mu.shape[0]),
            "fid_images": n,
            "kid_subsets": o.kid_subsets,
            "kid_subset_size": min(o.kid_subset_size, n),
        }
        rows = [{"item": i, "prompt": prompts[i], "seed": seeds[i], "caption_of_test_item": n + i} for i in range(n)]
        grid = min(o.grid, n)
        artifacts = {"images": images[:grid], "prompts": np.array(prompts[:grid])}
        return SuiteResult(rows, metrics, artifacts)
