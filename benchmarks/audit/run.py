"""`run_audit`: every audit part for the likelihood models of a preset, written under OUT/audit.

Truth gaps need models trained on the gaussian world: they are built in a context with that world
and the preset's backbone, budgets and model options, and cached beside the preset's own
checkpoints (the cache key holds the world). The other parts use the preset's world and models.
Models that report no likelihood get one "n/a" row and are never built (nor trained).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from baselines.base import BuildContext, Generator, stable_hash
from baselines.flow_matching import FlowMatchingGenerator
from baselines.ntm import NTMGenerator
from baselines.registry import build, get_entry
from benchmarks.audit.agreement import iwae_ladder, ode_grid, precision_check
from benchmarks.audit.conditional import conditional_calibration
from benchmarks.audit.findings import COLUMNS, finding
from benchmarks.audit.likelihood import dequantise
from benchmarks.audit.ood import OodResult, ood_audit, ood_sets
from benchmarks.audit.oracle import OracleGenerator
from benchmarks.audit.report import write_report
from benchmarks.audit.truth_gap import truth_gap
from benchmarks.audit.typicality import Typicality, typicality
from benchmarks.presets import Preset
from benchmarks.presets.audit import AuditOptions, audit_options
from benchmarks.records import atomic_write_text
from benchmarks.runner import build_context, resolve_device
from benchmarks.suites.base import item_seed
from benchmarks.suites.nll import bits_per_dim
from benchmarks.worlds.base import World
from benchmarks.worlds.gaussian import GaussianWorld

console = Console(stderr=True)


def world_rows(world: GaussianWorld, samples: int) -> list[dict]:
    """The gaussian world's true entropies, H(x) and H(x | c), in bits/dim of the discrete data."""
    rows = []
    for conditional in (False, True):
        h, se = world.entropy(samples, conditional=conditional)
        bpd = bits_per_dim(h, world.dim)  # = H(v) / D in bits: the dequantisation terms cancel
        check = "entropy H(x | c)" if conditional else "entropy H(x)"
        rows.append(finding(
            f"{world.name}@{world.resolution}", "world", check, bpd, se / (world.dim * math.log(2)), "bits/dim",
            "exact density",
            f"Monte-Carlo over {samples} held-out draws; the best any model's NLL can reach",
        ))
    return rows


def truth_rows(generator: Generator, world: GaussianWorld, o: AuditOptions, seed: int, progress: bool) -> list[dict]:
    """Truth gaps under each image's caption and under the empty caption (the whole mixture)."""
    rows = []
    for conditional in (True, False):
        gap = truth_gap(generator, world, o.truth_images, seed, conditional, o.batch_size, o.tolerance_nats, progress)
        rows += gap.rows()
    return rows


def agreement_rows(generator: Generator, world: World, o: AuditOptions, seed: int) -> list[dict]:
    """The estimator knobs of NTM (chains, precision) and of the flow-matching teacher (ODE steps, probes)."""
    name = generator.spec.name
    batch = world.batch(range(o.agreement_images), split="test")
    seeds = [item_seed(seed, i) for i in range(o.agreement_images)]
    if isinstance(generator, NTMGenerator):
        model = generator.model
        x = dequantise(batch.images, seeds).to(next(model.parameters()).device)
        tokens = model.encode_text(list(batch.captions))
        ladder = iwae_ladder(model, name, x, tokens, seeds, o.iwae_samples)
        precision = precision_check(model, name, x, tokens, seeds, o.precision_tolerance_bpd)
        return ladder.rows() + precision.rows()
    if isinstance(generator, FlowMatchingGenerator):
        model = generator.model
        x = dequantise(batch.images, seeds).to(next(model.parameters()).device)
        tokens = model.encode_text(list(batch.captions))
        grid = ode_grid(
            model, name, x, tokens, seeds, o.ode_steps, o.ode_probes, generator.likelihood.solver, o.ode_tolerance_bpd
        )
        return grid.rows()
    return [finding(name, "agreement", "estimator settings", None, None, "", "n/a: no estimator knobs audited")]


def likelihood_identity(generator: Generator) -> str:
    """Equal for two models whose log_likelihood is the same function: same class, weights and estimator knobs.

    fm-teacher and fm-teacher-4 are one network with one ODE likelihood, sampled differently; the
    audit scores it once (likewise ntm and its eta-sampler rows, but not ntm-8: another step count). Models of other classes are identified by their whole spec.
    """
    if isinstance(generator, FlowMatchingGenerator):
        knobs = dict(generator.likelihood.__dict__)
    elif isinstance(generator, NTMGenerator):
        # the step count sets the trajectory the bound runs through: ntm-8 is not ntm's likelihood
        knobs = {
            "bound_samples": generator.bound_samples, "t_min": generator.model.config.t_min_eval,
            "steps": generator.model.config.steps,
        }
    else:
        return generator.spec.hash
    return stable_hash([type(generator).__name__, generator.spec.weights_hash, knobs])


