"""Shared fixtures: small worlds, a few-step preset file, a randomly initialised teacher."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from ntm.backbone import backbone_config
from ntm.teacher import FlowMatchingTeacher

# the fid suite caches reference statistics in the user cache by default: tests keep theirs apart
os.environ["NTM_BENCH_CACHE"] = tempfile.mkdtemp(prefix="ntm-bench-test-cache-")

TINY_PRESET = """
description = "test preset: a few training steps, a handful of prompts"
world = "shapes"
resolution = 16
device = "cpu"
seeds = [0]
models = ["ground-truth", "fm-teacher-4", "ntm", "ntm-no-transporter"]
suites = ["geneval", "nll"]

[backbone]
size = "tiny"
patch = 4
transporter = { width = 32, blocks = 2, spline_bins = 8 }

[train.flow_matching]
steps = 3
batch_size = 8

[train.ntm]
steps = 3
batch_size = 4

[train.ntm_denoiser]
steps = 2
batch_size = 4

[model_options.ntm]
guidance = 2.0
bound_samples = 2

[model_options.ntm-fast]
guidance = 2.0

[model_options.ntm-no-transporter]
bound_samples = 2

[model_options.fm-teacher-4]
guidance = 2.0
likelihood = { steps = 2, probes = 1 }

[suite_options.geneval]
prompts_per_category = 1
images_per_prompt = 2

[suite_options.nll]
images = 4
"""


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and extra threads spin against other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def preset_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.toml"
    path.write_text(TINY_PRESET)
    return path


def random_teacher(seed: int = 0, resolution: int = 8) -> FlowMatchingTeacher:
    """A teacher with every weight random (zero-initialised layers included), so outputs are non-trivial."""
    torch.manual_seed(seed)
    config = backbone_config(
        "tiny", resolution=resolution, in_channels=3, out_channels=3, patch=4, width=32, depth=2, heads=2,
        vocabulary=("a", "photo", "of", "red", "circle"),
    )
    model = FlowMatchingTeacher(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()
