"""Each organ's map beside the fixed-position prior's guess and the true mask, on moved held-out images.

The picture of :mod:`mosmoskit.evaluation.map_quality`: for a few held-out images (moved by shifts,
rotations and zooms), one row per organ and two panels per image, the model's map and the prior (the
organ's mean mask over the training patients), each drawn as a heat overlay with the organ's true
outline and its peak (``+``). A map earns its place where its heat sits inside the outline after
the move and the prior's does not.

Images follow the kit's convention (RAS voxel order) and are shown in radiological convention
through :func:`~mosmoskit.viz.slices.display_slice`, like every other plot of the kit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mosmoskit.viz.attention import SINGLE_MAP_CONTOUR, attention_rgba
from mosmoskit.viz.slices import display_slice

__all__ = ["plot_map_vs_prior"]


def plot_map_vs_prior(
    images: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    prior: np.ndarray,
    names: Sequence[str],
    organs: Sequence[str],
    label_ids: Sequence[int],
    probabilities: np.ndarray | None = None,
    panel_size: float = 1.7,
) -> Any:
    """A grid: one row per organ, for every image the model's map and the prior beside it.

    Args:
        images: (n, X, Y) windowed slices in [0, 1].
        labels: (n, X, Y) integer masks (only drawn as outlines).
        maps: (n, K, X, Y) the model's maps at the image grid (any non-negative scale).
        prior: (K, X, Y) the fixed-position prior (mean training masks).
        names: the K tag names, in map order.
        organs: the organs to draw (rows); none gives a figure that says there is nothing to draw.
        label_ids: the label id of each of the K tags.
        probabilities: optional (n, K) tag probabilities, written in the map panels' titles.
        panel_size: inches per panel.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: shapes that do not fit together, or an organ not in ``names``.
    """
    import matplotlib.pyplot as plt

    images, labels, maps, prior = (np.asarray(a) for a in (images, labels, maps, prior))
    if images.ndim != 3 or labels.shape != images.shape or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images (n, X, Y) {images.shape}, labels {labels.shape} and maps (n, K, X, Y) "
                         f"{maps.shape} do not fit together")
    if maps.shape[2:] != images.shape[1:] or prior.shape != maps.shape[1:] or len(names) != maps.shape[1]:
        raise ValueError(f"maps {maps.shape}, prior {prior.shape} and {len(names)} names must share K and the grid")
    missing = [o for o in organs if o not in names]
    if missing:
        raise ValueError(f"organs {missing} are not among the tags {list(names)}")
    n = images.shape[0]
    if not organs:
        # every large organ's tag was left out (no report calls it absent): there is no map to draw
        fig, ax = plt.subplots(figsize=(2 * n * panel_size, panel_size))
        ax.axis("off")
        ax.text(0.5, 0.5, "no large organ has a learned map: every one was left out for lack of negative reports",
                ha="center", va="center", wrap=True)
        return fig
    fig, axes = plt.subplots(len(organs), 2 * n, figsize=(2 * n * panel_size, len(organs) * panel_size),
                             squeeze=False)
    for row, organ in enumerate(organs):
        k = list(names).index(organ)
        for i in range(n):
            outline = display_slice(labels[i] == label_ids[k]).astype(float)
            for col, (heat, who) in enumerate(((maps[i, k], "map"), (prior[k], "prior"))):
                ax = axes[row, 2 * i + col]
                ax.imshow(display_slice(images[i]), cmap="gray", vmin=0, vmax=1)
                shown = display_slice(heat)
                ax.imshow(attention_rgba(shown / max(float(shown.max()), 1e-12)))
                if outline.any():
                    ax.contour(outline, levels=[0.5], colors=[SINGLE_MAP_CONTOUR], linewidths=0.8)
                peak = np.unravel_index(int(np.argmax(shown)), shown.shape)
                ax.plot(peak[1], peak[0], "+", color="white", markersize=9, markeredgewidth=1.5)
                title = who
                if who == "map" and probabilities is not None:
                    title += f"  p={float(probabilities[i, k]):.2f}"
                if col == 0 and i == 0:
                    title = f"{organ.replace('_', ' ')}\n{title}"
                ax.set_title(title, fontsize=7)
                ax.set_axis_off()
    fig.tight_layout()
    return fig
