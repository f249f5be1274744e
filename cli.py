"""ntm-bench: reproduce few-step generator comparison tables with one command.

\b
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

# Help texts are plain text (rich_markup_mode=None): "[audit]" or "FLUX.1 [schnell]" show as written.
app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
)
worlds_app = typer.Typer(
    help="Inspect the data worlds: list, check the scene parser, draw a grid.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(worlds_app, name="worlds")
assets_app = typer.Typer(
    help="Build the evaluation assets that ship with the package (the worlds' eval-CLIPs).", no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(assets_app, name="assets")
console = Console(markup=False)
"""Results and listings: no markup, so names, paths and descriptions print as they are (brackets included)."""
errors = Console(stderr=True)
"""Errors: markup for the red labels; put every other text through `escape()`."""

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Bundled preset name (see `ntm-bench presets`) or a .toml path.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device: cpu, cuda, cuda:N (e.g. cuda:1), mps or auto. Default: the preset's.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a preset key, dotted, TOML value: --set train.ntm.steps=100 --set seeds=[1]. Repeatable."),
]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="At most N prompts per task in the prompt suites (geneval, clipscore, geneval-real).")]
SeedsOpt = Annotated[str | None, typer.Option(help="Comma-separated evaluation seeds, e.g. 0,1. Default: the preset's.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch in every suite but speed. Default: the preset's.")]
ModelArgsOpt = Annotated[
    str | None,
    typer.Option(help="Options of the named model(s), e.g. path=/models/x,dtype=float16,steps=4,guidance=0.0."),
]


def _print_version(given: bool) -> None:
    if not given:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"ntm-bench {version('ntm-bench')}")
    except PackageNotFoundError:
        errors.print("[bold red]error:[/bold red] ntm-bench is not installed as a package; run pip install -e . first")
        raise typer.Exit(2) from None
    raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


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


def _split(names: str | None, kind: str = "model") -> list[str] | None:
    """The comma-separated `kind` names of an option (model or suite); None when the option was not given.

    An option given but naming nothing ("", ",,") is an error listing the valid names, never "the preset's"."""
    if names is None:
        return None
    split = [n.strip() for n in names.split(",") if n.strip()]
    if not split:
        if kind == "suite":
            from benchmarks.suites import available_suites as available
        else:
            import benchmarks.reference  # noqa: F401  (registers the reference rows)
            from baselines.registry import available_models as available
        valid = ", ".join(available())
        raise ValueError(f"--{kind}s {names!r} names no {kind}; give comma-separated names, available: {valid}")
    return split


def _preset(
    name: str, sets: list[str] | None = None, limit: int | None = None, seeds: str | None = None,
    batch_size: int | None = None, model_args: str | None = None, models: list[str] | None = None,
) -> Any:
    """The preset `name` with the command line's overrides applied and checked (recorded in the protocol)."""
    from benchmarks.presets import load_preset

    p = load_preset(name)
    if not (sets or limit or seeds or batch_size or model_args):
        return p
    from baselines.registry import parse_model_args
    from benchmarks.presets.overrides import apply_overrides

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--seeds {seeds!r} must be comma-separated integers >= 0, e.g. --seeds 0,1") from None
        if not seed_list or min(seed_list) < 0:
            raise ValueError(f"--seeds {seeds!r} must be comma-separated integers >= 0, e.g. --seeds 0,1")
    per_model = None
    if model_args:
        if not models:
            raise ValueError("--model-args needs --models naming the model(s) they are for")
        args = parse_model_args(model_args)
        per_model = {m: args for m in models}
    return apply_overrides(p, sets or (), limit, seed_list, batch_size, per_model)


def _audit_written(out: Path, findings: Any, log: bool = False) -> Any:
    """Say where the audit's findings went and how many lie below the truth (`log`: in OUT/run.log too);
    returns those rows."""
    from benchmarks.audit.findings import below_truth

    flagged = below_truth(findings)
    _say(out, f"wrote {out}/audit: summary.md, summary.csv, plots; {len(flagged)} of {len(findings)} below truth", log)
    return flagged


