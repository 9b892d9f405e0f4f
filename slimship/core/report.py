"""The report of a pipeline or compression output: report.json, report.md and pareto.png.

One row per stage or candidate: parameters, MACs, file MB, the task's two headline metrics (accuracy and
macro-F1; micro- and macro-F1 for multilabel; Pearson and Spearman for regression), Δ vs the teacher in points
of the main metric, latency p50/p95 at batch 1 and throughput at batch 32. ``pareto.png`` plots the main
metric against time per row
(batch-1 latency or batch-32 time per row, whichever the search optimised), with the Pareto front joined and
the chosen point marked.

    write_report("runs/compressed", report)      # report = {"rows": [...], "chosen": name, ...}
    print(render_text(load_report("runs/compressed")))

Torch-free (matplotlib is imported only to draw the plot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimship.core.errors import UserError
from slimship.core.metrics import HEADLINE, metric_label
from slimship.core.tasks import CLASSIFICATION, MAIN_METRIC

COLUMNS = [  # (key, header, format)
    ("name", "candidate", "{}"),
    ("stage", "stage", "{}"),
    ("parameters", "params (M)", "{:.2f}"),
    ("macs", "MACs (M)", "{:.1f}"),
    ("file_mb", "MB", "{:.1f}"),
    ("first_metric", "", "{:.2f}"),       # the task's headline metrics: see metric_columns
    ("second_metric", "", "{:.2f}"),
    ("delta_points", "Δ pt", "{:+.2f}"),
    ("latency_ms_p50", "p50 ms (b1)", "{:.2f}"),
    ("latency_ms_p95", "p95 ms (b1)", "{:.2f}"),
    ("throughput_rows_s", "rows/s (b32)", "{:.0f}"),
]
SCALE = {"parameters": 1e-6, "macs": 1e-6, **{name: 100 for names in HEADLINE.values() for name in names}}


def task_of_report(report: dict[str, Any]) -> str:
    """The task a report's metrics belong to (reports made before task shapes are classification)."""
    metric = report.get("metric", "accuracy")
    return next((task for task, name in MAIN_METRIC.items() if name == metric), CLASSIFICATION)


def metric_of(row_or_report: dict[str, Any], prefix: str = "") -> float | None:
    """The main metric of a row (or ``teacher_``... of a report); older reports name it accuracy."""
    value = row_or_report.get(f"{prefix}metric")
    return row_or_report.get(f"{prefix}accuracy") if value is None else value


