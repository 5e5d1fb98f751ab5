"""A free constraint for the tag head's pixels: what is certainly not an organ, read from HU.

With the ``"competition"`` readout every pixel of the tag head's grid is a softmax over background
plus the K organs (:class:`~mosmoskit.models.TagHead`). Tags alone say only *whether* an organ is in
the image; nothing says which pixels are background. CT intensities do, for part of the image: no
abdominal organ is air, lung, fat or dense bone, so a pixel whose intensity lies outside the range
of soft tissue and enhanced vessels is background. Teaching the background class there (a
cross-entropy on those pixels only) costs no label and keeps organ pixels from spreading into the
fat around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["enclosed_air_pixels", "background_pixels", "intensity_affinity_loss", "intensity_background_loss"]


def _majority_cells(voxels: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, *grid) bool: cells of the grid in which more than half of the (B, 1, *spatial) ``voxels`` are set."""
    spatial = tuple(voxels.shape[2:])
    if len(grid) != len(spatial) or any(s % g for s, g in zip(spatial, grid)):
        raise ValueError(f"grid {grid} does not divide the image's spatial size {spatial}")
    share = voxels.float()
    if grid != spatial:
        pool = F.avg_pool2d if len(grid) == 2 else F.avg_pool3d
        stride = tuple(s // g for s, g in zip(spatial, grid))
        share = pool(share, kernel_size=stride, stride=stride)
    return share[:, 0] > 0.5


def background_pixels(
    image: torch.Tensor, grid: Sequence[int], window: Sequence[float], organ_hu: Sequence[float]
) -> torch.Tensor:
    """Which cells of the feature grid are certainly background.

    Args:
        image: (B, 1, *spatial) HU windowed to [0, 1] with ``window`` (as the pre-training data gives it).
        grid: the tag head's grid; each spatial size divides the image's.
        window: (low, high) HU of the windowing.
        organ_hu: (low, high) HU range of organ tissue; a voxel outside it is background.

    Returns:
        (B, N) bool, N = prod(grid): cells of which more than half the voxels are background.

    Raises:
        ValueError: a grid that does not divide the image, or an ``organ_hu`` range that does not
            overlap the window.
    """
    low, high = float(window[0]), float(window[1])
    lo_hu, hi_hu = float(organ_hu[0]), float(organ_hu[1])
    if not (lo_hu < hi_hu and lo_hu < high and hi_hu > low):
        raise ValueError(f"organ_hu {tuple(organ_hu)} must be (low, high) overlapping the intensity window "
                         f"{tuple(window)}: otherwise every visible pixel would be background")
    lo, hi = (lo_hu - low) / (high - low), (hi_hu - low) / (high - low)
    # A value at the window's top was clipped there: it is at least ``high`` HU. A side of organ_hu
    # beyond the window is not used: the clipped values there could be organ or not.
    below = image < lo if lo > 0 else torch.zeros_like(image, dtype=torch.bool)
    above = image >= hi if hi <= 1 else torch.zeros_like(image, dtype=torch.bool)
    return _majority_cells(below | above, tuple(int(g) for g in grid)).flatten(1)


def enclosed_air_pixels(image: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, N) bool: air cells inside the body.

    A cell is air when more than half its voxels sit at the window's floor (air, gas or lung once the
    window clips them), and inside the body when tissue lies on both sides of it along every axis
    of the grid: the gas of a stomach or a bowel loop, not the air around the patient.
    """
    air = _majority_cells(image <= 1e-6, tuple(int(g) for g in grid))  # (B, *grid)
    tissue = (~air).to(torch.uint8)
    enclosed = air.clone()
    for axis in range(1, tissue.ndim):
        before = tissue.cummax(dim=axis).values.bool()
        after = tissue.flip(axis).cummax(dim=axis).values.flip(axis).bool()
        enclosed &= before & after
    return enclosed.flatten(1)


def intensity_background_loss(
    pixel_logits: torch.Tensor,
    image: torch.Tensor,
    grid: Sequence[int],
    window: Sequence[float],
    organ_hu: Sequence[float],
    hollow: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Cross-entropy toward the background class on the cells :func:`background_pixels` finds.

    Hollow organs hold gas (a stomach's lumen is a fifth air in the phantoms, and often more in
    patients): an air cell inside the body (:func:`enclosed_air_pixels`) is taught to be background
    *or* one of them (the log of their summed probabilities), so the constraint never pushes a
    stomach's lumen out of the stomach. The air around the patient stays background.

    Args:
        pixel_logits: (B, K + 1, N) class scores of the competition readout, background first
            (``TagHeadOutput.pixel_logits``).
        image, grid, window, organ_hu: see :func:`background_pixels`.
        hollow: indices into the K + 1 classes (organ k is k + 1) of the organs that may hold gas.

    Returns:
        ``{"background": loss}``, the mean over the background cells (0 when there are none).

    Raises:
        ValueError: ``pixel_logits`` is not (B, K + 1, prod(grid)) for the image's B, or a hollow
            index that is not an organ class.
    """
    grid = tuple(int(g) for g in grid)
    n = 1
    for g in grid:
        n *= g
    if pixel_logits.ndim != 3 or pixel_logits.shape[0] != image.shape[0] or pixel_logits.shape[2] != n:
        raise ValueError(f"pixel_logits must be (B={image.shape[0]}, K + 1, N={n}), got {tuple(pixel_logits.shape)}")
    hollow = [int(h) for h in hollow]
    if any(not 1 <= h < pixel_logits.shape[1] for h in hollow):
        raise ValueError(f"hollow organ classes must be in [1, {pixel_logits.shape[1] - 1}], got {hollow}")
    mask = background_pixels(image, grid, window, organ_hu)
    log_probs = pixel_logits.float().log_softmax(dim=1)
    log_background = log_probs[:, 0]  # (B, N)
    if hollow:
        log_gas_holder = torch.logsumexp(log_probs[:, [0, *hollow]], dim=1)
        log_background = torch.where(enclosed_air_pixels(image, grid), log_gas_holder, log_background)
    if not mask.any():
        return {"background": log_background.sum() * 0.0}
    return {"background": -log_background[mask].mean()}


