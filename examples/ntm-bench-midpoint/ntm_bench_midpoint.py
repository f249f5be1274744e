"""A baseline adapter in one file: the flow-matching teacher sampled with the explicit midpoint method.

The explicit midpoint rule is Runge's 2nd-order Runge-Kutta method (Runge, 1895; Hairer, Norsett &
Wanner, Solving Ordinary Differential Equations I, Sec. II.1). For dx/dt = v(x, t) and a step of
size h = t_{n+1} - t_n (negative here: time runs from noise, t = 1, to data, t = 0) it reads

    x_{n+1} = x_n + h v(x_n + (h / 2) v(x_n, t_n), t_n + h / 2),

two velocity evaluations per step, both with classifier-free guidance (Ho & Salimans, 2022). The
network is the shared rectified-flow teacher of the run, trained (or found in the cache) through
`baselines.flow_matching.train_teacher`, so this row differs from `fm-teacher` in its sampler only.

Installed with `pip install -e examples/ntm-bench-midpoint`, it registers the model "fm-midpoint"
through the `ntm_bench.generators` entry point declared in this folder's pyproject.toml.
See docs/adding-an-adapter.md for a walk through this file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from baselines.base import BuildContext, Capabilities, Generator, GeneratorSpec, to_pixels
from baselines.flow_matching import train_teacher
from baselines.registry import ModelEntry
from baselines.training import per_sample_noise
from ntm.backbone import count_parameters
from ntm.checkpoint import read_metadata, weights_hash
from ntm.flow_matching import Velocity, guided_velocity
from ntm.schedule import time_grid
from ntm.teacher import FlowMatchingTeacher


def midpoint_nfe(steps: int, guidance: float) -> int:
    """Network evaluations per sample of `sample_midpoint`: 2 per step, doubled when CFG runs both branches."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return 2 * steps * (1 if guidance in (0, 1) else 2)


def sample_midpoint(
    velocity: Velocity, noise: Tensor, cond: Tensor, null_cond: Tensor | None, times: Tensor, guidance: float
) -> Tensor:
    """Integrate dx/dt = v_w(x, t) from times[0] to times[-1] with the explicit midpoint rule (module docstring).

    v_w is the guided velocity v_u + w (v_c - v_u). The state is carried in float64; the network is
    called in the dtype of `noise`, at per-sample times of shape (B,).
    """
    if times.ndim != 1 or len(times) < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be a strictly decreasing 1-D grid of at least 2 times")
    dtype, batch = noise.dtype, noise.shape[0]

    def v(x: Tensor, t: float) -> Tensor:
        t_vec = torch.full((batch,), t, dtype=dtype, device=noise.device)
        return guided_velocity(velocity, x.to(dtype), t_vec, cond, null_cond, guidance).double()

    x = noise.double()
    grid = times.tolist()
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        h = t_next - t_cur
        x_mid = x + 0.5 * h * v(x, t_cur)
        x = x + h * v(x_mid, t_cur + 0.5 * h)
    return x.to(dtype)


class MidpointGenerator(Generator):
    """The rectified-flow teacher sampled with `steps` explicit midpoint steps and CFG weight `guidance`."""

    capabilities = Capabilities(guidance=True)

    def __init__(
        self, model: FlowMatchingTeacher, name: str, steps: int, guidance: float, weights: str,
        training: dict | None = None,
    ) -> None:
        self.model, self.steps, self.guidance = model, steps, guidance
        self.spec = GeneratorSpec(
            name=name, family="flow-matching", steps=steps, nfe=midpoint_nfe(steps, guidance),
            parameters=count_parameters(model), weights_hash=weights,
            settings={"solver": "midpoint", "guidance": guidance}, training=training or {},
        )

    @classmethod
    def from_context(cls, ctx: BuildContext, name: str, steps: int = 2, guidance: float = 2.0) -> MidpointGenerator:
        directory = train_teacher(ctx)  # the run's teacher: trained on first use, cached under ctx.checkpoint
        model = FlowMatchingTeacher.from_pretrained(directory, ctx.device)
        return cls(model, name, steps, guidance, weights_hash(directory), read_metadata(directory).get("training"))

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None) -> Tensor:
        c = self.model.net.config
        device = next(self.model.parameters()).device
        noise = per_sample_noise(seeds, (c.in_channels, c.resolution, c.resolution), device)
        cond = self.model.encode_text(list(prompts))
        null = self.model.encode_text([""] * len(prompts))
        x = sample_midpoint(self.model, noise, cond, null, time_grid(steps or self.steps), self.guidance)
        return to_pixels(x)


ENTRY = ModelEntry(
    name="fm-midpoint",
    target="ntm_bench_midpoint:MidpointGenerator",
    description="the rectified-flow teacher sampled with 2 explicit midpoint (RK2) steps (example adapter)",
)
