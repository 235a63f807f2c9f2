"""Figure services shared by the training recipes and the workflows: a matplotlib figure on its
own Agg canvas (pyplot's global state is never touched, so plotting is safe in scripts, threads
and notebooks alike) and saving it where asked, creating the folder.

matplotlib is imported only when a figure is made: it stays an optional dependency of plots.
"""

from __future__ import annotations

import os

__all__ = ["figure", "save"]


def figure(width: float, height: float):
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path, dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (format from the extension; missing folders created); the path."""
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
