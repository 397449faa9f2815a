"""Figures of samples: scatter plots of 2-d points and grids of 8x8 images, written to files.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas, so
nothing here touches pyplot's global state or the backend a notebook uses. A panel is
``{title: samples}``: points ``(n, d)`` (the first two coordinates are drawn) or images
``(n, h, w, 1)`` in ``[-1, 1]``. Files are written atomically (an interrupted save leaves
the old figure whole), in the format their extension names (PNG without one).
"""

from __future__ import annotations

import itertools
import os
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure

from deis_jax._files import atomic_write

__all__ = ["image_grid", "save_comparison", "save_image_grids", "save_panel_table", "save_samples",
           "save_scatter"]


def image_grid(images, cols: int | None = None) -> np.ndarray:
    """Tile images into one array with 1-px blank gaps.

    Args:
      images: ``(n, h, w, 1)`` in ``[-1, 1]``.
      cols: images per row (default ``ceil(sqrt(n))``).

    Returns:
      ``(rows (h + 1) + 1, cols (w + 1) + 1)`` in ``[0, 1]`` (ink = 1, gaps = 0).
    """
    images = np.clip((np.asarray(images)[..., 0] + 1) / 2, 0, 1)
    n, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = img
    return grid


class _Style(NamedTuple):
    """How panels look: images shown (``cols**2`` in ``cols`` columns), axis limits and dot
    size of scatter plots, title size, inches per panel, resolution."""

    cols: int = 8
    lim: float = 3.0
    dot: float = 0.5
    fontsize: float = 9
    panel_size: tuple[float, float] = (3.0, 3.2)
    dpi: int = 120


_SCATTER = _Style()
_GRIDS = _Style(panel_size=(2.6, 2.9))
_COMPARISON = _Style(dot=0.4, fontsize=8, panel_size=(2.6, 2.8), dpi=110)


def _draw(ax, title: str, x, style: _Style, caption: str | None = None) -> None:
    """One panel: an image grid or a scatter of the first two coordinates, with a title
    above and an optional caption below."""
    x = np.asarray(x)
    if x.ndim == 4:
        ax.imshow(image_grid(x[: style.cols**2], style.cols), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        pts = x.reshape(len(x), -1)
        ax.scatter(pts[:, 0], pts[:, 1], s=style.dot, alpha=0.5, color="k", rasterized=True)
        ax.set_xlim(-style.lim, style.lim)
        ax.set_ylim(-style.lim, style.lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=style.fontsize)
    if caption:
        ax.set_xlabel(caption, fontsize=style.fontsize)


def _save_cells(path: str, rows: Sequence[Sequence], style: _Style) -> None:
    """One figure row per sequence of cells ``(title, samples, caption)`` or ``None``
    (blank); short rows are padded with blanks."""
    ncol = max(len(cells) for cells in rows)
    width, height = style.panel_size
    fig = Figure(figsize=(width * ncol, height * len(rows)))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for row_axes, cells in zip(axes, rows):
        for ax, cell in itertools.zip_longest(row_axes, cells):
            if cell is None:
                ax.set_axis_off()
            else:
                title, x, caption = cell
                _draw(ax, title, x, style, caption)
    fig.tight_layout()
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=style.dpi)


def _save_rows(path: str, rows: Sequence[Mapping], style: _Style) -> None:
    """One figure row per ``{title: samples}`` mapping; empty cells are blank."""
    _save_cells(path, [[(title, x, None) for title, x in panels.items()] for panels in rows],
                style)


def save_scatter(path: str, panels: Mapping, *, lim: float = 3.0) -> None:
    """Scatter plots of ``{title: points (n, d)}`` side by side, axes ``[-lim, lim]^2``."""
    _save_rows(path, [panels], _SCATTER._replace(lim=lim))


def save_image_grids(path: str, panels: Mapping, *, cols: int = 8) -> None:
    """Image grids of ``{title: images (n, h, w, 1)}`` side by side, the first ``cols**2``
    images of each in ``cols`` columns."""
    _save_rows(path, [panels], _GRIDS._replace(cols=cols))


def save_samples(path: str, x, title: str) -> None:
    """One panel of samples: a square grid of up to 256 images, or a scatter of points."""
    if np.ndim(x) == 4:
        save_image_grids(path, {title: x}, cols=int(np.ceil(np.sqrt(min(len(x), 256)))))
    else:
        save_scatter(path, {title: x})


def save_comparison(path: str, rows: Sequence[Mapping]) -> None:
    """A grid of panels, one row per ``{title: samples}`` mapping (e.g. a dataset's held-out
    data then each sampler's output); images show their first 64 in 8 columns."""
    _save_rows(path, rows, _COMPARISON)


def save_panel_table(path: str, rows: Sequence[Sequence]) -> None:
    """A table of panels (e.g. columns = solvers, rows = NFE): each cell is ``(title,
    samples, caption)`` -- the caption (a metric) printed under the panel -- or ``None``
    for a blank; images show their first 64 in 8 columns."""
    _save_cells(path, rows, _COMPARISON._replace(panel_size=(2.6, 3.5)))