#: neighbour offsets of the affinity loss on the tag head's grid: the 4 of the 8-neighbourhood that
#: are not mirror images of each other, at distances 1 and 2 cells
_AFFINITY_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0))


def intensity_affinity_loss(
    pixel_logits: torch.Tensor, image: torch.Tensor, grid: Sequence[int], sigma: float
) -> dict[str, torch.Tensor]:
    """Neighbouring cells of similar intensity should belong to the same class (a CRF-like loss).

    For each pair of neighbouring cells i, j of the tag head's 2D grid:
    ``w_ij * (1 - <p_i, p_j>)`` with ``p`` the softmax over background and the K organs and
    ``w_ij = exp(-(I_i - I_j)^2 / (2 sigma^2))`` from the image averaged over each cell. A
    homogeneous region (an organ's parenchyma) is pulled towards one class; an edge (the fat around
    an organ) costs nothing to cross. The tags say *that* an organ is there, this term carries the
    class over the organ's whole extent (as affinity losses do in weakly supervised segmentation).

    Args:
        pixel_logits: (B, K + 1, N) competition scores, background first.
        image: (B, 1, H, W) windowed image; ``grid`` divides (H, W).
        grid: (h, w), h * w = N.
        sigma: intensity scale of the affinity, in the image's (windowed) units.

    Returns:
        ``{"affinity": loss}``, the mean over pairs.

    Raises:
        ValueError: not a 2D grid, or shapes that do not fit.
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or image.ndim != 4:
        raise ValueError(f"the affinity loss works on 2D images and grids, got image {tuple(image.shape)}, grid {grid}")
    if pixel_logits.ndim != 3 or pixel_logits.shape[2] != grid[0] * grid[1]:
        raise ValueError(f"pixel_logits must be (B, K + 1, {grid[0] * grid[1]}), got {tuple(pixel_logits.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    probs = pixel_logits.float().softmax(dim=1).reshape(pixel_logits.shape[0], -1, *grid)
    stride = (image.shape[2] // grid[0], image.shape[3] // grid[1])
    level = F.avg_pool2d(image.float(), kernel_size=stride, stride=stride)
    losses = []
    for dy, dx in _AFFINITY_OFFSETS:
        h, w = grid[0] - dy, grid[1] - abs(dx)
        x0, x1 = (0, dx) if dx >= 0 else (-dx, 0)
        a, b = probs[:, :, :h, x0:x0 + w], probs[:, :, dy:dy + h, x1:x1 + w]
        ia, ib = level[:, :, :h, x0:x0 + w], level[:, :, dy:dy + h, x1:x1 + w]
        weight = torch.exp(-((ia - ib) ** 2) / (2.0 * sigma**2))[:, 0]
        losses.append((weight * (1.0 - (a * b).sum(dim=1))).mean())
    return {"affinity": torch.stack(losses).mean()}
