"""The audit's sizes and tolerances, read from a preset's `[suite_options.audit]` table.

The defaults keep the tiny preset's audit within minutes on two CPU cores once its models are
trained; raise the image counts for tighter standard errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from benchmarks.presets import Preset

PRESET_KEY = "audit"


@dataclass(frozen=True)
class AuditOptions:
    gaussian_resolution: int = 12
    """Side of the known-density world's images (the backbone's patch must divide it). At 12 px,
    D = 432 > 256, so an ODE likelihood with trace "auto" takes Hutchinson's estimate, as on the
    16 px shapes world; at 8 px (D = 192) it would take the exact trace, D times the cost."""
    truth_images: int = 24
    """Held-out gaussian-world images per truth-gap row."""
    entropy_samples: int = 1024
    """Draws for the world's true entropy and its standard error."""
    agreement_images: int = 4
    iwae_samples: tuple[int, ...] = (1, 4, 16)
    ode_steps: tuple[int, ...] = (4, 8, 16)
    ode_probes: tuple[int, ...] = (1, 4)
    ood_images: int = 12
    """Images per OOD set and held-out in-distribution images."""
    conditional_images: int = 6
    mismatched: int = 3
    """Wrong captions per image in the conditional check."""
    typicality_samples: int = 12
    batch_size: int = 32
    tolerance_nats: float = 1e-3
    """A truth gap must also be below -tolerance_nats (per image) to be flagged."""
    ode_tolerance_bpd: float = 0.01
    """A step count's ODE NLL may differ this much from the finest one's (the tables print 3 decimals)."""
    precision_tolerance_bpd: float = 1e-3
    """float32 and float64 trajectory NLLs may differ this much per image."""

    def __post_init__(self) -> None:
        counts = ("gaussian_resolution", "truth_images", "entropy_samples", "agreement_images", "ood_images",
                  "conditional_images", "mismatched", "typicality_samples", "batch_size")
        low = [name for name in counts if getattr(self, name) < 1]
        low += [name for name in ("iwae_samples", "ode_steps", "ode_probes") if not getattr(self, name)
                or min(getattr(self, name)) < 1]
        if low:
            raise ValueError(f"audit option(s) {low} must be positive (lists non-empty)")
        two = [name for name in ("truth_images", "entropy_samples", "agreement_images", "ood_images",
                                 "conditional_images", "typicality_samples") if getattr(self, name) < 2]
        if two:
            raise ValueError(f"audit option(s) {two} need at least 2 images for a standard error")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> AuditOptions:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown audit option(s) {unknown}; valid: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def audit_options(preset: Preset) -> AuditOptions:
    """The preset's `[suite_options.audit]` table over the defaults."""
    return AuditOptions.from_dict(preset.suite_options.get(PRESET_KEY, {}))
