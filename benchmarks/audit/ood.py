"""Out-of-distribution detection with a model's likelihood: raw NLL and complexity-corrected NLL.

Likelihood models often give simple images (constant, low-texture) a higher likelihood than their
own data (Nalisnick et al., 2019). Serra et al. (2020) correct the NLL by the image's complexity,
its code length under a generic lossless compressor: S(x) = NLL(x) - L(x), both in bits per
dimension, here with L from PNG. Each score ranks held-out in-distribution images (negatives)
against an OOD set (positives) by AUROC: 1 detects, 0.5 is chance, below 0.5 means the OOD images
look *more* likely than the data. Likelihoods are unconditional (the empty caption): an OOD image
has no caption of its own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from baselines.base import Generator
from benchmarks.audit.findings import finding
from benchmarks.audit.likelihood import score_images
from benchmarks.audit.roc import auroc
from benchmarks.suites.base import item_seed
from benchmarks.suites.nll import bits_per_dim
from benchmarks.worlds.base import World
from benchmarks.worlds.digits import DigitsWorld
from benchmarks.worlds.shapes import BACKGROUND

IN_DISTRIBUTION = "in-distribution"
UNSEEN_COLOURS = ((255, 128, 0), (0, 255, 255), (128, 128, 128), (255, 160, 200), (128, 64, 0), (0, 0, 128))
"""Orange, cyan, grey, pink, brown, navy: none is a shapes palette colour or its background."""


def png_bits_per_dim(images: np.ndarray) -> np.ndarray:
    """Lossless PNG code length (level 9) of each uint8 (N, C, H, W) image in bits per dimension, header included."""
    out = []
    for image in images:
        pixels = image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        picture.save(buffer, format="PNG", compress_level=9)
        out.append(8 * buffer.getbuffer().nbytes / image.size)
    return np.array(out)


def digits_images(n: int, resolution: int, channels: int) -> np.ndarray:
    """n test digits (8x8, scikit-learn) resized to `resolution` by nearest neighbour, grey copied to every channel."""
    world = DigitsWorld()
    small = world.batch(range(n), split="test").images[:, 0]
    resized = np.stack([np.asarray(Image.fromarray(d).resize((resolution, resolution), Image.NEAREST)) for d in small])
    return np.repeat(resized[:, None], channels, axis=1)


def recolour(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shapes scenes with each object colour replaced by a distinct unseen colour, drawn per image."""
    out = images.copy()
    for image in out:
        colours = sorted({tuple(c) for c in image.reshape(3, -1).T.tolist()} - {BACKGROUND})
        for colour, new in zip(colours, rng.permutation(len(UNSEEN_COLOURS))):
            mask = (image == np.array(colour, np.uint8)[:, None, None]).all(0)
            image[:, mask] = np.array(UNSEEN_COLOURS[new], np.uint8)[:, None]
    return out


def ood_sets(world: World, n: int, seed: int) -> dict[str, np.ndarray]:
    """Held-out data and the OOD sets at the world's shape: digits, unseen colours (shapes only), noise, constants."""
    rng = np.random.default_rng(seed)
    shape = (n, world.channels, world.resolution, world.resolution)
    data = world.batch(range(n), split="test").images
    sets = {IN_DISTRIBUTION: data}
    if world.name != "digits":
        sets["digits"] = digits_images(n, world.resolution, world.channels)
    if world.name == "shapes":
        sets["unseen colours"] = recolour(data, rng)
    sets["uniform noise"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    colours = rng.integers(0, 256, size=(n, world.channels, 1, 1), dtype=np.uint8)
    sets["constant"] = np.broadcast_to(colours, shape).copy()
    return sets


def detection_verdict(area: float) -> str:
    """Plain words for an AUROC of OOD (positive) against data."""
    if area >= 0.9:
        return "detects OOD"
    if area > 0.6:
        return "weak detection"
    if area >= 0.4:
        return "chance"
    return "inverted: OOD looks more likely"


@dataclass(frozen=True)
class OodResult:
    """Per-set model NLL and PNG code length of each image, both in bits/dim."""

    model: str
    nll_bpd: dict[str, np.ndarray]
    png_bpd: dict[str, np.ndarray]

    def scores(self, name: str, corrected: bool) -> np.ndarray:
        return self.nll_bpd[name] - self.png_bpd[name] if corrected else self.nll_bpd[name]

    def auroc(self, name: str, corrected: bool) -> float:
        return auroc(self.scores(name, corrected), self.scores(IN_DISTRIBUTION, corrected))

    @property
    def ood_names(self) -> list[str]:
        return [name for name in self.nll_bpd if name != IN_DISTRIBUTION]

    def rows(self) -> list[dict]:
        rows = []
        for name in self.nll_bpd:
            nll = self.nll_bpd[name]
            rows.append(finding(
                self.model, "ood", f"NLL of {name}", nll.mean(), nll.std(ddof=1) / np.sqrt(len(nll)), "bits/dim",
                "unconditional", f"PNG {self.png_bpd[name].mean():.3f} bits/dim",
            ))
        for name in self.ood_names:
            for corrected in (False, True):
                area = self.auroc(name, corrected)
                label = "NLL - PNG" if corrected else "NLL"
                rows.append(finding(
                    self.model, "ood", f"AUROC {label}: {name}", area, None, "AUROC", detection_verdict(area),
                    f"{len(self.nll_bpd[name])} OOD vs {len(self.nll_bpd[IN_DISTRIBUTION])} held-out images",
                ))
        return rows


def ood_audit(
    generator: Generator, sets: dict[str, np.ndarray], seed: int, batch_size: int = 32, progress: bool = False
) -> OodResult:
    """Unconditional NLL (bits/dim) and PNG code length of every image of every set."""
    nll, png = {}, {}
    for name, images in sets.items():
        seeds: Sequence[int] = [item_seed(seed, i) for i in range(len(images))]
        description = f"{generator.spec.name} {name}"
        scores = score_images(generator, images, [""] * len(images), seeds, batch_size, description, progress)
        nll[name] = bits_per_dim(scores.nll_nats, int(np.prod(images.shape[1:])))
        png[name] = png_bits_per_dim(images)
    return OodResult(generator.spec.name, nll, png)
