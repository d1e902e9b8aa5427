"""Report figures as base64 PNG strings (embedded as data: URIs, so the report needs no network).

Figures are drawn on the Agg canvas directly (no pyplot, no global backend switch), so this works
headless and does not disturb a notebook's backend; nothing stays open after a call.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

_VARIANT_COLORS = {"base": "#9aa5b1", "tuned": "#2563eb"}
_PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#ec4899", "#14b8a6"]
_RC = {
    "text.parse_math": False,  # a "$" in a field or variant name is text, not math
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "llmtailor",
}


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def variant_color(name: str, index: int) -> str:
    """Stable colour per variant: base grey, tuned blue, others from a palette."""
    return _VARIANT_COLORS.get(name, _PALETTE[(index + 1) % len(_PALETTE)])


def loss_curve_png(
    train: Sequence[tuple[float, float]],
    eval_points: Sequence[tuple[float, float]] = (),
) -> str | None:
    """Training loss against step, eval loss as markers; None when there is nothing finite to draw."""
    import matplotlib

    train = [(s, v) for s, v in train if _finite(s) and _finite(v)]
    eval_points = [(s, v) for s, v in eval_points if _finite(s) and _finite(v)]
    if not train and not eval_points:
        return None
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.5, 3.2)
        ax = fig.add_subplot()
        if train:
            xs, ys = zip(*train, strict=True)
            ax.plot(
                xs,
                ys,
                color="#2563eb",
                linewidth=1.6,
                marker="o" if len(xs) < 30 else None,
                markersize=3,
                label="train loss",
            )
        if eval_points:
            xs, ys = zip(*eval_points, strict=True)
            ax.plot(xs, ys, color="#f59e0b", linestyle="--", linewidth=1.2, marker="D", markersize=6, label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(frameon=False)
        return _to_base64(fig)


def token_histogram_png(
    edges: Sequence[float],
    counts: Sequence[float],
    markers: Mapping[str, float] | None = None,
) -> str | None:
    """Histogram of example lengths in tokens (edges has one more item than counts); markers: e.g. p50, p95."""
    import matplotlib

    if not counts or len(edges) != len(counts) + 1:
        return None
    if not all(_finite(e) for e in edges) or not all(_finite(c) for c in counts):
        return None
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.5, 2.8)
        ax = fig.add_subplot()
        ax.stairs(list(counts), list(edges), fill=True, color="#93c5fd", edgecolor="#2563eb", linewidth=1)
        for i, (label, x) in enumerate((markers or {}).items()):
            if _finite(x):
                ax.axvline(
                    x, color=_PALETTE[(i + 1) % len(_PALETTE)], linestyle="--", linewidth=1.2, label=f"{label} = {x:g}"
                )
        ax.set_xlabel("tokens per example")
        ax.set_ylabel("examples")
        ax.grid(axis="x", visible=False)
        if markers:
            ax.legend(frameon=False)
        return _to_base64(fig)


def metric_bars_png(metrics: Sequence[str], variants: Mapping[str, Sequence[float | None]]) -> str | None:
    """Grouped bars: one group per metric (0-1 scale), one bar per variant; missing values are left out."""
    import matplotlib

    if not metrics or not variants:
        return None
    if not any(_finite(v) for values in variants.values() for v in values):
        return None
    n = len(variants)
    width = 0.8 / n
    with matplotlib.rc_context(_RC):
        fig = _new_figure(max(6.0, 0.9 * len(metrics) * max(1, n) / 2 + 3), 3.4)
        ax = fig.add_subplot()
        for i, (name, values) in enumerate(variants.items()):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(metrics))]
            pts = [(x, v) for x, v in zip(xs, values, strict=True) if _finite(v)]
            if not pts:
                continue
            bx, bv = zip(*pts, strict=True)
            bars = ax.bar(bx, bv, width=width * 0.95, label=name, color=variant_color(name, i))
            if len(metrics) * n <= 24:
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in bv], fontsize=7, padding=2)
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels(
            metrics, rotation=20 if len(metrics) > 5 else 0, ha="right" if len(metrics) > 5 else "center"
        )
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("score (0-1, higher is better)")
        ax.grid(axis="x", visible=False)
        ax.legend(frameon=False, ncols=min(n, 4), loc="upper left", bbox_to_anchor=(0, 1.12))
        return _to_base64(fig)


def ladder_ci_png(
    metrics: Sequence[str], variants: Mapping[str, Sequence[tuple[float, float, float] | None]]
) -> str | None:
    """Horizontal dot-and-whisker chart: one panel row per metric, one point per variant with its 95% CI."""
    import matplotlib

    if not metrics or not variants:
        return None
    if not any(v is not None for values in variants.values() for v in values):
        return None
    n = len(variants)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.5, 0.45 * len(metrics) * n + 1.0)
        ax = fig.add_subplot()
        ticks, labels = [], []
        y = 0.0
        for j, metric in enumerate(metrics):
            for i, (name, values) in enumerate(variants.items()):
                point = values[j]
                yy = y + i * 0.8
                if point is not None and all(_finite(x) for x in point):
                    mean, lo, hi = point
                    ax.errorbar([mean], [yy], xerr=[[max(0.0, mean - lo)], [max(0.0, hi - mean)]], fmt="o",
                                color=variant_color(name, i), capsize=3, markersize=5,
                                label=name if j == 0 else None)
                    ax.text(min(hi, 1.02) + 0.01, yy, f"{mean:.2f}", va="center", fontsize=7)
            ticks.append(y + (n - 1) * 0.4)
            labels.append(metric)
            y += n * 0.8 + 0.8
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12)
        ax.set_xlabel("score with 95% bootstrap CI (higher is better)")
        ax.grid(axis="y", visible=False)
        ax.legend(frameon=False, ncols=min(n, 5), loc="lower left", bbox_to_anchor=(0, 1.0))
        return _to_base64(fig)


def judge_png(rows: Mapping[str, tuple[float, float, float]]) -> str | None:
    """Stacked bars per variant: win / tie / loss share against base."""
    import matplotlib

    rows = {k: v for k, v in rows.items() if all(_finite(x) for x in v)}
    if not rows:
        return None
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.5, 0.5 * len(rows) + 1.2)
        ax = fig.add_subplot()
        names = list(rows)
        left = [0.0] * len(names)
        for k, (label, color) in enumerate((("win", "#10b981"), ("tie", "#cbd5e1"), ("loss", "#ef4444"))):
            vals = [rows[n][k] for n in names]
            ax.barh(names, vals, left=left, color=color, label=label)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of judged pairs vs base (both orders must agree for a win or loss)")
        ax.grid(axis="y", visible=False)
        ax.legend(frameon=False, ncols=3, loc="lower left", bbox_to_anchor=(0, 1.0))
        return _to_base64(fig)
