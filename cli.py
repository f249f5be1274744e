"""ntm-bench: reproduce few-step generator comparison tables with one command.

Examples:
    ntm-bench reproduce --preset tiny
    ntm-bench eval --models fm-teacher-4,ground-truth --suites geneval --preset tiny --out runs/a
    ntm-bench table results/tiny
    ntm-bench worlds check shapes --res 16 --n 500 --json parser.json
    ntm-bench assets build --world shapes --res 16
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ntm import distributed

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
worlds_app = typer.Typer(help="Inspect the data worlds: list, check the scene parser, draw a grid.", no_args_is_help=True)
app.add_typer(worlds_app, name="worlds")
assets_app = typer.Typer(
    help="Build the evaluation assets that ship with the package (the worlds' eval-CLIPs).", no_args_is_help=True
)
app.add_typer(assets_app, name="assets")
console = Console()
errors = Console(stderr=True)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Bundled preset name (see `ntm-bench presets`) or a .toml path.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device: cpu, cuda, cuda:1 or auto. Default: the preset's.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause (bad names, files, options, an unwritable folder, a diverging loss)
    into one red line and exit code 2."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from baselines.registry import UnknownNameError

        try:
            return fn(*args, **kwargs)
        except (
            UnknownNameError, ValueError, FileNotFoundError, NotImplementedError, PermissionError, FloatingPointError
        ) as err:
            errors.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
            raise typer.Exit(2) from None

    return run


def _split(names: str | None) -> list[str] | None:
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


def _audit_written(out: Path, findings: Any) -> Any:
    """Say where the audit's findings went and how many lie below the truth; returns those rows."""
    from benchmarks.audit.findings import below_truth

    flagged = below_truth(findings)
    console.print(f"wrote {out}/audit: summary.md, summary.csv, plots; {len(flagged)} of {len(findings)} below truth")
    return flagged


