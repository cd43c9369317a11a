"""Figures and tables from result files only (plotting never runs a benchmark).

- ``fig5-*.png``: speedup over Pyramid ViG across batch sizes, one panel per size group (the
  paper's Fig. 5);
- ``throughput-*.png``: images per second across batch sizes;
- ``table6-*.md``: throughput per model and batch size (the paper's Table VI; ``-`` = out of
  memory, ``x`` = failed);
- ``scaling-*.png``: one DEGC layer vs one dense k-NN layer as the node count grows;
- ``micro-*.md``: kernel microbenchmarks;
- ``deploy-*.png`` / ``deploy-*.md``: CPU deployment speed against ImageNet top-1, beside the
  models users would pick instead (``python -m reports deploy``).

Rows that ran out of memory or failed are gaps in the curves, never a crash.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from .common import FIGURES_DIR, RESULTS_DIR  # noqa: E402
from .schema import ResultError, load  # noqa: E402

#: Fig. 5 groups: (title, baseline, models compared with it).
GROUPS = [
    ("Ti", "pvig_ti", ["cvig_ti", "ivig_ti", "timm:efficientformer_l1"]),
    ("S", "pvig_s", ["cvig_s", "ivig_s", "timm:efficientformer_l3"]),
    ("B", "pvig_b", ["cvig_b", "cvig_b_hr", "ivig_b", "timm:efficientformer_l7"]),
]
STYLE = {
    "cvig": {"marker": "o", "linewidth": 2.2},
    "pvig": {"marker": "s", "linestyle": "--"},
    "ivig": {"marker": "^", "linestyle": "-."},
    "timm": {"marker": "d", "linestyle": ":"},
}


def _style(model: str) -> dict:
    return dict(STYLE.get(model.split(":")[0].split("_")[0], {}))


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def find_results(paths: list[Path] | None = None) -> list[tuple[Path, dict]]:
    """Result documents to draw: the given files, and in the given directories (default
    reports/results) the newest document of every (kind, device). A broken file given by name is
    an error; one found in a directory is skipped with a warning."""
    paths = [Path(p) for p in (paths or [RESULTS_DIR])]
    explicit: list[tuple[Path, dict]] = []
    newest: dict[tuple[str, str], tuple[Path, dict]] = {}
    for path in paths:
        if path.is_file():
            explicit.append((path, load(path)))
        elif path.is_dir():
            for file in sorted(path.glob("*.json")):
                try:
                    doc = load(file)
                except ResultError as err:
                    warnings.warn(f"skipping {err}", stacklevel=2)
                    continue
                key = (doc["kind"], doc["environment"]["device_slug"])
                stamp = (doc["environment"]["date"], file.name)
                best = newest.get(key)
                if best is None or stamp > (best[1]["environment"]["date"], best[0].name):
                    newest[key] = (file, doc)
        else:
            raise FileNotFoundError(f"no result file or directory at {path}")
    chosen = {file: doc for file, doc in [*newest.values(), *explicit]}
    return sorted(chosen.items())


def _series(rows: list[dict], value: str) -> dict[str, dict[int, float]]:
    """model -> {batch: value} with NaN for rows that did not run."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in rows:
        ok = row.get("status", "ok") == "ok" and isinstance(row.get(value), (int, float))
        out[row["model"]][row["batch_size"]] = float(row[value]) if ok else math.nan
    return out


def _spread(rows: list[dict]) -> dict[str, dict[int, tuple[float, float, bool]]]:
    """model -> {batch: (p10_ms, p90_ms, noisy)} for the rows that ran."""
    out: dict[str, dict[int, tuple[float, float, bool]]] = defaultdict(dict)
    for row in rows:
        if row.get("status", "ok") == "ok" and isinstance(row.get("p10_ms"), (int, float)):
            out[row["model"]][row["batch_size"]] = (
                float(row["p10_ms"]),
                float(row["p90_ms"]),
                bool(row.get("noisy")),
            )
    return out


def _draw(ax, batches, values, low, high, noisy, style, label, color=None) -> None:
    """A series with p10-p90 error bars; points flagged as noise are hollow and grey."""
    kwargs = dict(style)
    if color is not None:
        kwargs["color"] = color
    line = ax.errorbar(
        batches,
        values,
        yerr=[
            [max(0.0, v - lo) if v == v else 0.0 for v, lo in zip(values, low, strict=True)],
            [max(0.0, hi - v) if v == v else 0.0 for v, hi in zip(values, high, strict=True)],
        ],
        label=label,
        capsize=3,
        **kwargs,
    )
    shown = [(b, v) for b, v, n in zip(batches, values, noisy, strict=True) if n and v == v]
    if shown:
        ax.plot(
            [b for b, _ in shown],
            [v for _, v in shown],
            linestyle="none",
            marker=kwargs.get("marker", "o"),
            markersize=9,
            markerfacecolor="white",
            markeredgecolor="grey",
            color=line.lines[0].get_color(),
        )