def _say(out: Path, message: str, log: bool = True) -> None:
    """Print `message`; with `log`, append it to OUT/run.log as well (benchmarks.runlog)."""
    from benchmarks.runlog import append_line

    console.print(message)
    if log:
        append_line(out, message)


@app.command()
@user_errors
@distributed.command
def reproduce(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder. Default: results/<preset>.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
    limit: LimitOpt = None,
    seeds: SeedsOpt = None,
    batch_size: BatchOpt = None,
) -> None:
    """Train what the preset needs, run every suite on every model, write the tables, then the audit.

    The likelihood audit (as `audit-likelihood`) runs when the preset has an [audit] table. Finished pieces are found in OUT/records and not recomputed; trained weights are cached in
    OUT/checkpoints. Overrides (--set, --limit, --seeds, --batch-size) go into every record's protocol.
    Example: ntm-bench reproduce --preset tiny --out /tmp/tiny
    """
    from benchmarks.curves import wants_curves
    from benchmarks.runner import evaluate
    from benchmarks.tables import to_markdown, write_tables

    p = _preset(preset, set_, limit, seeds, batch_size)
    out = out or Path("results") / p.name
    evaluate(p, out, device=device, progress=progress)
    if not distributed.main_goes_on():  # with several processes rank 0 alone writes, prints and audits
        return
    frame = write_tables(out)
    typer.echo(to_markdown(frame))
    _say(out, f"wrote {out}/summary.csv, summary.md, summary.tex and samples/")
    _diagnose(p, out, device, log=True)
    if wants_curves(p):
        _curves(p, out, device, None, progress)
    if p.audit is not None:
        from benchmarks.audit.run import run_audit

        _audit_written(out, run_audit(p, out, device=device, progress=progress, reuse=True), log=True)


def _diagnose(p: Any, out: Path, device: str | None, models: list[str] | None = None, log: bool = False) -> None:
    from benchmarks.diagnose import diagnose as run_diagnose

    steps, samples = run_diagnose(p, out, device=device, models=models)
    _say(out, f"wrote {steps} and {samples}", log)


def _curves(p: Any, out: Path, device: str | None, models: list[str] | None, progress: bool) -> None:
    from benchmarks.curves import learning_curves

    path, skipped = learning_curves(p, out, models=models, device=device, progress=progress)
    note = f" (no snapshots, so no curve: {', '.join(skipped)})" if skipped else ""
    _say(out, f"wrote {path} and {out}/plots/learning_curves.png{note}")


