"""PNG plots of a retrain: the tuning landscape over (a, b) and the final retrain's validation curve.

Each figure is a ``matplotlib.figure.Figure`` drawn on its own Agg canvas: no pyplot, no global
backend switch (importing retrain never changes the caller's matplotlib set-up) and no display
needed.  matplotlib is imported on first use, so the rest of retrain runs without it.  Each
function writes one PNG atomically.
"""
from __future__ import annotations

import io

import numpy as np

from .errors import InputError
from .files import atomic_write_bytes


def _figure(size: tuple[float, float]):
    """A new figure of ``size`` inches and its axes (InputError when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("plots need the matplotlib package, which is not installed (pip install matplotlib)") from None
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig renders with Agg
    return fig, fig.add_subplot()


def _save(fig, path) -> None:
    """Write the figure as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_tuning_landscape(path, evaluations, bounds, best=None, title="Tuning landscape") -> None:
    """Every evaluated ``(a, b)`` coloured by its validation loss, and each optimizer's path.

    Args:
        path: the PNG to write.
        evaluations: objects with ``a``, ``b``, ``loss``, ``diverged`` and ``optimizer`` (the id of
            the NLopt optimizer that asked for the point; ``-1`` for the space-filling batch), in
            the order they were evaluated (``retrain.tuner.Evaluation``).
        bounds: ``((a_lo, a_hi), (b_lo, b_hi))`` of the search box.
        best: the chosen ``(a, b)``, marked with a star.
    """
    fig, ax = _figure((7.5, 7))
    finite = [e for e in evaluations if not e.diverged]
    diverged = [e for e in evaluations if e.diverged]
    if finite:
        losses = np.array([e.loss for e in finite])
        # Clip the colour scale at the 90th percentile so that a few bad points do not wash out
        # the region the optimizers care about.
        vmin = float(losses.min())
        vmax = max(float(np.percentile(losses, 90)) if len(losses) > 2 else float(losses.max()), vmin + 1e-12)
        points = None
        for marker, label, chosen in (("s", "space-filling batch", [e for e in finite if e.optimizer < 0]),
                                      ("o", "asked by a local search", [e for e in finite if e.optimizer >= 0])):
            if chosen:
                points = ax.scatter([e.a for e in chosen], [e.b for e in chosen], c=[e.loss for e in chosen],
                                    cmap="viridis_r", vmin=vmin, vmax=vmax, marker=marker, s=40,
                                    edgecolors="black", linewidths=0.4, zorder=3, label=label)
        fig.colorbar(points, ax=ax, label="validation loss (MSE)", extend="max")
    if diverged:
        ax.scatter([e.a for e in diverged], [e.b for e in diverged], marker="x", color="red", s=45,
                   zorder=3, label="diverged")
    for opt_id in sorted({e.optimizer for e in evaluations if e.optimizer >= 0}):
        path_points = [(e.a, e.b) for e in evaluations if e.optimizer == opt_id]
        xs, ys = zip(*path_points)
        ax.plot(xs, ys, "-", linewidth=1.0, alpha=0.7, zorder=2, label=f"search {opt_id}")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="*", s=260, color="gold", edgecolors="black", zorder=4,
                   label=f"best (a={best[0]:.2f}, b={best[1]:.2f})")
    (a_lo, a_hi), (b_lo, b_hi) = bounds
    ax.set_xlim(a_lo - 0.05 * (a_hi - a_lo), a_hi + 0.05 * (a_hi - a_lo))
    ax.set_ylim(b_lo - 0.05 * (b_hi - b_lo), b_hi + 0.05 * (b_hi - b_lo))
    ax.set_xlabel("a   (learning rate = 1e-3 * 10^a)")
    ax.set_ylabel("b   (L2 regularisation = 1e-5 * 10^b)")
    ax.set_title(f"{title}: {len(evaluations)} evaluations")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize="small")
    _save(fig, path)


def plot_validation_curve(path, history, best_epoch=None, title="Final retrain") -> None:
    """Validation loss per checkpoint ``history = [(epoch, loss), ...]``; the kept epoch is marked."""
    if not history:
        raise InputError("plot_validation_curve needs a non-empty history of (epoch, loss)")
    epochs, losses = zip(*history)
    fig, ax = _figure((7, 4.5))
    ax.plot(epochs, losses, "o-", markersize=3)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="gray", linestyle="--", label=f"kept: epoch {best_epoch}")
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (MSE)")
    ax.set_title(f"{title}: validation loss per epoch")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_search_traces(path, traces: dict, title="Tuning searches") -> None:
    """The best validation loss found so far against wall time, one line per search.

    Args:
        path: the PNG to write.
        traces: ``{label: [(seconds, best loss so far), ...]}`` in time order (a search's trace
            may start with ``inf`` while nothing finite has been found: those points are left out).
    """
    finite = {label: [(t, v) for t, v in trace if np.isfinite(v)] for label, trace in traces.items()}
    finite = {label: trace for label, trace in finite.items() if trace}
    if not finite:
        raise InputError("plot_search_traces needs at least one trace with a finite loss")
    fig, ax = _figure((8, 5))
    from matplotlib import colormaps

    palette = colormaps["tab20" if len(finite) > 10 else "tab10"]  # one colour per search
    ax.set_prop_cycle(color=[palette(i % palette.N) for i in range(len(finite))])
    for label, trace in finite.items():
        times, values = zip(*trace)
        ax.step(times, values, where="post", marker="o", markersize=2.5, linewidth=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("best validation loss so far (MSE)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", ncol=2)
    _save(fig, path)
