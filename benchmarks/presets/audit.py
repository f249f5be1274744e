"""A preset's `[audit]` table: the likelihood audit's sizes, tolerances and known-world budgets.

It lives with the presets (which check the table when they load) rather than in `benchmarks.audit`, so the
presets never import the audit that runs on them.

The defaults keep the tiny preset's audit within minutes on two CPU cores once its models are
trained; raise the image counts for tighter standard errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this module is imported by `benchmarks.presets` itself
    from benchmarks.presets import Preset


@dataclass(frozen=True)
class AuditOptions:
    gaussian_resolution: int = 12
    """Side of the known-density world's images (the backbone's patch must divide it). At 12 px,
    D = 432 > 256, so an ODE likelihood with trace "auto" takes Hutchinson's estimate, as on the
    16 px shapes world; at 8 px (D = 192) it would take the exact trace, D times the cost."""
    truth_images: int = 48
    """Held-out gaussian-world images per truth-gap row."""
    entropy_samples: int = 1024
    """Draws for the world's true entropy and its standard error."""
    agreement_images: int = 8
    iwae_samples: tuple[int, ...] = (1, 4, 16)
    ode_steps: tuple[int, ...] = (4, 8, 16)
    ode_probes: tuple[int, ...] = (1, 4)
    ood_images: int = 16
    """Images per OOD set and held-out in-distribution images."""
    conditional_images: int = 8
    mismatched: int = 3
    """Wrong captions per image in the conditional check."""
    typicality_samples: int = 16
    batch_size: int = 32
    tolerance_nats: float = 1e-3
    """A truth gap must also be below -tolerance_nats (per image) to be flagged."""
    ode_tolerance_bpd: float = 0.01
    """A step count's ODE NLL may differ this much from the finest one's (the tables print 3 decimals)."""
    precision_tolerance_bpd: float = 1e-3
    """float32 and float64 trajectory NLLs may differ this much per image."""
    train_steps: dict[str, int] = dataclasses.field(default_factory=dict)
    """Optimizer steps of the models trained on the gaussian world, by training recipe (the preset's
    `[train.X]` names, e.g. {flow_matching = 400, ntm = 300}); recipes not named keep the preset's budget.
    A warm-up longer than a quarter of the new budget is cut to that quarter."""

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
        bad = {k: v for k, v in self.train_steps.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"audit option train_steps needs positive integer step counts, got {bad}")

    def known_world_budgets(self, train: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The preset's `[train.*]` budgets with `train_steps` applied; unknown recipe names are errors."""
        unknown = sorted(set(self.train_steps) - set(train))
        if unknown:
            raise ValueError(
                f"audit option train_steps names recipe(s) {unknown} the preset does not train; valid: {sorted(train)}"
            )
        budgets = {recipe: dict(config) for recipe, config in train.items()}
        for recipe, steps in self.train_steps.items():
            budgets[recipe]["steps"] = steps
            if "warmup" in budgets[recipe]:
                budgets[recipe]["warmup"] = min(budgets[recipe]["warmup"], max(1, steps // 4))
        return budgets

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> AuditOptions:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown audit option(s) {unknown}; valid: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def audit_options(preset: Preset) -> AuditOptions:
    """The preset's `[audit]` table over the defaults."""
    return AuditOptions.from_dict(preset.audit or {})
