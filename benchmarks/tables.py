"""Tables from records alone: summary.csv / .md / .tex (one row per model), the protocol, plots, sample grids.

The protocol section lists what every number was measured under (suite versions, world, sample
counts, feature networks, reference sets, package versions, commit, device), each with its
DISTINCT values over the records, and warns when records that share a table disagree on them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.intervals import geneval_interval
from benchmarks.plots import geneval_per_category_figure, image_grid, quality_vs_nfe_figure, save_png
from benchmarks.records import RecordStore, atomic_write_text

IDENTITY = ["model", "family", "steps", "nfe", "params", "train_steps", "teacher_nfe"]
GENEVAL_TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
GENEVAL_SUITES = {"geneval": "geneval", "geneval-real": "geneval_owlv2", "geneval_official": "geneval_official"}
"""suite -> the prefix of its metric names: the world's exact parser (`geneval`), OWLv2 + CLIP on GenEval's
prompts (`geneval_owlv2`), GenEval's own scorer's results brought in by `import-geneval` (`geneval_official`)."""
FEATURE_NETS = ("evalclip", "inception")


def _geneval_metrics(prefix: str) -> list[str]:
    return [f"{prefix}_overall", *[f"{prefix}_{t}" for t in GENEVAL_TASKS]]


SHOWN = [
    *_geneval_metrics("geneval"), "fid_evalclip", "kid_evalclip", "clipscore", "nll_bpd", "nll_traj_bpd",
    "img_per_s", "nll_per_s",
]
"""Columns every table has (n/a where a model has no record)."""
METRICS = [
    *_geneval_metrics("geneval"), *_geneval_metrics("geneval_owlv2"), *_geneval_metrics("geneval_official"),
    *[f"{m}_{net}" for net in FEATURE_NETS for m in ("fid", "kid")], "clipscore", "nll_bpd", "nll_traj_bpd",
    "nll_latent_bpd", "nll_traj_latent_bpd", "img_per_s", "nll_per_s",
]
"""Every metric column, in table order; those not in SHOWN appear when some record has them."""
INTERVALS = [m for m in METRICS if m.startswith(("geneval", "fid_"))]
"""Metrics with a 95% bootstrap interval (`<m>_lo`, `<m>_hi`): GenEval-style ones over prompts
(`benchmarks.intervals`, from the rows), FID over generated images (the fid suite's own)."""
LABELS = ["nll_estimator"]
RATES = ("img_per_s", "nll_per_s")
LEGACY_FID = ("fid", "kid", "kid_std", "fid_floor", "kid_floor", "kid_floor_std")
"""Metric names of fid records written before the names carried the feature network."""


def canonical_metrics(summary: dict) -> dict[str, Any]:
    """A summary's metrics under today's names: records written before the names carried the feature network
    (`fid` -> `fid_evalclip` / `fid_inception` by the record's `fid_features`) or the detector
    (geneval-real's `geneval_*` -> `geneval_owlv2_*`) read as if written now; the values are untouched."""
    metrics = dict(summary["metrics"])
    if summary["suite"] == "fid" and "fid" in metrics:
        tag = str(metrics.get("fid_features", "eval-clip")).replace("-", "")
        for key in LEGACY_FID:
            if key in metrics:
                first, rest = key.split("_", 1) if "_" in key else (key, "")
                metrics[f"{first}_{tag}" + (f"_{rest}" if rest else "")] = metrics.pop(key)
    if summary["suite"] == "geneval-real":
        metrics = {
            (f"geneval_owlv2_{k[len('geneval_'):]}" if k.startswith("geneval_") and not k.startswith("geneval_owlv2_")
             else k): v
            for k, v in metrics.items()
        }
    return metrics


def summary_frame(store: RecordStore) -> pd.DataFrame:
    """One row per model, from its newest spec's records (`RecordStore.latest`): spec columns, each
    metric's mean over seeds (and `<metric>_std` if > 1 seed), and the intervals `<metric>_lo` / `_hi`."""
    return _frame(store.latest()[0], store.rows)


def _fid_interval(points: list[float], los: list[float], his: list[float]) -> tuple[float, float]:
    """The FID interval of a mean over k seeds from each seed's own interval: the mean half-widths over sqrt(k)
    (independent seeds); with one seed, that seed's interval."""
    mean, k = float(np.mean(points)), len(points)
    below = float(np.mean([p - lo for p, lo in zip(points, los)])) / math.sqrt(k)
    above = float(np.mean([hi - p for p, hi in zip(points, his)])) / math.sqrt(k)
    return mean - below, mean + above


def _frame(summaries: list[dict], rows_of: Callable[[dict], list[dict]] | None = None) -> pd.DataFrame:
    per_model: dict[str, dict] = {}
    values: dict[tuple[str, str], list[float]] = {}
    bounds: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    geneval_rows: dict[tuple[str, str], list[dict]] = {}
    for s in summaries:
        spec = s["spec"]
        training = spec.get("training") or {}
        row = per_model.setdefault(
            s["model"],
            {
                "model": s["model"], "family": spec["family"], "steps": spec["steps"], "nfe": spec["nfe"],
                "params": spec["parameters"], "train_steps": training.get("optimizer_steps"),
                "teacher_nfe": training.get("teacher_nfe"),
            },
        )
        row.setdefault("seeds", set()).add(s["seed"])
        metrics = canonical_metrics(s)
        for k, v in metrics.items():
            if k in LABELS:
                row[k] = v
            elif k in METRICS and v is not None:
                values.setdefault((s["model"], k), []).append(float(v))
                if k.startswith("fid_") and f"{k}_lo" in metrics:
                    bounds.setdefault((s["model"], k), []).append((float(v), metrics[f"{k}_lo"], metrics[f"{k}_hi"]))
        prefix = GENEVAL_SUITES.get(s["suite"])
        if prefix and rows_of is not None and f"{prefix}_overall" in metrics:
            scored = [r for r in rows_of(s) if {"tag", "prompt_index", "correct"} <= r.keys()]
            geneval_rows.setdefault((s["model"], prefix), []).extend(scored)
    for (model, metric), vs in values.items():
        per_model[model][metric] = float(np.mean(vs))
        if len(vs) > 1:
            per_model[model][f"{metric}_std"] = float(np.std(vs, ddof=1))
    for (model, metric), found in bounds.items():
        if len(found) == len(values[(model, metric)]):  # every seed's record has its interval
            lo, hi = _fid_interval(*map(list, zip(*found)))
            per_model[model][f"{metric}_lo"], per_model[model][f"{metric}_hi"] = lo, hi
    for (model, prefix), rs in geneval_rows.items():
        if rs:
            for part, interval in geneval_interval(rs).items():
                per_model[model][f"{prefix}_{part}_lo"], per_model[model][f"{prefix}_{part}_hi"] = interval.lo, interval.hi
    rows = []
    for row in per_model.values():
        row["seeds"] = len(row["seeds"])
        rows.append(row)
    present = {k for r in rows for k in r}
    columns = IDENTITY + ["seeds"] + [
        c for m in METRICS if m in SHOWN or m in present
        for c in (m, f"{m}_std", f"{m}_lo", f"{m}_hi") if c == m or c in present
    ] + LABELS
    frame = pd.DataFrame(rows, columns=columns)
    # reference rows (ground truth) first, then by family and name
    order = frame["family"].ne("reference").astype(int)
    return frame.assign(_o=order).sort_values(["_o", "family", "model"]).drop(columns="_o").reset_index(drop=True)


def _fmt(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if column == "params":
        return f"{value / 1e6:.2f}M"
    if column in ("train_steps", "teacher_nfe"):
        return f"{int(value):,}"
    if isinstance(value, float):
        return _number(value, column)
    return str(value)


def _number(value: float, column: str) -> str:
    """3 decimals; KID (typically 1e-3..1e-1) gets 5, rates 4 significant digits (thousands separated)."""
    if column.startswith("kid"):
        return f"{value:.5f}"
    if column in RATES:
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:.3f}"


SUFFIXES = ("_std", "_lo", "_hi")


def _cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, folding `<m>_std` into `<m>` as mean ± std and `<m>_lo`/`_hi` as [lo, hi]."""
    headers = [c for c in frame.columns if not (c.endswith(SUFFIXES) and c.rsplit("_", 1)[0] in frame.columns)]
    cells = []
    for _, r in frame.iterrows():
        line = []
        for c in headers:
            text = _fmt(r[c], c)
            std, lo, hi = (r.get(f"{c}{suffix}") for suffix in SUFFIXES)
            if _given(std):
                text += f" ± {_number(float(std), c)}"
            if _given(lo) and _given(hi) and _given(r[c]):
                text += f" [{_bound(float(lo), c)}, {_bound(float(hi), c)}]"
            line.append(text)
        cells.append(line)
    return headers, cells


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _bound(value: float, column: str) -> str:
    """An interval's end, two decimals (three below 0.1 in absolute value, KID five): it is an uncertainty."""
    if column.startswith("kid"):
        return f"{value:.5f}"
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def to_markdown(frame: pd.DataFrame) -> str:
    headers, cells = _cells(frame)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    headers, cells = _cells(frame)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")

    lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(headers) - 2) + "}", r"\toprule"]
    lines.append(" & ".join(esc(h) for h in headers) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


COMPACT = [
    "geneval_overall", "geneval_owlv2_overall", "geneval_official_overall", "fid_evalclip", "fid_inception",
    "clipscore", "nll_bpd", "img_per_s",
]
LOWER_IS_BETTER = ("fid_", "kid_", "nll_")


def to_compact_latex(frame: pd.DataFrame) -> str:
    """A paper-sized table: model, steps, NFE and the headline metrics present, the best model value of each
    column in bold (reference rows, such as the ground truth, are shown but never bold)."""
    metrics = [m for m in COMPACT if m in frame and frame[m].map(_given).any()]
    models = frame[frame["family"] != "reference"]
    best = {}
    for m in metrics:
        values = models[m].dropna()
        if len(values):
            best[m] = values.min() if m.startswith(LOWER_IS_BETTER) else values.max()

    def esc(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%")

    arrows = [esc(m) + (r" $\downarrow$" if m.startswith(LOWER_IS_BETTER) else r" $\uparrow$") for m in metrics]
    lines = [r"\begin{tabular}{lrr" + "r" * len(metrics) + "}", r"\toprule",
             " & ".join(["model", "steps", "NFE", *arrows]) + r" \\", r"\midrule"]
    for _, r in frame.iterrows():
        cells = [esc(str(r["model"])), _fmt(r["steps"], "steps"), _fmt(r["nfe"], "nfe")]
        for m in metrics:
            text = esc(_fmt(r[m], m))
            if r["family"] != "reference" and m in best and _given(r[m]) and r[m] == best[m]:
                text = r"\textbf{" + text + "}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tally(values: Iterable[Any]) -> list[tuple[Any, int]]:
    """Distinct values (any JSON value) with how many records hold each, in a stable order."""
    counts = Counter(json.dumps(v, sort_keys=True) for v in values)
    items = [(json.loads(k), n) for k, n in counts.items()]
    try:
        return sorted(items, key=lambda item: item[0])
    except TypeError:  # mixed or unordered types (None beside str, dicts): order by their JSON
        return sorted(items, key=lambda item: json.dumps(item[0], sort_keys=True))


def _distinct(values: Iterable[Any]) -> list[Any]:
    return [v for v, _ in _tally(values)]


def protocol_summary(summaries: Iterable[dict]) -> dict[str, Any]:
    """What the records were measured under, as distinct values, and a warning wherever they disagree.

    Reads the summary JSONs only: each holds its suite, suite version and options, world and
    resolution, metrics (`*_images` sample counts, `*_feature_hash` feature networks,
    `*_reference` reference sets, `*_floor` real-vs-real floors) and `protocol` (records.protocol():
    commit, package versions, python, device).
    """
    summaries = list(summaries)
    proto = [s.get("protocol") or {} for s in summaries]
    suites: dict[str, dict[str, Any]] = {}
    keyed: dict[str, dict[str, list]] = {
        "feature_networks": {}, "ruler_accuracy": {}, "reference_sets": {}, "reference_floors": {}
    }
    suffixes = {
        "feature_networks": "_feature_hash", "ruler_accuracy": "_feature_accuracy",
        "reference_sets": "_reference", "reference_floors": "_floor",
    }
    for name in sorted({s["suite"] for s in summaries}):
        mine = [s for s in summaries if s["suite"] == name]
        counts = [v for s in mine for k, v in s["metrics"].items() if k.endswith("_images")]
        suites[name] = {
            "versions": _distinct(s["suite_version"] for s in mine),
            "records": len(mine),
            "images_per_record": _distinct(counts),
            "options": _distinct(s.get("suite_options") for s in mine),
        }
    for s in summaries:
        for k, v in s["metrics"].items():
            for group, suffix in suffixes.items():
                if k.endswith(suffix) and v is not None:
                    keyed[group].setdefault(k, []).append(v)
    # the GenEval-style ruler: the world's parser scoring the world's own renders of the suite's prompts
    for s in summaries:
        if s["suite"] == "geneval" and s["model"] == "ground-truth":
            keyed["ruler_accuracy"].setdefault("parser (geneval_overall on ground-truth renders)", []).append(
                s["metrics"].get("geneval_overall")
            )
    packages = sorted({p for r in proto for p in r.get("packages", {})})
    info: dict[str, Any] = {
        "records": len(summaries),
        "models": sorted({s["model"] for s in summaries}),
        "seeds": _distinct(s["seed"] for s in summaries),
        "presets": _distinct(s.get("preset") for s in summaries),
        "worlds": _distinct(f"{s.get('world')}@{s.get('resolution')}" for s in summaries),
        "suites": suites,
        **{group: {k: _distinct(vs) for k, vs in sorted(found.items())} for group, found in keyed.items()},
        "packages": {p: _distinct(r.get("packages", {}).get(p) for r in proto) for p in packages},
        "python": _distinct(r.get("python") for r in proto),
        "commits": _distinct(r.get("commit") for r in proto),
        "devices": _distinct(r.get("device") for r in proto),
        "overrides": _distinct(r.get("overrides", []) for r in proto),
    }
    mixes = [
        ("commits", [r.get("commit") for r in proto]),
        *[(f"{p} versions", [r.get("packages", {}).get(p) for r in proto]) for p in packages],
        ("python versions", [r.get("python") for r in proto]),
        ("devices", [r.get("device") for r in proto]),
        ("command-line overrides", [r.get("overrides", []) for r in proto]),
        ("worlds", [f"{s.get('world')}@{s.get('resolution')}" for s in summaries]),
        *sorted(keyed["feature_networks"].items()),
    ]
    for name in suites:
        mine = [s for s in summaries if s["suite"] == name]
        mixes += [
            (f"{name} suite versions", [s["suite_version"] for s in mine]),
            (f"{name} suite options", [s.get("suite_options") for s in mine]),
        ]
    info["warnings"] = [
        f"records mix {what}: " + ", ".join(f"{_text(v)} ({n} record{'s' * (n != 1)})" for v, n in tally)
        for what, values in mixes
        if len(tally := _tally(values)) > 1
    ]
    return info


def _text(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _values(values: list[Any]) -> str:
    return " | ".join(_text(v) for v in values) if values else "n/a"


def protocol_markdown(info: dict[str, Any]) -> str:
    """The protocol section of summary.md: one bullet per item, then one `warning:` line per disagreement."""
    suites = "; ".join(
        f"{name} v{_values(s['versions'])} ({_values(s['images_per_record'])} images per record, "
        f"{s['records']} records)"
        for name, s in info["suites"].items()
    )
    lines = [
        "## Protocol",
        "",
        f"- records: {info['records']} ({len(info['models'])} models; seeds {', '.join(map(str, info['seeds']))}; "
        f"preset {_values(info['presets'])})",
        f"- world: {_values(info['worlds'])}",
        f"- suites: {suites}",
    ]
    groups = (
        ("feature_networks", "feature networks"), ("ruler_accuracy", "ruler accuracy"),
        ("reference_sets", "reference sets"), ("reference_floors", "real-vs-real floors"),
    )
    for group, title in groups:
        if info[group]:
            lines.append(f"- {title}: " + "; ".join(f"{k} {_values(vs)}" for k, vs in info[group].items()))
    lines += [
        "- packages: " + ", ".join(f"{p} {'not installed' if vs == [None] else _values(vs)}"
                                   for p, vs in info["packages"].items()),
        f"- python: {_values(info['python'])}",
        f"- commit: {_values(info['commits'])}",
        f"- device: {_values(info['devices'])}",
    ]
    if info["overrides"] != [[]]:
        lines.append(f"- command-line overrides of the preset: {_values(info['overrides'])}")
    if info["warnings"]:
        lines += ["", *[f"warning: {w}" for w in info["warnings"]]]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path) -> pd.DataFrame:
    """Rebuild summary.{csv,md,tex}, protocol.json, plots/*.png and samples/<model>.png from `out_dir/records`."""
    out_dir = Path(out_dir)
    store = RecordStore(out_dir / "records")
    current, superseded = store.latest()
    frame = _frame(current, store.rows)
    if frame.empty:
        raise FileNotFoundError(f"no records under {store.root}; run `ntm-bench eval` or `ntm-bench reproduce` first")
    info = protocol_summary(current)
    info["warnings"] += [
        f"{model} has records of an older spec ({', '.join(hashes)}), left out of this table: a retrained or "
        f"reconfigured model; delete {store.root / model}/*.{{{','.join(hashes)}}}.* to drop them"
        for model, hashes in sorted(superseded.items())
    ]
    atomic_write_text(out_dir / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", to_markdown(frame) + "\n" + protocol_markdown(info))
    atomic_write_text(out_dir / "summary.tex", to_latex(frame))
    atomic_write_text(out_dir / "summary.compact.tex", to_compact_latex(frame))
    atomic_write_text(out_dir / "protocol.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    figures = {
        "quality_vs_nfe": quality_vs_nfe_figure(frame),
        "geneval_per_category": geneval_per_category_figure(frame, GENEVAL_TASKS),
    }
    for name, fig in figures.items():
        path = out_dir / "plots" / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # its metrics left the records: no stale figure
        else:
            save_png(fig, path)
    first_seed: dict[str, dict] = {}
    for s in current:
        if s["suite"] == "geneval" and s["seed"] <= first_seed.get(s["model"], s)["seed"]:
            first_seed[s["model"]] = s
    for model, s in first_seed.items():
        art = store.artifacts(s)
        if art:
            title = f"{model} ({s['spec']['steps']} steps, NFE {s['spec']['nfe']})"
            name = s["record"].split("/")[0]  # the model's records folder: a file-safe name (diffusers:/x/y is not)
            image_grid(art["images"], list(art["prompts"]), out_dir / "samples" / f"{name}.png", title=title)
    return frame
