"""What fills the place of an absent organ in a phantom case.

When an organ is missing from a patient the space does not stay empty and keeps no outline of the
organ: fat, bowel loops and the neighbouring organs move in, and some absences have their own
signs. A tag head that could spot an organ-shaped hole would learn the hole, not the organ, so the
phantom (:mod:`mosmoskit.data.phantom`) paints what really fills the space:

===============================  =====================================================================
absent organ                     what the image shows instead
===============================  =====================================================================
spleen (splenectomy, asplenia)   visceral fat and small-bowel loops in the left upper quadrant
kidney (nephrectomy, agenesis)   fat and bowel loops falling into the empty renal fossa
pancreas (pancreatectomy)        fat and jejunal loops in the pancreatic bed; the splenic vein stays
stomach (total gastrectomy)      a Roux-en-Y jejunal limb from the esophagus down through the
                                 gastric bed, with a few more jejunal loops
esophagus (esophagectomy)        a gastric pull-up conduit along the esophageal course (labelled
                                 stomach, it *is* the stomach; built in :mod:`~mosmoskit.data.phantom`),
                                 or a jejunal interposition if the stomach is gone too
IVC (interrupted, congenital)    an enlarged azygos vein beside the spine carrying the renal and iliac
                                 veins; fat and the caudate lobe where the cava would be
portal / splenic vein            chronic occlusion with cavernous transformation: a web of thin
(chronic occlusion)              tortuous collateral veins along the old course, no main trunk
gallbladder (cholecystectomy)    nothing: the liver, duodenum and fat close over the fossa
adrenal (adrenalectomy, ...)     nothing: the retroperitoneal fat around it stays
===============================  =====================================================================

Everything here is unlabelled background (painted before the organs, so a present organ covers
it). All randomness comes from the generator passed in, which the phantom derives from the case's
seed apart from its main stream, so adding or changing a replacement never changes the rest of the
case.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mosmoskit.data.phantom_shapes import HalfSpace, Intersection, Shape, Tube

__all__ = ["AZYGOS_RADIUS_MM", "azygos_path", "bowel_tube", "conduit_path", "replacements"]

#: A background item: (solid, tissue, clip region, owner organ or "").
Item = tuple[Shape, str, str, str]

#: Bowel loops that fill the bed of an absent solid organ: organ -> (number of loops, steps per loop).
_BED_LOOPS: dict[str, tuple[int, int]] = {
    "spleen": (4, 6), "kidney_right": (2, 5), "kidney_left": (2, 5), "pancreas": (3, 5), "stomach": (6, 6),
}
_LOOP_STEP_MM = 14.0
_LOOP_RADIUS_MM = (9.0, 12.0)
_COLLATERALS = 3
_COLLATERAL_RADIUS_MM = (1.6, 2.6)
_COLLATERAL_WANDER_MM = 6.0
#: Radius of the enlarged azygos vein of an azygos continuation (normal: 3-4 mm; here it carries the cava's blood).
AZYGOS_RADIUS_MM = 6.5
_ROUX_RADIUS_MM = 11.0


def bowel_tube(points: Sequence[Sequence[float]] | np.ndarray, radii: Sequence[float] | float, content: str,
               wall: float = 3.0, gas_frac: float = 0.0, clip: str = "bowel") -> list[Item]:
    """A bowel segment: wall, content and (floating to the anterior side) gas.

    Args:
        points: (N, 3) centre line in mm.
        radii: outer radius per point (or one for all), mm.
        content: tissue of the lumen ("fluid", "chyme", "feces").
        wall: wall thickness, mm.
        gas_frac: height of the gas layer as a fraction of the diameter (0: none).
        clip: region the segment is painted in.

    Returns:
        Background items (owner ``""``).
    """
    tube = Tube.smooth(points, radii)
    inner = Tube(tube.points, np.maximum(tube.radii - wall, 1.0))
    items: list[Item] = [(tube, "bowel_wall", clip, ""), (inner, content, clip, "")]
    if gas_frac > 0:  # gas floats to the anterior (non-dependent) side in a supine patient
        top = float(np.max(tube.points[:, 1] + tube.radii))
        level = top - gas_frac * 2 * float(np.mean(tube.radii))
        items.append((Intersection(inner, HalfSpace(1, level)), "gas", clip, ""))
    return items


def _bed_loops(rng: np.random.Generator, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, steps: int) -> list[Item]:
    """``n`` meandering small-bowel loops that start near ``start`` and stay in the box [lo, hi]."""
    items: list[Item] = []
    for _ in range(n):
        p = start + rng.normal(0.0, 8.0, size=3)
        d = rng.normal(size=3)
        pts = [p]
        for _ in range(steps):
            d = d / (np.linalg.norm(d) + 1e-9) + rng.normal(scale=0.8, size=3)
            p = np.clip(p + d / (np.linalg.norm(d) + 1e-9) * _LOOP_STEP_MM, lo, hi)
            pts.append(p)
        content = ("fluid", "chyme")[int(rng.integers(2))]
        gas = rng.uniform(0.0, 0.4) if rng.random() < 0.4 else 0.0
        items += bowel_tube(np.array(pts), rng.uniform(*_LOOP_RADIUS_MM), content, gas_frac=gas)
    return items


def azygos_path(ivc_ctrl: np.ndarray, spine_y: float) -> np.ndarray:
    """Centre line of the enlarged azygos vein that replaces an interrupted IVC.

    It runs against the right anterolateral side of the vertebral bodies (the retrocrural space),
    behind where the cava would be, over the IVC's craniocaudal extent. The phantom carves a thin
    fat rim for it out of the liver, which has no crus to keep it away.

    Args:
        ivc_ctrl: (K, 3) control points of the (absent) IVC, inferior first.
        spine_y: y of the vertebral body centre, mm.
    """
    z = ivc_ctrl[:, 2]
    x = np.linspace(20.0, 15.0, len(z))
    return np.stack([x, np.full(len(z), spine_y + 14.0), z], axis=1)


def conduit_path(stomach_pts: np.ndarray, esophagus_pts: np.ndarray) -> np.ndarray:
    """Centre line of a gastric pull-up conduit: antrum and pylorus, up through the hiatus along the
    esophageal course to its top.

    Args:
        stomach_pts: (7, 3) stomach centre line, fundus first, pylorus last.
        esophagus_pts: (4, 3) esophagus centre line, top first, cardia last.
    """
    antrum = stomach_pts[-3:][::-1]  # pylorus, distal antrum, antrum
    bend = (antrum[-1] + esophagus_pts[-1]) / 2
    return np.vstack([antrum, bend[None], esophagus_pts[::-1]])


def _interp_path(points: np.ndarray, per_segment: int = 3) -> np.ndarray:
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        for t in np.linspace(0.0, 1.0, per_segment + 1)[1:]:
            out.append(a + (b - a) * t)
    return np.array(out)


def replacements(
    absent: Sequence[str],
    beds: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    paths: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> list[Item]:
    """The unlabelled structures that fill the place of the absent organs.

    Args:
        absent: BTCV names of the organs absent from the whole case.
        beds: organ -> (start point, box low, box high) in mm: where its bed loops start and the
            box they stay in (the organ's bounding box).
        paths: centre lines (N, 3) in mm: ``"stomach"``, ``"esophagus"``, ``"portal_vein_and_splenic_vein"``
            and ``"azygos"`` (:func:`azygos_path`, used when the IVC is absent).
        rng: the generator for loop courses, contents and collateral wander.

    Returns:
        Background items, in a fixed order (so a seed gives the same structures).
    """
    items: list[Item] = []
    gone = set(absent)
    for organ in ("spleen", "kidney_right", "kidney_left", "pancreas", "stomach"):
        if organ in gone and organ in beds:
            start, lo, hi = beds[organ]
            n, steps = _BED_LOOPS[organ]
            items += _bed_loops(rng, start, lo, hi, n, steps)
    if "stomach" in gone and "stomach" in paths and "esophagus" in paths:
        # Roux-en-Y: a jejunal limb from the esophagus (or its interposed replacement) down the gastric bed
        st, es = paths["stomach"], paths["esophagus"]
        limb = np.vstack([es[-1:], st[1:4] + rng.normal(0.0, 5.0, size=(3, 3))])
        items += bowel_tube(limb, _ROUX_RADIUS_MM, "fluid", gas_frac=rng.uniform(0.0, 0.3))
        if "esophagus" in gone:  # esophagogastrectomy: a jejunal interposition along the esophageal course
            items += bowel_tube(es, _ROUX_RADIUS_MM, "fluid", clip="body", gas_frac=rng.uniform(0.1, 0.4))
    if "portal_vein_and_splenic_vein" in gone and "portal_vein_and_splenic_vein" in paths:
        course = _interp_path(paths["portal_vein_and_splenic_vein"])
        for _ in range(_COLLATERALS):
            wander = rng.normal(0.0, _COLLATERAL_WANDER_MM, size=course.shape)
            items.append((Tube.smooth(course + wander, rng.uniform(*_COLLATERAL_RADIUS_MM), per_segment=2), "vein", "body", ""))
    if "inferior_vena_cava" in gone and "azygos" in paths:
        items.append((Tube.smooth(paths["azygos"], AZYGOS_RADIUS_MM), "vein", "body", ""))
    return items