@app.command()
@user_errors
@distributed.command
def reproduce(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train what the preset needs, run every suite on every model, write the tables, then the audit.

    The likelihood audit (as `audit-likelihood`) runs when the preset has an [audit] table. Finished pieces are found in OUT/records and not recomputed; trained weights are cached in
    OUT/checkpoints. Example: ntm-bench reproduce --preset tiny --out /tmp/tiny
    """
    from benchmarks.presets import load_preset
    from benchmarks.runner import evaluate
    from benchmarks.tables import to_markdown, write_tables

    p = load_preset(preset)
    out = out or Path("results") / p.name
    evaluate(p, out, device=device, progress=progress)
    if not distributed.main_goes_on():  # with several processes rank 0 alone writes, prints and audits
        return
    frame = write_tables(out)
    typer.echo(to_markdown(frame))
    console.print(f"wrote {out}/summary.csv, summary.md, summary.tex and samples/")
    _diagnose(p, out, device)
    if p.audit is not None:
        from benchmarks.audit.run import run_audit

        _audit_written(out, run_audit(p, out, device=device, progress=progress, reuse=True))


def _diagnose(p: Any, out: Path, device: str | None, models: list[str] | None = None) -> None:
    from benchmarks.diagnose import diagnose as run_diagnose

    steps, samples = run_diagnose(p, out, device=device, models=models)
    console.print(f"wrote {steps} and {samples}")


@app.command()
@user_errors
def diagnose(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder (weights cached in OUT/checkpoints). Default: results/<preset>.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models. Default: the preset's.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Per-step NLL, log-det and sigma of every NTM-family model, and empty/fragmented sample counts of every model.

    Writes OUT/diagnostics/steps.csv (model, step, t, s, nll_per_dim, logdet_per_dim, sigma_mean; nats, on
    held-out forward trajectories) and OUT/diagnostics/samples.csv (model, images, empty_fraction,
    fragments_per_image), both on a validation range of held-out scenes. Also run by `reproduce`.
    Example: ntm-bench diagnose --preset tiny
    """
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    names = _split(models)
    if models is not None and not names:
        raise ValueError(f"--models {models!r} names no model; give comma-separated names (see `ntm-bench models`)")
    _diagnose(p, out or Path("results") / p.name, device, names)


@app.command("train")
@user_errors
@distributed.command
def train_(
    model: Annotated[str, typer.Argument(help="A registered model (see `ntm-bench models`), e.g. ntm.")],
    preset: PresetOpt = "tiny",
    world: Annotated[str | None, typer.Option(help="Train on this world instead of the preset's.")] = None,
    init: Annotated[str | None, typer.Option(help="NTM only: 'scratch' or 'teacher' (start from the flow-matching teacher).")] = None,
    out: Annotated[Path | None, typer.Option(help="Results folder; weights go to OUT/checkpoints. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the weights a model needs (or find them cached) and print where they are.

    Example: ntm-bench train ntm --world shapes --preset tiny --init teacher
    """
    import dataclasses

    from benchmarks.presets import load_preset
    from benchmarks.runner import train

    p = load_preset(preset)
    p = dataclasses.replace(p, world=world) if world else p
    options = {"init": init} if init else {}
    generator = train(p, out or Path("results") / p.name, model, device=device, progress=progress, **options)
    if not distributed.main_goes_on():
        return
    spec = generator.spec
    console.print(f"{spec.name}: {spec.parameters / 1e6:.2f}M parameters, weights {spec.weights_hash[:12]}")


@app.command("distill-denoiser")
@user_errors
def distill_denoiser(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder; weights go to OUT/checkpoints. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Distil NTM's lightweight denoiser from its exact trajectory score (training the NTM first if needed).

    The denoiser is what `ntm-fast` samples with; its budget is the preset's [train.ntm_denoiser].
    Example: ntm-bench distill-denoiser --preset tiny
    """
    train_(model="ntm-fast", preset=preset, out=out, device=device, progress=progress)


@app.command("eval")
@user_errors
@distributed.command
def eval_(
    models: Annotated[str, typer.Option(help="Comma-separated model names (see `ntm-bench models`).")],
    suites: Annotated[str | None, typer.Option(help="Comma-separated suite names. Default: the preset's.")] = None,
    preset: PresetOpt = "tiny",
    out: Annotated[Path, typer.Option(help="Results folder (records, checkpoints, tables).")] = Path("runs/eval"),
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Score registered models on suites; records go to OUT/records and the tables are rebuilt.

    Example: ntm-bench eval --models fm-teacher-4 --suites geneval,nll --preset tiny --out runs/a
    """
    from benchmarks.presets import load_preset
    from benchmarks.runner import evaluate
    from benchmarks.tables import to_markdown, write_tables

    evaluate(load_preset(preset), out, models=_split(models), suites=_split(suites), device=device, progress=progress)
    if not distributed.main_goes_on():
        return
    typer.echo(to_markdown(write_tables(out)))


@app.command()
@user_errors
def table(results_dir: Annotated[Path, typer.Argument(help="A results folder holding records/.")]) -> None:
    """Rebuild summary.csv/.md/.tex and sample grids from the records alone."""
    from benchmarks.tables import to_markdown, write_tables

    typer.echo(to_markdown(write_tables(results_dir)))


@app.command("audit-likelihood")
@user_errors
def audit_likelihood(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder (OUT/audit). Default: results/<preset>.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model names. Default: the preset's.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Audit the likelihood models: truth gap on the known-density gaussian world, estimators, OOD, typicality.

    Models are trained as the preset says (on the gaussian world too, cached in OUT/checkpoints).
    Writes OUT/audit/summary.md, summary.csv and plots; exits 1 if an NLL lies below the truth (a bug
    in a bound, or a biased estimate). Example: ntm-bench audit-likelihood --preset tiny --models ntm,fm-teacher
    """
    from benchmarks.audit.run import run_audit
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    out = out or Path("results") / p.name
    flagged = _audit_written(out, run_audit(p, out, models=_split(models), device=device, progress=progress))
    for row in flagged.itertuples():
        line = f"[bold red]{escape(row.verdict)}:[/bold red] {escape(row.model)}, {escape(row.check)}"
        errors.print(line, highlight=False)
    if len(flagged):
        raise typer.Exit(1)


@app.command()
@user_errors
def doctor(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder to check. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Check every input a preset needs, without loading weights or training: prints all problems, or "ready".

    Checks the preset's keys, world (and a folder world's files), backbone, model names and options, local
    weights (pretrained folders, geneval-real's detector and CLIP, fid's Inception file or eval-CLIP asset),
    training budgets, devices and the results folder. Exits 2 when anything is missing.
    Example: ntm-bench doctor --preset paper
    """
    from benchmarks.doctor import diagnose

    diagnosis = diagnose(preset, out, device)
    if not diagnosis.ready:
        errors.print(f"[bold red]{len(diagnosis.problems)} problem(s)[/bold red] with preset {escape(diagnosis.preset)}:")
        for problem in diagnosis.problems:
            errors.print(f"- {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"ready: preset {escape(diagnosis.preset)}, results in {escape(str(diagnosis.out))}", highlight=False)


@app.command()
@user_errors
def bench(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder (OUT/bench.json, OUT/bench.md). Default: results/<preset>.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Held-out scenes in the one timed batch.")] = 16,
    repeats: Annotated[int, typer.Option(min=1, help="Timed rounds; every call is timed once per round.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds first.")] = 1,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Speed-ups of NTM measured side by side on one batch: exact NLL vs the teacher's ODE NLL, ntm-fast vs
    consistency at 4 steps, ntm-fast vs ntm.

    Calls are interleaved round by round; each speed-up is the median over rounds. Models are trained (or found)
    in OUT/checkpoints as the preset says. Example: ntm-bench bench --preset tiny --repeats 7
    """
    from benchmarks.bench import run_bench, to_markdown
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    out = out or Path("results") / p.name
    typer.echo(to_markdown(run_bench(p, out, device, batch_size, repeats, warmup, progress=progress)))
    console.print(f"wrote {out}/bench.json and bench.md")


def _listing(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title)
    t.add_column("name")
    t.add_column("description")
    for row in rows:
        t.add_row(*row)
    console.print(t)


@app.command()
def models() -> None:
    """List the registered models."""
    import benchmarks.reference  # noqa: F401  (registers the reference rows)
    from baselines.registry import available_models, get_entry

    _listing("models", [(n, get_entry(n).description) for n in available_models()])


@app.command()
def suites() -> None:
    """List the suites and their versions."""
    from benchmarks.suites import SUITES

    _listing("suites", [(n, f"v{s.version}: {(s.__doc__ or '').strip().splitlines()[0]}") for n, s in sorted(SUITES.items())])


@app.command()
def presets() -> None:
    """List the bundled presets."""
    from benchmarks.presets import available_presets, load_preset

    _listing("presets", [(n, load_preset(n).description) for n in available_presets()])


@worlds_app.command("list")
def worlds_list() -> None:
    """List the worlds."""
    from benchmarks.worlds import available_worlds

    _listing("worlds", [(n, "") for n in available_worlds()])


@worlds_app.command("check")
@user_errors
def worlds_check(
    world: Annotated[str, typer.Argument(help="World name, e.g. shapes.")],
    res: Annotated[int, typer.Option("--res", help="Resolution in pixels.")] = 16,
    n: Annotated[int, typer.Option("--n", min=1, help="Ground-truth scenes per category.")] = 500,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here as JSON.")] = None,
    seed: Annotated[int, typer.Option(help="Scene seed.")] = 0,
) -> None:
    """Parse N ground-truth renders per category and report the parser's accuracy (and under noise).

    Example: ntm-bench worlds check shapes --res 32 --n 500 --json parser32.json
    """
    from benchmarks.records import atomic_write_text
    from benchmarks.worlds import get_world
    from benchmarks.worlds.check import check_world

    report = check_world(get_world(world, res), n, seed=seed)
    t = Table(title=f"{world} @ {res}px: parser accuracy on {n} ground-truth scenes per category")
    t.add_column("category")
    noise = report.get("noise", {})
    for sigma in noise:
        t.add_column(f"noise σ={sigma}", justify="right")
    for cat in report["per_category"]:
        t.add_row(cat, *[f"{noise[s]['per_category'][cat]:.4f}" for s in noise])
    t.add_row("overall", *[f"{noise[s]['overall']:.4f}" for s in noise])
    console.print(t)
    if json_path:
        atomic_write_text(json_path, json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")


@worlds_app.command("show")
@user_errors
def worlds_show(
    world: Annotated[str, typer.Argument(help="World name, e.g. shapes.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("grid.png"),
    res: Annotated[int | None, typer.Option("--res", help="Resolution in pixels. Default: the world's.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 24,
    seed: Annotated[int, typer.Option(help="Scene seed.")] = 0,
) -> None:
    """Draw a captioned grid of training scenes."""
    from benchmarks.worlds import get_world
    from benchmarks.worlds.check import show_grid

    show_grid(get_world(world, res), n, out, seed=seed)
    console.print(f"wrote {out}")


@assets_app.command("build")
@user_errors
def assets_build(
    world: Annotated[str, typer.Option(help="World name, e.g. shapes.")] = "shapes",
    res: Annotated[int, typer.Option("--res", help="Resolution in pixels.")] = 16,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps. Default: features.DEFAULT_STEPS.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and the training scenes.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Folder to write. Default: the shipped benchmarks/assets/eval-clip-WORLD-RES.")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Train a world's evaluation CLIP from scratch on its train split and write it with its retrieval report.

    The folder holds open_clip_config.json, open_clip_model.safetensors and report.json (held-out
    image-to-caption accuracy). Example: ntm-bench assets build --world shapes --res 32
    """
    from benchmarks.features import DEFAULT_STEPS, asset_dir, build_eval_clip

    folder = out or asset_dir(world, res)
    report = build_eval_clip(world, res, folder, steps=steps or DEFAULT_STEPS, seed=seed, progress=progress)
    console.print(
        f"{world} @ {res}px: held-out retrieval accuracy {report['accuracy']:.4f} "
        f"(caption text match {report['text_match_accuracy']:.4f}) on {report['images']} test images, "
        f"{report['train_seconds']:.0f} s training; wrote {folder}"
    )


if __name__ == "__main__":
    app()
