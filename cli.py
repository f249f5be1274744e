"""ntm-bench: reproduce few-step generator comparison tables with one command.

Examples:
    ntm-bench reproduce --preset tiny
    ntm-bench eval --models fm-teacher-4,ground-truth --suites geneval --preset tiny --out runs/a
    ntm-bench table results/tiny
    ntm-bench worlds check shapes --res 16 --n 500 --json parser.json
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

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
worlds_app = typer.Typer(help="Inspect the data worlds: list, check the scene parser, draw a grid.", no_args_is_help=True)
app.add_typer(worlds_app, name="worlds")
console = Console()
errors = Console(stderr=True)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Bundled preset name (see `ntm-bench presets`) or a .toml path.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device: cpu, cuda, cuda:1 or auto. Default: the preset's.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can cause (bad names, files, options) into one red line and exit code 2."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from baselines.registry import UnknownNameError

        try:
            return fn(*args, **kwargs)
        except (UnknownNameError, ValueError, FileNotFoundError, NotImplementedError) as err:
            errors.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False)
            raise typer.Exit(2) from None

    return run


def _split(names: str | None) -> list[str] | None:
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


@app.command()
@user_errors
def reproduce(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train what the preset needs, run every suite on every model, write the tables.

    Finished pieces are found in OUT/records and not recomputed; trained weights are cached in
    OUT/checkpoints. Example: ntm-bench reproduce --preset tiny --out /tmp/tiny
    """
    from benchmarks.presets import load_preset
    from benchmarks.runner import evaluate
    from benchmarks.tables import to_markdown, write_tables

    p = load_preset(preset)
    out = out or Path("results") / p.name
    evaluate(p, out, device=device, progress=progress)
    frame = write_tables(out)
    typer.echo(to_markdown(frame))
    console.print(f"wrote {out}/summary.csv, summary.md, summary.tex and samples/")


@app.command("train")
@user_errors
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
    typer.echo(to_markdown(write_tables(out)))


@app.command()
@user_errors
def table(results_dir: Annotated[Path, typer.Argument(help="A results folder holding records/.")]) -> None:
    """Rebuild summary.csv/.md/.tex and sample grids from the records alone."""
    from benchmarks.tables import to_markdown, write_tables

    typer.echo(to_markdown(write_tables(results_dir)))


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


if __name__ == "__main__":
    app()
