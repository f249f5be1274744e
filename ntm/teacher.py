"""The flow-matching teacher: the shared backbone trained as a rectified-flow velocity field."""

from __future__ import annotations


import torch
from torch import Tensor, nn

from ntm.backbone import DiT, BackboneConfig
from ntm.checkpoint import PretrainedMixin
from ntm.flow_matching import flow_matching_loss, sample_training_times

class FlowMatchingTeacher(PretrainedMixin, nn.Module):
    """v_theta(x_t, t, c) for x_t = (1 - t) x0 + t eps (Liu et al., 2022; Lipman et al., 2022)."""

    KIND = "flow_matching_teacher"

    def __init__(self, backbone: BackboneConfig, time_sampling: str = "logit_normal") -> None:
        super().__init__()
        if backbone.in_channels != backbone.out_channels or backbone.n_times != 1:
            raise ValueError("a velocity backbone maps x to a field of its own shape from one time input")
        self.net = DiT(backbone)
        self.time_sampling = time_sampling

    def to_config(self) -> dict:
        return {"backbone": self.net.config.to_dict(), "time_sampling": self.time_sampling}

    @classmethod
    def from_config(cls, config: dict) -> FlowMatchingTeacher:
        return cls(BackboneConfig.from_dict(config["backbone"]), config["time_sampling"])

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        return self.net(x, t, tokens)

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.net.encode_text(prompts)

    def loss(self, x0: Tensor, tokens: Tensor, generator: torch.Generator) -> Tensor:
        """Per-sample rectified-flow loss with t and noise drawn from `generator`."""
        t = sample_training_times(x0.shape[0], generator, kind=self.time_sampling).to(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return flow_matching_loss(self, x0, tokens, t, noise)
