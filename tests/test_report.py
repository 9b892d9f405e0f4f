"""The report's Pareto plot: every point's label is readable (no two labels and no label and marker overlap)."""

from __future__ import annotations

import random

import matplotlib
import matplotlib.text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from slimship.core.report import _overlap, place_labels, plot_pareto  # noqa: E402


def crowded_points(n: int = 18) -> list[tuple[float, float]]:
    """Candidates as a real search gives them: clusters of near-identical speed and accuracy."""
    rng = random.Random(0)
    centres = [(0.6, 84.0), (0.62, 83.9), (1.5, 84.5), (3.0, 85.0)]
    return [(cx + rng.uniform(-0.02, 0.02), cy + rng.uniform(-0.1, 0.1))
            for cx, cy in (centres[i % len(centres)] for i in range(n))]


def test_labels_do_not_overlap_each_other_or_markers():
    points = crowded_points()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.scatter(*zip(*points))
    ax.margins(x=0.15, y=0.15)
    texts = place_labels(ax, points, [str(i) for i in range(1, len(points) + 1)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # the text's own box (an Annotation's box would include its leader line)
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in texts]
    rects = [(b.x0, b.y0, b.x1, b.y1) for b in boxes]
    for i, a in enumerate(rects):
        for j, b in enumerate(rects[i + 1:], i + 1):
            assert not _overlap(a, b), f"labels {i + 1} and {j + 1} overlap"
    plt.close(fig)


def test_plot_writes_a_png_with_a_key(tmp_path):
    rows = [{"name": f"L3-prune(heads 0.5, ffn 0.75)-vocab(26,712 tokens)-dynamic INT8-{i}",
             "accuracy": y / 100, "throughput_rows_s": 1000 / x, "latency_ms_p50": x, "pareto": i % 3 == 0,
             "chosen": i == 4} for i, (x, y) in enumerate(crowded_points())]
    report = {"rows": rows, "teacher_accuracy": 0.85, "budget": {"objective": "throughput",
                                                                 "max_accuracy_drop_points": 1.0}}
    plot_pareto(report, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