def _wrap(fig, text: str, fontsize: float) -> str:
    """``text`` wrapped to the figure's width (about 0.55 em a character), line by line: a
    one-panel figure is narrower than its device name and noise note."""
    width_pt = fig.get_figwidth() * 72
    chars = max(20, int(width_pt / (0.55 * fontsize)) - 2)
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _noise_note(fig, rows: list[dict]) -> int:
    """Write the note under the plots; returns its number of lines."""
    noisy = [r for r in rows if r.get("noisy")]
    if noisy:
        note = (
            f"hollow grey points: {len(noisy)} measurement(s) flagged as noise "
            f"(e.g. {noisy[0].get('noise')}); bars: p10-p90"
        )
    else:
        note = "bars: p10-p90 of the timed calls"
    note = _wrap(fig, note, 8)
    fig.text(0.01, 0.01, note, fontsize=8, color="dimgrey", va="bottom")
    return note.count("\n") + 1


def _title(doc: dict, what: str, compile_mode: str, dtype: str) -> str:
    env = doc["environment"]
    return f"{what}\n{env['device']} | {dtype}, compile={compile_mode} | torch {env['torch']}"


def _partitions(doc: dict) -> dict[tuple[str, str], list[dict]]:
    parts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in doc["rows"]:
        parts[(row["compile"], row["dtype"])].append(row)
    return parts


def _names(rows: list[dict]) -> dict[str, str]:
    return {row["model"]: row.get("display", row["model"]) for row in rows}


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def plot_speedup(doc: dict, rows: list[dict], compile_mode: str, dtype: str, out: Path) -> Path:
    latency = _series(rows, "median_ms")
    spread = _spread(rows)
    names = _names(rows)
    groups = [g for g in GROUPS if g[1] in latency] or GROUPS[:1]
    width = max(7.5, 5.4 * len(groups))  # one panel: room for the title and the note
    fig, axes = plt.subplots(1, len(groups), figsize=(width, 4.8), squeeze=False)
    for ax, (group, baseline, models) in zip(axes[0], groups, strict=True):
        ax.set_title(f"{group} group (baseline {names.get(baseline, baseline)})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (images)")
        ax.set_ylabel("speedup over PViG (x, latency ratio)")
        ax.grid(True, which="both", alpha=0.3)
        if baseline not in latency:
            ax.text(
                0.5, 0.5, f"no {baseline} results", ha="center", va="center", transform=ax.transAxes
            )
            continue
        base = latency[baseline]
        batches = sorted(base)
        for model in [baseline, *models]:
            if model not in latency:
                continue
            speedup, low, high, noisy = [], [], [], []
            for b in batches:
                ms = latency[model].get(b, math.nan)
                p10, p90, flag = spread[model].get(b, (ms, ms, False))
                base_flag = spread[baseline].get(b, (0, 0, False))[2]
                speedup.append(base[b] / ms)
                low.append(base[b] / p90)  # the baseline's median over the model's spread
                high.append(base[b] / p10)
                noisy.append(flag or base_flag)
            color = "black" if model == baseline else None
            _draw(ax, batches, speedup, low, high, noisy, _style(model), names[model], color)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.legend(loc="best", fontsize=9)
    title = _title(doc, "Inference speedup over Pyramid ViG (paper Fig. 5)", compile_mode, dtype)
    fig.suptitle(_wrap(fig, title, 12), fontsize=12)
    lines = _noise_note(fig, rows)
    fig.tight_layout(rect=(0, 0.02 + 0.035 * lines, 1, 1))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_throughput(doc: dict, rows: list[dict], compile_mode: str, dtype: str, out: Path) -> Path:
    throughput = _series(rows, "throughput")
    spread = _spread(rows)
    names = _names(rows)
    fig, ax = plt.subplots(figsize=(9, 5))
    batches = sorted({b for values in throughput.values() for b in values})
    for model, values in throughput.items():
        points = [values.get(b, math.nan) for b in batches]
        bounds = [spread[model].get(b) for b in batches]
        low = [b * 1e3 / s[1] if s else v for b, s, v in zip(batches, bounds, points, strict=True)]
        high = [b * 1e3 / s[0] if s else v for b, s, v in zip(batches, bounds, points, strict=True)]
        noisy = [bool(s and s[2]) for s in bounds]
        _draw(ax, batches, points, low, high, noisy, _style(model), names[model])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (images)")
    ax.set_ylabel("throughput (images / s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.set_title(
        _title(doc, "Inference throughput (paper Table VI)", compile_mode, dtype), fontsize=10
    )
    lines = _noise_note(fig, rows)
    fig.tight_layout(rect=(0, 0.02 + 0.035 * lines, 1, 1))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _any_skipped(rows: list[dict]) -> bool:
    return any(row.get("status") == "skipped" for row in rows)