def metric_columns(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """COLUMNS with the two metric columns of the report's task in place."""
    names = iter(HEADLINE[task_of_report(report)])
    out = []
    for key, header, fmt in COLUMNS:
        if key in ("first_metric", "second_metric"):
            key = next(names)
            header = f"{metric_label(key)} %"
        out.append((key, header, fmt))
    return out


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if key in SCALE:
        value = value * SCALE[key]
    return fmt.format(value)


def marks(row: dict[str, Any]) -> str:
    tags = []
    if row.get("chosen"):
        tags.append("chosen")
    if row.get("pareto"):
        tags.append("pareto")
    if row.get("within_budget") is False:
        tags.append("over budget")
    if row.get("batch_invariant") is False:
        tags.append("batch-dependent" + (", not chosen" if row.get("excluded") else ""))
    if row.get("failed"):
        tags.append(f"failed: {row['failed']}")
    return ", ".join(tags)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    columns = metric_columns(report)
    headers = [h for _, h, _ in columns] + ["notes"]
    body = [[cell(r, k, f) for k, _, f in columns] + [marks(r)] for r in report.get("rows", [])]
    return headers, body


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    budget = report.get("budget") or {}
    name = metric_label(report.get("metric", "accuracy"))
    if metric_of(report, "teacher_") is not None:
        lines.append(f"teacher {name} {metric_of(report, 'teacher_') * 100:.2f}% on {report.get('validation_rows')} "
                     f"validation rows of {report.get('data')}")
    reference = report.get("reference")
    if reference and not reference.get("is_teacher"):
        lines.append(f"reference: {reference['name']} at {metric_of(reference) * 100:.2f}% "
                     f"({reference.get('why')}); the budget and every Δ count from it")
    if budget:
        size = f" and at most {budget['max_model_mb']:g} MB" if budget.get("max_model_mb") else ""
        base = "the teacher" if not reference or reference.get("is_teacher") else "the reference"
        lines.append(f"budget: at most {budget.get('max_accuracy_drop_points'):g} {name} points below {base}{size}; "
                     f"objective: {budget.get('objective')}"
                     + (f" (speeds within {budget['speed_tie']:.0%} of the fastest tie; the smallest file wins)"
                        if budget.get("speed_tie") else ""))
        if "allow_batch_dependent" in budget:
            lines.append("batch-dependent candidates (dynamic INT8) allowed: a text's label may depend on its "
                         "batch-mates" if budget["allow_batch_dependent"] else
                         "only batch-invariant candidates are chosen (a text's label never depends on its "
                         "batch-mates); dynamic INT8 in the grid plus --allow-batch-dependent lets it in")
    machine = report.get("machine") or {}
    if machine:
        lines.append(f"measured with {machine.get('threads')} ONNX Runtime threads, INT8 preset "
                     f"{machine.get('preset')}")
    if report.get("chosen"):
        lines.append(f"chosen: {report['chosen']}" + (f" -> {report['model']}" if report.get("model") else ""))
        if report.get("tie_note"):
            lines.append(f"why not the fastest: {report['tie_note']}")
        if report.get("chosen_batch_invariant") is False:
            lines.append("WARNING: the chosen model is batch-dependent (dynamic INT8): the same text can get "
                         "another label or score in another batch (allowed by --allow-batch-dependent)")
    test = report.get("test")
    if test:
        of_metric = "" if name == "accuracy" else f", {name}"
        lines.append(f"test split ({test['rows']} rows{of_metric}): teacher {metric_of(test, 'teacher_') * 100:.2f}%, "
                     f"chosen {metric_of(test, 'chosen_') * 100:.2f}%"
                     + ("" if reference is None or reference.get("is_teacher") else
                        f", reference {metric_of(test, 'reference_') * 100:.2f}%")
                     + f" ({-test['drop_points']:+.2f} pt)")
        if test.get("misses_budget"):
            lines.append(f"WARNING: {test['note']}")
    if report.get("message"):
        lines.append(f"NOTE: {report['message']}")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    headers, body = table_rows(report)
    title = report.get("title") or f"slimship {report.get('kind', 'pipeline')} report"
    out = [f"# {title}", ""]
    out += [f"- {line}" for line in summary_lines(report)]
    out += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    name = metric_label(report.get("metric", "accuracy"))
    out += ["", f"Latency: batch 1, tokenization included; throughput: batch 32. Δ pt: {name} points vs the "
                "reference (the teacher, or a candidate that beat it) on the same rows. "
                f"![{name} vs time per row](pareto.png)", ""]
    return "\n".join(out)


def render_text(report: dict[str, Any]) -> str:
    headers, body = table_rows(report)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) if i < len(cells) - 1 else c
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = summary_lines(report) + ["", line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    return "\n".join(out)


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 7) -> list:
    """Put each label next to its point where it overlaps no other label and no marker; returns the texts.

    Greedy, in display coordinates: for each point, try offsets around it at growing distance and keep the
    first whose box is clear and inside the axes (a far one gets a thin leader line); a label with no clear spot
    is stacked above the others.
    """
    fig = ax.figure
    fig.canvas.draw()  # autoscaling is deferred to the first draw; the data->pixel transform needs final limits
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    frame = ax.get_window_extent(renderer)
    anchors = [tuple(ax.transData.transform(p)) for p in points]
    taken = [(x - 4, y - 4, x + 4, y + 4) for x, y in anchors]  # the markers
    if ax.get_legend() is not None:
        legend = ax.get_legend().get_window_extent(renderer)
        taken.append((legend.x0, legend.y0, legend.x1, legend.y1))
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    texts = []
    for (x, y), (px, py), label in zip(points, anchors, labels):
        text = ax.annotate(label, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=fontsize)
        box = text.get_window_extent(renderer)
        w, h = box.width + 6, box.height + 6  # room for rounding: the drawn box differs by a pixel or two
        best = None
        for distance in (4, 9, 15, 22, 30, 40, 52, 66, 82):
            for dx, dy in directions:
                cx, cy = px + dx * distance * px_per_pt, py + dy * distance * px_per_pt
                left = cx if dx > 0 else cx - w if dx < 0 else cx - w / 2
                bottom = cy if dy > 0 else cy - h if dy < 0 else cy - h / 2
                rect = (left, bottom, left + w, bottom + h)
                inside = frame.x0 <= rect[0] and rect[2] <= frame.x1 and frame.y0 <= rect[1] and rect[3] <= frame.y1
                if inside and not any(_overlap(rect, other) for other in taken):
                    best = (dx * distance, dy * distance, dx, dy, rect)
                    break
            if best:
                break
        if best is None:  # nowhere clear inside the axes: stack it above the others, outside if need be
            top = max(r[3] for r in taken)
            best = (4, (top + 2 - py) / px_per_pt, 1, 1, (px + 4 * px_per_pt, top + 2, px + 4 * px_per_pt + w, top + 2 + h))
        ox, oy, dx, dy, rect = best
        text.remove()  # re-made at its place: a leader line can only be given when an annotation is made
        text = ax.annotate(label, (x, y), xytext=(ox, oy), textcoords="offset points",
                           fontsize=fontsize, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                           va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                           arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if max(abs(ox), abs(oy)) > 22 else None)
        taken.append(rect)
        texts.append(text)
    return texts


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """The main metric against time per row. Points carry numbers, placed so none overlap; the key beside the plot
    names each number (candidate names are too long to sit next to their points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = (report.get("budget") or {}).get("objective", "latency")
    rows = [r for r in report.get("rows", []) if r.get("throughput_rows_s") and metric_of(r) is not None]
    name = metric_label(report.get("metric", "accuracy"))
    x_of = (lambda r: r["latency_ms_p50"]) if objective == "latency" else (lambda r: 1000 / r["throughput_rows_s"])
    fig = plt.figure(figsize=(10, 4.8), dpi=110)
    ax = fig.add_axes((0.07, 0.11, 0.52, 0.8))
    key = fig.add_axes((0.61, 0.11, 0.38, 0.8))
    key.axis("off")
    if rows:
        ax.scatter([x_of(r) for r in rows], [metric_of(r) * 100 for r in rows], color="tab:blue", s=22,
                   label="candidates", zorder=3)
        front = sorted((r for r in rows if r.get("pareto")), key=x_of)
        if front:
            ax.plot([x_of(r) for r in front], [metric_of(r) * 100 for r in front], color="tab:orange",
                    marker="o", ms=4, label="Pareto front", zorder=2)
        chosen = [r for r in rows if r.get("chosen")]
        if chosen:
            ax.scatter([x_of(chosen[0])], [metric_of(chosen[0]) * 100], s=160, facecolors="none",
                       edgecolors="red", linewidths=2, label="chosen", zorder=4)
    if metric_of(report, "teacher_") is not None:
        teacher = metric_of(report, "teacher_") * 100
        ax.axhline(teacher, color="gray", ls="--", lw=1, label="teacher")
        drop = (report.get("budget") or {}).get("max_accuracy_drop_points")
        if drop is not None:
            ax.axhline(teacher - drop, color="red", ls=":", lw=1, label=f"budget (−{drop:g} pt)")
    ax.set_xlabel("batch-1 p50 latency, ms" if objective == "latency" else "ms per row at batch 32")
    ax.set_ylabel(f"validation {name}, %")
    ax.set_title(f"{name} vs time per row")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=7, loc="lower right")
    if rows:
        place_labels(ax, [(x_of(r), metric_of(r) * 100) for r in rows], [str(i) for i in range(1, len(rows) + 1)])
        lines = [f"{i:>2}  {'*' if r.get('chosen') else ' '} {r['name']}" for i, r in enumerate(rows, 1)]
        # Fit the key into its box: a monospace character is about 0.6 em wide (0.65 leaves a margin), a line
        # about 1.25 em high.
        width_pt, height_pt = 0.38 * 10 * 72, 0.8 * 4.8 * 72
        size = min(7.0, width_pt / (0.65 * max(len(s) for s in lines)), height_pt / (1.25 * len(lines)))
        key.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=max(3.0, size))
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> None:
    """report.json, report.md and pareto.png in out_dir (each written to a temp name, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("report.md", render_markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    tmp_png = out / ".pareto.tmp.png"
    plot_pareto(report, tmp_png)
    tmp_png.replace(out / "pareto.png")


def load_report(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise UserError(f"{out_dir}: no report.json here (run `slimship compress` or `slimship run` first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