def _shared(rows: list[dict], name: str, source: str) -> list[dict]:
    """`source`'s rows under `name`, saying where they come from."""
    note = f"computed once for {source}: same weights and likelihood"
    return [row | {"model": name, "detail": f"{row['detail']} ({note})" if row["detail"] else note} for row in rows]


KEY_FILE = "key.txt"


def audit_key(preset: Preset, names: Sequence[str], o: AuditOptions) -> str:
    """Everything the audit's findings depend on besides the code: options, models and how they are trained."""
    return stable_hash([
        dataclasses.asdict(o), list(names), preset.world, preset.resolution, dict(preset.world_options),
        preset.backbone, preset.train, {n: preset.options_for(n) for n in names}, preset.seeds[0],
    ])


def run_audit(
    preset: Preset,
    out_dir: Path,
    models: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    reuse: bool = False,
) -> pd.DataFrame:
    """Audit the likelihoods of `models` (default: the preset's); writes OUT/audit and returns the findings.

    Every name is checked first; models without a likelihood get an "n/a" row and are not built.
    Models with one likelihood (`likelihood_identity`) share its findings; typicality, which reads
    each model's own samples, runs for every model. With `reuse`, a finished audit of the same
    `audit_key` in OUT/audit is read back instead of recomputed (the key is written last).
    """
    o = audit_options(preset)
    names = list(models or preset.models)
    entries = {name: get_entry(name) for name in names}
    key = audit_key(preset, names, o)
    folder = Path(out_dir) / "audit"
    if reuse and (folder / KEY_FILE).is_file() and (folder / KEY_FILE).read_text().strip() == key:
        console.print(f"audit: finished earlier with the same options and models, read from {folder}")
        return pd.read_csv(folder / "summary.csv", keep_default_na=False)
    audited = [name for name in names if entries[name].load().capabilities.likelihood]
    seed = preset.seeds[0]
    out_dir = Path(out_dir)
    rows = [
        finding(name, "all", "likelihood", None, None, "", "n/a: reports no likelihood")
        for name in names if name not in audited
    ]

    gaussian = GaussianWorld(o.gaussian_resolution)
    rows += world_rows(gaussian, o.entropy_samples)
    rows += truth_rows(OracleGenerator(gaussian, "oracle (control)"), gaussian, o, seed, progress)
    dev = resolve_device(device or preset.device)
    budgets = o.known_world_budgets(preset.train)
    known = BuildContext(gaussian, dev, out_dir / "checkpoints", preset.backbone, budgets, progress)
    done: dict[str, tuple[str, list[dict]]] = {}
    for name in audited:
        generator = build(name, known, **preset.options_for(name))
        key = likelihood_identity(generator)
        if key in done:
            rows += _shared(done[key][1], name, done[key][0])
            continue
        console.print(f"audit {name}: truth gap on {gaussian.name}@{gaussian.resolution}")
        done[key] = (name, truth_rows(generator, gaussian, o, seed, progress))
        rows += done[key][1]

    ctx = build_context(preset, out_dir, device, progress)
    ood: list[OodResult] = []
    typical: list[Typicality] = []
    sets = ood_sets(ctx.world, o.ood_images, seed) if audited else {}
    scored: dict[str, tuple[str, list[dict], OodResult]] = {}
    data_nll: dict[str, np.ndarray] = {}
    for name in audited:
        generator = build(name, ctx, **preset.options_for(name))
        key = likelihood_identity(generator)
        if key in scored:
            source, shared, result = scored[key]
            rows += _shared(shared, name, source)
            ood.append(dataclasses.replace(result, model=name))
        else:
            console.print(f"audit {name}: agreement, OOD, conditional on {preset.world}@{preset.resolution}")
            with torch.no_grad():
                found = agreement_rows(generator, ctx.world, o, seed)
            ood.append(ood_audit(generator, sets, seed, o.batch_size, progress))
            found += ood[-1].rows()
            found += conditional_calibration(
                generator, ctx.world, o.conditional_images, o.mismatched, seed, o.batch_size, progress
            ).rows()
            scored[key] = (name, found, ood[-1])
            rows += found
        console.print(f"audit {name}: typicality of its samples")
        typical.append(typicality(
            generator, ctx.world, o.typicality_samples, seed, o.batch_size, progress, data_nll.get(key)
        ))
        data_nll[key] = typical[-1].data_bpd
        rows += typical[-1].rows()

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    write_report(folder, frame, ood, typical, f"Likelihood audit: preset {preset.name}")
    atomic_write_text(folder / KEY_FILE, key + "\n")
    return frame
