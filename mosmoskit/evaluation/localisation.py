"""Does a pixel-tag attention map point at its organ? The pointing game, and its honest baseline.

DESIGN.md section 5: tag AUROC says nothing about map quality, and on unshifted phantoms a map that
always points at the same place (the argmax of the mean ground-truth mask) already scores about
0.7. So localisation is measured per organ, on images that may be shifted, next to that
fixed-position baseline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["pointing_hits", "fixed_position_points", "PointingTally"]


def _argmax_position(volume: np.ndarray) -> tuple[int, ...]:
    """The peak of ``volume``; among tied voxels, the one nearest the centre of the tie.

    A coarse map upsampled with ``align_corners=False`` is flat between its outermost cell centres
    and the border, so a peak in an outer cell is a plateau reaching the image's face. ``np.argmax``
    would take the plateau's first voxel, on the face, and a random 3x3x2 map would then "point" at
    a face most of the time; the plateau's middle is where the cell actually says the organ is.
    """
    flat = np.asarray(volume).ravel()
    top = flat.max()
    ties = np.flatnonzero(flat >= top - 1e-6 * max(abs(float(top)), 1e-12))
    if len(ties) == 1:
        return tuple(int(i) for i in np.unravel_index(int(ties[0]), volume.shape))
    coords = np.stack(np.unravel_index(ties, volume.shape), axis=1)
    nearest = np.argmin(((coords - coords.mean(axis=0)) ** 2).sum(axis=1))
    return tuple(int(i) for i in coords[nearest])


def pointing_hits(
    maps: np.ndarray,
    label: np.ndarray,
    tag_ids: Sequence[int],
    tolerance: int = 0,
) -> dict[int, bool]:
    """For each organ present in ``label``, is the peak of its map inside the organ?

    Args:
        maps: (K, *spatial) attention maps at the label's resolution, one per tag, in the order of
            ``tag_ids``.
        label: (*spatial) integer mask of organ ids.
        tag_ids: the label id of each map's organ.
        tolerance: count a peak within this many voxels of the organ as a hit (0 = strictly inside).

    Returns:
        label id -> hit, only for organs with at least one voxel in ``label``.
    """
    maps = np.asarray(maps)
    label = np.asarray(label)
    if maps.shape[1:] != label.shape or maps.shape[0] != len(tag_ids):
        raise ValueError(f"maps {maps.shape} do not match label {label.shape} and {len(tag_ids)} tags")
    hits = {}
    for k, organ in enumerate(tag_ids):
        mask = label == organ
        if not mask.any():
            continue
        if tolerance > 0:
            # Full connectivity: "within N voxels" in the chessboard sense, diagonals included.
            structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
            mask = ndimage.binary_dilation(mask, structure=structure, iterations=tolerance)
        hits[int(organ)] = bool(mask[_argmax_position(maps[k])])
    return hits


def fixed_position_points(labels: Sequence[np.ndarray], tag_ids: Sequence[int]) -> np.ndarray:
    """The fixed-position baseline: per organ, a "map" equal to its mean ground-truth mask.

    Args:
        labels: training masks of one common shape.
        tag_ids: organ ids.

    Returns:
        (K, *spatial) float maps whose argmax is the place the organ is most often found.
    """
    stack = np.stack([np.asarray(l) for l in labels])
    return np.stack([(stack == organ).mean(axis=0) for organ in tag_ids]).astype(np.float32)


class PointingTally:
    """Accumulates pointing-game hits per organ over cases."""

    def __init__(self, names_by_id: dict[int, str]):
        self.names_by_id = dict(names_by_id)
        self.hits = {i: 0 for i in names_by_id}
        self.trials = {i: 0 for i in names_by_id}

    def add(self, hits: dict[int, bool]) -> None:
        for organ, hit in hits.items():
            self.trials[organ] += 1
            self.hits[organ] += int(hit)

    def rates(self) -> dict[str, float]:
        """Organ name -> hit rate (NaN when the organ was never present)."""
        return {
            self.names_by_id[i]: (self.hits[i] / self.trials[i] if self.trials[i] else float("nan"))
            for i in self.names_by_id
        }

    def counts(self) -> dict[str, int]:
        return {self.names_by_id[i]: self.trials[i] for i in self.names_by_id}
