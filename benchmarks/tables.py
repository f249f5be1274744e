"""Tables from records alone: summary.csv / .md / .tex (one row per model), the protocol, plots, sample grids.

The protocol section lists what every number was measured under (suite versions, world, sample
counts, feature networks, reference sets, package versions, commit, device), each with its
DISTINCT values over the records, and warns when records that share a table disagree on them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.plots import geneval_per_category_figure, image_grid, quality_vs_nfe_figure, save_png
from benchmarks.records import RecordStore, atomic_write_text

IDENTITY = ["model", "family", "steps", "nfe", "params", "train_steps", "teacher_nfe"]
GENEVAL_TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
METRICS = [
    "geneval_overall", *[f"geneval_{t}" for t in GENEVAL_TASKS], "fid", "kid", "clipscore",
    "nll_bpd", "nll_traj_bpd", "img_per_s", "nll_per_s",
]
LABELS = ["nll_estimator"]
RATES = ("img_per_s", "nll_per_s")


def summary_frame(store: RecordStore) -> pd.DataFrame:
    """One row per model, from its newest spec's records (`RecordStore.latest`): spec columns, each
    metric's mean over seeds (and `<metric>_std` if > 1 seed)."""
    return _frame(store.latest()[0])


def _frame(summaries: list[dict]) -> pd.DataFrame:
    per_model: dict[str, dict] = {}
    values: dict[tuple[str, str], list[float]] = {}
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
        for k, v in s["metrics"].items():
            if k in LABELS:
                row[k] = v
            elif k in METRICS and v is not None:
                values.setdefault((s["model"], k), []).append(float(v))
    for (model, metric), vs in values.items():
        per_model[model][metric] = float(np.mean(vs))
        if len(vs) > 1:
            per_model[model][f"{metric}_std"] = float(np.std(vs, ddof=1))
    rows = []
    for row in per_model.values():
        row["seeds"] = len(row["seeds"])
        rows.append(row)
    stds = {k for r in rows for k in r if k.endswith("_std")}
    columns = IDENTITY + ["seeds"] + [c for m in METRICS for c in (m, f"{m}_std") if c in METRICS or c in stds] + LABELS
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
    if column == "kid":
        return f"{value:.5f}"
    if column in RATES:
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:.3f}"


def _cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, folding `<m>_std` into `<m>` as mean ± std."""
    headers = [c for c in frame.columns if not c.endswith("_std")]
    cells = []
    for _, r in frame.iterrows():
        line = []
        for c in headers:
            text = _fmt(r[c], c)
            std = r.get(f"{c}_std")
            if std is not None and not (isinstance(std, float) and math.isnan(std)):
                text += f" ± {_number(float(std), c)}"
            line.append(text)
        cells.append(line)
    return headers, cells


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
    }
    mixes = [
        ("commits", [r.get("commit") for r in proto]),
        *[(f"{p} versions", [r.get("packages", {}).get(p) for r in proto]) for p in packages],
        ("python versions", [r.get("python") for r in proto]),
        ("devices", [r.get("device") for r in proto]),
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
    if info["warnings"]:
        lines += ["", *[f"warning: {w}" for w in info["warnings"]]]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path) -> pd.DataFrame:
    """Rebuild summary.{csv,md,tex}, protocol.json, plots/*.png and samples/<model>.png from `out_dir/records`."""
    out_dir = Path(out_dir)
    store = RecordStore(out_dir / "records")
    current, superseded = store.latest()
    frame = _frame(current)
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
            image_grid(art["images"], list(art["prompts"]), out_dir / "samples" / f"{model}.png", title=title)
    return frame