@app.command()
@user_errors
def curves(
    preset: PresetOpt = "tiny",
    out: Annotated[Path | None, typer.Option(help="Results folder (weights cached in OUT/checkpoints). Default: results/<preset>.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models. Default: the preset's.")] = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Learning curves: GenEval-style overall and FID of every trained model at each of its training snapshots.

    Snapshots are kept while training when the preset's [train.*] tables set snapshot_every (the
    cpu-reference preset does); `reproduce` then runs this itself. Writes OUT/learning_curves.csv,
    OUT/plots/learning_curves.png and the records of step N in OUT/curves/step-N/.
    Example: ntm-bench curves --preset cpu-reference
    """
    names = _split(models)
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    _curves(p, out or Path("results") / p.name, device, names, progress)


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
    names = _split(models)
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    _diagnose(p, out or Path("results") / p.name, device, names)


@app.command("train")
@user_errors
@distributed.command
def train_(
    model: Annotated[str, typer.Argument(help="A registered model (see `ntm-bench models`), e.g. ntm.")],
    preset: PresetOpt = "tiny",
    world: Annotated[str | None, typer.Option(help="Train on this world instead of the preset's.")] = None,
    init: Annotated[str | None, typer.Option(help="NTM only: 'scratch', 'teacher' (start from the flow-matching teacher) or 'diffusers:PATH' (fine-tune a local SD3-family pipeline in its VAE latent space, as the ntm-diffusers model).")] = None,
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
    out = out or Path("results") / p.name
    generator = train(p, out, model, device=device, progress=progress, **options)
    if not distributed.main_goes_on():
        return
    from baselines.base import weights_folders

    spec = generator.spec
    folders = weights_folders(out / "checkpoints", spec.weights_hash)
    where = " and ".join(str(f) for f in folders) or f"none of the folders in {out / 'checkpoints'} (not trained here)"
    console.print(
        f"{spec.name}: {spec.parameters / 1e6:.2f}M parameters, weights {spec.weights_hash[:12]} in {where}", soft_wrap=True
    )


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
    set_: SetOpt = None,
    limit: LimitOpt = None,
    seeds: SeedsOpt = None,
    batch_size: BatchOpt = None,
    model_args: ModelArgsOpt = None,
) -> None:
    """Score registered models on suites; records go to OUT/records and the tables are rebuilt.

    Preset keys can be overridden without a file (--set, --limit, --seeds, --batch-size, --model-args); the
    overrides are written into every record's protocol. Example:
    ntm-bench eval --models fm-teacher-4 --suites geneval,nll --preset tiny --limit 2 --set seeds=[1] --out runs/a
    """
    names, suite_names = _split(models), _split(suites, "suite")  # before the heavy imports: fail fast
    from benchmarks.runner import evaluate
    from benchmarks.tables import to_markdown, write_tables

    p = _preset(preset, set_, limit, seeds, batch_size, model_args, names)
    evaluate(p, out, models=names, suites=suite_names, device=device, progress=progress)
    if not distributed.main_goes_on():
        return
    typer.echo(to_markdown(write_tables(out)))
    _say(out, f"wrote {out}: records/, summary.csv, summary.md, summary.tex, protocol.json, plots/ and samples/")


@app.command()
@user_errors
def table(results_dir: Annotated[Path, typer.Argument(help="A results folder holding records/.")]) -> None:
    """Rebuild summary.csv/.md/.tex and sample grids from the records alone."""
    from benchmarks.tables import to_markdown, write_tables

    typer.echo(to_markdown(write_tables(results_dir)))


@app.command()
@user_errors
def compare(
    results_dir: Annotated[Path, typer.Argument(help="A results folder holding records/.")],
    a: Annotated[str, typer.Argument(help="Model A (the difference is A - B).")],
    b: Annotated[str, typer.Argument(help="Model B.")],
    pool: Annotated[
        list[Path] | None,
        typer.Option(help="Another results folder with A and B (e.g. a second training seed), pooled pair by pair. Repeatable."),
    ] = None,
    draws: Annotated[int, typer.Option(min=2, help="Bootstrap draws.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap's draws.")] = 0,
) -> None:
    """Paired GenEval-style difference A - B with a 95% bootstrap interval over prompts.

    Both models' newest geneval records (every evaluation seed; also geneval-real and imported GenEval results)
    are paired item by item: same prompts, same sample seeds. Prompts are resampled within each task, both
    models together, so the prompt difficulty they share cancels. With --pool, the same pairs from other folders
    (other training seeds) are averaged in; training seeds are not resampled. FID, where recorded, is shown
    with each model's own interval. Example: ntm-bench compare results/tiny-long ntm fm-teacher-4 --pool results/tiny-long-seed1
    """
    from benchmarks.compare import compare_models, to_text

    typer.echo(to_text(compare_models([results_dir, *(pool or [])], a, b, draws=draws, seed=seed)))


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
    names = _split(models)  # before the heavy imports: fail fast
    from benchmarks.audit.run import run_audit
    from benchmarks.presets import load_preset

    p = load_preset(preset)
    out = out or Path("results") / p.name
    flagged = _audit_written(out, run_audit(p, out, models=names, device=device, progress=progress))
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
    console.print(f"ready: preset {diagnosis.preset}, results in {diagnosis.out}", highlight=False)


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


@app.command()
@user_errors
def generate(
    models: Annotated[str, typer.Option(help="Comma-separated registered models (see `ntm-bench models`).")],
    out: Annotated[Path, typer.Option(help="Folder to write; each model's images go to OUT/<model>/.")],
    layout: Annotated[str, typer.Option(help="Folder layout; valid: geneval (GenEval's evaluate_images.py input).")] = "geneval",
    preset: PresetOpt = "tiny",
    prompts: Annotated[
        Path | None, typer.Option(help="A GenEval metadata.jsonl to sample. Default: the preset's geneval suite prompts.")
    ] = None,
    images_per_prompt: Annotated[
        int | None, typer.Option(min=1, help="Images per prompt. Default: the geneval suite's (4 with --prompts).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N prompts per task (tag), the first ones.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Run seed of the image seeds. Default: the preset's first.")] = None,
    results: Annotated[
        Path | None, typer.Option(help="Results folder whose checkpoints/ holds the trained weights. Default: results/<preset>.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images sampled per batch.")] = 16,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
    model_args: ModelArgsOpt = None,
) -> None:
    """Sample prompts into GenEval's folder layout, for GenEval's own scorer: OUT/<model>/<index>/metadata.jsonl
    and OUT/<model>/<index>/samples/<k>.png (and seeds.json, the seed of every image).

    Models are built (trained if needed, in RESULTS/checkpoints) as `ntm-bench train` does. Complete prompt
    folders are skipped, so an interrupted run continues. Example:
    ntm-bench generate --models ntm,fm-teacher-4 --preset tiny --limit 2 --layout geneval --out gen
    """
    import benchmarks.reference  # noqa: F401  (registers the reference rows)
    from baselines.registry import available_models, get_entry
    from benchmarks.geneval_export import check_layout, file_prompts, preset_prompts, write_geneval_layout
    from benchmarks.records import protocol
    from benchmarks.runner import CheckedGenerator, resolve_device, train
    from benchmarks.worlds import get_world

    check_layout(layout)
    names = _split(models)
    if not names:
        raise ValueError(f"--models {models!r} names no model; give comma-separated names, available: {', '.join(available_models())}")
    for name in names:
        get_entry(name)
    p = _preset(preset, set_, model_args=model_args, models=names)
    world = get_world(p.world, p.resolution, **p.world_options)
    if prompts is not None:
        chosen = file_prompts(prompts, images_per_prompt, p.seeds[0] if seed is None else seed, limit)
    else:
        chosen = preset_prompts(p, world, images_per_prompt, seed, limit)
    extra = {"world": p.world, "resolution": p.resolution, "protocol": protocol(str(resolve_device(device or p.device)))}
    for name in names:
        generator = CheckedGenerator(train(p, results or Path("results") / p.name, name, device=device, progress=progress), world)
        report = write_geneval_layout(generator, chosen, out, name, batch_size, progress, extra)
        console.print(
            f"wrote {report.folder}: {report.written} prompt folder(s), {report.images} images"
            + (f"; {report.skipped} already complete" if report.skipped else ""),
            highlight=False,
        )
    console.print(
        f"score each {out}/<model> with GenEval's evaluation/evaluate_images.py, then "
        "`ntm-bench import-geneval results.jsonl --model <model> --out <results folder>`",
        highlight=False, soft_wrap=True,
    )


@app.command("import-geneval")
@user_errors
def import_geneval(
    results_file: Annotated[Path, typer.Argument(help="results.jsonl written by GenEval's evaluation/evaluate_images.py.")],
    model: Annotated[str, typer.Option(help="The table row to record the scores for, e.g. ntm.")],
    out: Annotated[Path, typer.Option(help="Results folder: the record goes to OUT/records, the tables are rebuilt.")],
    images: Annotated[
        Path | None, typer.Option(help="The exported GEN/<model> folder. Default: found from the results' filenames.")
    ] = None,
) -> None:
    """Record GenEval's own per-image results for a model (suite geneval_official) and rebuild OUT's tables.

    Metrics: geneval_official_overall (mean over tasks of the fraction of correct images, as GenEval's
    summary_scores.py), geneval_official_<tag> per task, geneval_official_prompts_correct, geneval_official_images.
    Example: ntm-bench import-geneval results.jsonl --model ntm --out results/tiny
    """
    from benchmarks.geneval_export import import_geneval_results
    from benchmarks.tables import write_tables

    summary = import_geneval_results(results_file, model, out, images)
    metrics = summary["metrics"]
    console.print(
        f"{model}: geneval_official_overall={metrics['geneval_official_overall']:.4g} over "
        f"{metrics['geneval_official_images']} images; wrote {out / 'records' / summary['record']}.*",
        highlight=False,
    )
    write_tables(out)
    console.print(f"wrote {out}/summary.csv, summary.md, summary.tex", highlight=False)


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