def table6(doc: dict, rows: list[dict], compile_mode: str, dtype: str) -> str:
    batches = sorted({row["batch_size"] for row in rows})
    names = _names(rows)
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    for row in rows:
        status = row.get("status", "ok")
        cells[row["model"]][row["batch_size"]] = (
            f"{row['throughput']:.1f}{' (noisy)' if row.get('noisy') else ''}"
            if status == "ok"
            else "-"
            if status == "oom"
            else "·"
            if status == "skipped"
            else "x"
        )
    env = doc["environment"]
    lines = [
        f"Throughput (images / s) on {env['device']}, {dtype}, compile={compile_mode}, "
        f"torch {env['torch']}, {env['date'][:10]}. `-` = out of memory, `x` = failed, "
        + ("`·` = not measured (the run's time cap), " if _any_skipped(rows) else "")
        + "(noisy) = flagged as noise (spread or machine load).",
        "",
        "| model | " + " | ".join(f"b = {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for model in cells:
        lines.append(
            f"| {names[model]} | " + " | ".join(cells[model].get(b, "") for b in batches) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_scaling(doc: dict, out: Path) -> Path:
    rows = doc["rows"]
    panels = [
        (
            "graph construction latency (ms)",
            "median_ms",
            {
                "degc_graph": "DEGC: k-means + in-partition k-NN",
                "dense_graph": "dense k-NN over all nodes",
            },
        ),
        (
            "whole layer latency (ms)",
            "median_ms",
            {"degc": "DEGC layer", "dense_knn": "dense k-NN graph layer (ViG)"},
        ),
    ]
    if any(r.get("peak_memory_mib") is not None for r in rows):
        panels.append(
            (
                "whole layer peak memory (MiB)",
                "peak_memory_mib",
                {"degc": "DEGC layer", "dense_knn": "dense k-NN graph layer (ViG)"},
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    nodes = sorted({r["nodes"] for r in rows})
    for ax, (ylabel, key, layers) in zip(axes[0], panels, strict=True):
        for layer, label in layers.items():
            points = {
                r["nodes"]: r.get(key)
                for r in rows
                if r["layer"] == layer and r.get("status") == "ok"
            }
            values = [math.nan if points.get(n) is None else points[n] for n in nodes]
            ax.plot(nodes, values, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(nodes, [str(n) for n in nodes])
        ax.minorticks_off()
        ax.set_xlabel("nodes per image N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
    env, settings = doc["environment"], doc.get("settings", {})
    fig.suptitle(
        f"One graph layer vs nodes (C={settings.get('channels')}, K={settings.get('k')}, "
        f"batch {settings.get('batch_size')}, kappa 4/6/6)\n{env['device']} | "
        f"{settings.get('dtype')} | torch {env['torch']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def micro_table(doc: dict) -> str:
    env = doc["environment"]
    lines = [
        f"Kernel microbenchmarks on {env['device']}, torch {env['torch']}, triton {env['triton']},"
        f" {env['date'][:10]}. Times are medians in ms.",
        "",
        "| case | batch | dtype | op | impl | ms | GB/s | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        tflops = f"{row['tflops']:.2f}" if row.get("tflops") else ""
        lines.append(
            f"| {row['case']} | {row['batch_size']} | {row['dtype']} | {row['op']} | {row['impl']}"
            f" | {row['median_ms']:.3f} | {row.get('gbps', 0):.1f} | {tflops} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
def render(paths: list[Path] | None = None, out_dir: Path | None = None) -> list[Path]:
    """Draw every figure and table the result files allow; returns the files written."""
    out_dir = Path(out_dir or FIGURES_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    found = find_results(paths)
    if not found:
        raise ResultError(f"no result files found in {paths or [RESULTS_DIR]}")
    for _, doc in found:
        slug = doc["environment"]["device_slug"]
        if doc["kind"] == "models":
            for (mode, dtype), rows in _partitions(doc).items():
                tag = f"{slug}-{dtype}-{mode}"
                written.append(plot_speedup(doc, rows, mode, dtype, out_dir / f"fig5-{tag}.png"))
                written.append(
                    plot_throughput(doc, rows, mode, dtype, out_dir / f"throughput-{tag}.png")
                )
                table = out_dir / f"table6-{tag}.md"
                table.write_text(table6(doc, rows, mode, dtype))
                written.append(table)
        elif doc["kind"] == "scaling":
            written.append(plot_scaling(doc, out_dir / f"scaling-{slug}.png"))
        elif doc["kind"] == "micro":
            table = out_dir / f"micro-{slug}.md"
            table.write_text(micro_table(doc))
            written.append(table)
        elif doc["kind"] == "deploy":
            written.append(plot_deploy(doc, out_dir / f"deploy-{slug}.png"))
            table = out_dir / f"deploy-{slug}.md"
            table.write_text(deploy_table(doc))
            written.append(table)
    return written


#: How the deployment figure draws each form of a model.
DEPLOY_FORMS = {
    "eager": ("PyTorch eager", "o"),
    "inference": ("PyTorch, inference form", "s"),
    "compiled": ("torch.compile, inference form", "P"),
    "onnx": ("ONNX Runtime", "^"),
}
#: The model every deployment ratio is taken against, in the same runtime.
DEPLOY_REFERENCE = "efficientformer_l1"


def plot_deploy(doc: dict, out: Path) -> Path:
    """Throughput (images / s, log) against published ImageNet top-1, one panel per batch
    size; one colour per model, one marker per form."""
    rows = [r for r in doc["rows"] if r.get("status") == "ok" and r.get("top1") is not None]
    batches = sorted({r["batch_size"] for r in doc["rows"]})
    models = list(dict.fromkeys(r["model"] for r in doc["rows"]))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5.2), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for row in (r for r in rows if r["batch_size"] == batch):
            label, marker = DEPLOY_FORMS.get(row["form"], (row["form"], "x"))
            noisy = bool(row.get("noisy"))
            ax.scatter(
                row["throughput"],
                row["top1"],
                marker=marker,
                s=70,
                color="none" if noisy else colours[row["model"]],
                edgecolors=colours[row["model"]],
                linewidths=1.5,
                zorder=3,
            )
            if row["form"] in ("eager", "onnx"):
                ax.annotate(
                    row["display"],
                    (row["throughput"], row["top1"]),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=7,
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("throughput (images / s)")
        ax.set_ylabel("ImageNet-1k top-1 (%), published")
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], linestyle="", marker=m, color="grey", label=label)
        for label, m in DEPLOY_FORMS.values()
    ]
    axes[0][-1].legend(handles=handles, loc="center right", fontsize=8)
    env, settings = doc["environment"], doc.get("settings", {})
    fig.suptitle(
        f"CPU deployment: {env['device']}, {settings.get('threads')} threads, float32 | "
        f"torch {env['torch']}, ONNX Runtime {settings.get('onnxruntime')}",
        fontsize=10,
    )
    noisy = [r for r in rows if r.get("noisy")]
    note = "top-1: published figures (reports/deploy.py cites them); random weights timed"
    if noisy:
        note += f"; hollow: {len(noisy)} measurement(s) flagged as noise"
    fig.text(0.01, 0.01, _wrap(fig, note, 8), fontsize=8, color="dimgrey", va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def deploy_table(doc: dict) -> str:
    """Median milliseconds per batch and the ratio to EfficientFormer-L1 in the same runtime
    (PyTorch forms against its eager time, ONNX Runtime against its ONNX Runtime time)."""
    rows = doc["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    by = {(r["model"], r["form"], r["batch_size"]): r for r in rows}
    keys = list(dict.fromkeys((r["model"], r["form"]) for r in rows))
    header = ["model", "form", "top-1"]
    for b in batches:
        header += [f"ms (b={b})", f"x EF-L1 (b={b})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, form in keys:
        first = by[(model, form, batches[0])]
        label = DEPLOY_FORMS.get(form, (form, ""))[0]
        top1 = first.get("top1")
        cells = [first["display"], label, "-" if top1 is None else f"{top1:.1f}"]
        for b in batches:
            row = by.get((model, form, b))
            ref_form = "onnx" if form == "onnx" else "eager"
            ref = by.get((DEPLOY_REFERENCE, ref_form, b))
            if row is None or row.get("status") != "ok":
                cells += [row.get("status", "-") if row else "-", "-"]
                continue
            noisy = " (noisy)" if row.get("noisy") else ""
            cells.append(f"{row['median_ms']:.1f} [{row['p10_ms']:.1f}-{row['p90_ms']:.1f}]{noisy}")
            ok = ref is not None and ref.get("status") == "ok"
            cells.append(f"{row['median_ms'] / ref['median_ms']:.2f}" if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    env, settings = doc["environment"], doc.get("settings", {})
    lines.append("")
    lines.append(
        f"{env['device']}, {settings.get('threads')} threads, OMP_WAIT_POLICY="
        f"{env.get('omp_wait_policy')}, load {env.get('load_average')}; torch {env['torch']}, "
        f"ONNX Runtime {settings.get('onnxruntime')}; {settings.get('repeats')} interleaved "
        f"rounds, median [p10-p90] ms per batch; {env['date']}."
    )
    return "\n".join(lines) + "\n"
