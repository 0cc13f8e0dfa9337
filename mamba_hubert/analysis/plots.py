"""Figures: layer-wise MI curves per model on one axis, the information plane, and the line plot both use (which the
end-to-end jobs' training curves use too)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes


@contextmanager
def line_figure(path: Path, xlabel: str, ylabel: str, size: tuple[float, float] = (6.5, 4)) -> Iterator[Axes]:
    """An axes to draw named lines on; labelled, with a grid and a legend, and saved to `path` as PNG on exit."""
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_mi_curves(results: dict[str, list[dict]], path: Path, key: str = "mi_xt",
                   ylabel: str = "I(X; T_i) [nats], MINE") -> None:
    """MI against depth for every model, error bars = spread over seeds; for a model with a downstream encoder, a
    dashed line in its colour where the head's layers start."""
    with line_figure(path, "layer (upstream, then head where a dashed line marks it)", ylabel) as ax:
        boundaries: dict[float, list[str]] = {}  # where a head starts -> colours of the models whose head starts there
        for name, rows in results.items():
            rows = [r for r in rows if key in r]
            line = ax.errorbar([r["layer"] for r in rows], [r[key]["mean"] for r in rows],
                               yerr=[r[key]["std"] for r in rows], marker="o", capsize=3, label=name)
            head = [r["layer"] for r in rows if r.get("stage") == "head"]
            if head and head[0] > 1:
                boundaries.setdefault(head[0] - 0.5, []).append(line.lines[0].get_color())
        for position, colours in boundaries.items():
            colour = colours[0] if len(colours) == 1 else "grey"
            ax.axvline(position, linestyle="--", alpha=0.6, color=colour)
            ax.annotate("head", (position, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=7, color=colour)


def plot_information_plane(results: dict[str, list[dict]], path: Path) -> None:
    """I(X;T_i) against I(T_i;Y), one line per model through its layers (labels mark the layer)."""
    with line_figure(path, "I(X; T_i) [nats], MINE", "I(T_i; Y) [nats], phone probe bound", (6.5, 4.5)) as ax:
        for name, rows in results.items():
            rows = [r for r in rows if "mi_ty" in r]
            if not rows:
                continue
            xs, ys = [r["mi_xt"]["mean"] for r in rows], [r["mi_ty"]["mean"] for r in rows]
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(str(r["layer"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line.get_color())
