"""The phantom cohort: seeded CT-like abdominal volumes (or axial slices) with the 13 BTCV organs
and a free-text report per image.

Why a phantom: the kit must run end to end with no download. The phantom writes exactly the layout
real data sets have (``imagesTr/``, ``labelsTr/``, an MSD-style ``dataset.json``, ``reports.jsonl``),
so every later step (pre-training, fine-tuning, evaluation) runs unchanged on BTCV afterwards.

How a case is made:

1. **Anatomy in millimetres.** All geometry lives in RAS+ patient coordinates (+x = patient's
   Right, +y = Anterior, +z = Superior), origin at the centre of the field of view. Organs are
   compositions of simple implicit shapes (deformed superellipsoids, tubes along smooth curves,
   differences for the kidney's hilum and the spleen's concave face), placed by an atlas of
   plausible positions and scaled to the case's body size, then warped by a smooth random
   displacement field. Because nothing is defined in voxels, any ``shape``/``spacing`` renders the
   same anatomy. The solids live in :mod:`mosmoskit.data.phantom_shapes`; the adrenals sit in
   retroperitoneal fat (a fat halo is carved out of the liver, spleen and stomach around them).
2. **Findings.** Per organ: present (or surgically / congenitally absent), enlarged or atrophic,
   number of focal lesions, and whether the report mentions it; probabilities live in
   :class:`PhantomConfig`. Design note: the organs vary in presence *and* size *and* lesions, so
   that reports carry information about every organ (an organ that never varies teaches the tag
   head nothing); :meth:`PhantomConfig.pretraining` enriches all of it for pre-training. An absent
   organ's place is filled with what fills it in patients (fat, bowel loops, a Roux limb, an azygos
   vein, collaterals: :mod:`mosmoskit.data.phantom_absence`), never left as an organ-shaped hole.
3. **Rendering.** Each voxel centre is warped and tested against the shapes; tissues get
   portal-venous-phase Hounsfield values, smooth per-tissue texture, a slight blur (partial volume)
   and Gaussian noise. Labels are painted in :data:`PAINT_ORDER`, so vessels carve through
   parenchyma; lesions change intensities only (labelled as their organ, as BTCV does).
4. **Report.** :func:`mosmoskit.data.phantom_reports.compose_report` writes text from the findings
   and records which findings its sentences deny, giving the ground-truth organ tags and finding
   tags (:mod:`mosmoskit.reports.findings`) of every image.

2D mode renders axial planes directly at chosen ``z`` (no 3D volume is made), for the 2D U-Net
path. Slice-level findings and tags are defined in :func:`make_slices`.

Randomness: one ``numpy.random.Generator`` per case, seeded by ``(seed, index)``; the anatomy and
the report are drawn from it before any grid-dependent draw, so the same seed gives the same anatomy
at any resolution, and the same seed and grid give byte-identical files.

Example:
    >>> from mosmoskit.data.phantom import generate_cohort, make_case
    >>> case = make_case(seed=0, index=0, shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
    >>> case.image.shape, case.label.dtype
    ((48, 48, 32), dtype('uint8'))
    >>> root = generate_cohort("runs/phantoms", n=4, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.data.phantom_absence import AZYGOS_RADIUS_MM, azygos_path, bowel_tube, conduit_path, replacements
from mosmoskit.data.phantom_reports import (
    OrganFinding,
    ReportStyle,
    compose_report,
    finding_tags_from_findings,
    has_wording,
    tags_from_findings,
)
from mosmoskit.data.phantom_shapes import (
    Difference,
    Ellipsoid,
    FourierField,
    HalfSpace,
    Intersection,
    Shape,
    Tube,
    Union,
    Wobbly,
    rotation,
)
from mosmoskit.labels import load_label_map

__all__ = [
    "PAINT_ORDER",
    "PhantomCase",
    "PhantomConfig",
    "Anatomy",
    "sample_anatomy",
    "render",
    "make_case",
    "make_slices",
    "generate_cohort",
    "ensure_cohort",
    "volume_affine",
    "slice_affine",
    "nifti_gz_bytes",
]

LABEL_MAP_NAME = "btcv"
ORGANS: tuple[str, ...] = load_label_map(LABEL_MAP_NAME).foreground_names

#: Organs are painted in this order, each over the previous ones: liver and spleen first (the
#: stomach then indents them), retroperitoneal and small organs next, vessels last so that they
#: carve through the liver and pancreas as in BTCV labels.
PAINT_ORDER: tuple[str, ...] = (
    "liver", "spleen", "stomach", "pancreas", "kidney_right", "kidney_left", "gallbladder",
    "adrenal_gland_right", "adrenal_gland_left", "esophagus",
    "portal_vein_and_splenic_vein", "inferior_vena_cava", "aorta",
)

DEFAULT_SHAPE_3D = (96, 96, 64)
DEFAULT_SPACING_3D = (4.0, 4.0, 5.0)
DEFAULT_SHAPE_2D = (128, 128)
DEFAULT_SPACING_2D = (3.0, 3.0)

# --------------------------------------------------------------------------------------------
# Tissues: Hounsfield value in the portal-venous phase, amplitude of the smooth texture (HU),
# which texture field (coarse "soft" or "fine"), and whether contrast enhancement varies it.
# --------------------------------------------------------------------------------------------
TISSUES: dict[str, tuple[float, float, str, bool]] = {
    "air": (-1000.0, 0.0, "fine", False),
    "lung": (-860.0, 30.0, "fine", False),
    "fat": (-100.0, 10.0, "fine", False),
    "visceral_fat": (-95.0, 14.0, "fine", False),
    "muscle": (50.0, 8.0, "soft", False),
    "bone_cortex": (700.0, 60.0, "fine", False),
    "bone_marrow": (230.0, 50.0, "fine", False),
    "rib": (450.0, 60.0, "fine", False),
    "disc": (85.0, 8.0, "soft", False),
    "csf": (15.0, 4.0, "soft", False),
    "heart": (125.0, 8.0, "soft", True),
    "liver": (100.0, 6.0, "soft", True),
    "hepatic_vein": (140.0, 4.0, "soft", True),
    "spleen": (115.0, 5.0, "soft", True),
    "kidney": (165.0, 6.0, "soft", True),
    "kidney_medulla": (140.0, 6.0, "soft", True),
    "renal_sinus": (-70.0, 15.0, "fine", False),
    "urine": (10.0, 3.0, "soft", False),
    "pancreas": (90.0, 16.0, "fine", True),
    "stomach_wall": (70.0, 6.0, "soft", True),
    "fluid": (12.0, 4.0, "soft", False),
    "gas": (-950.0, 20.0, "fine", False),
    "bile": (10.0, 3.0, "soft", False),
    "aorta": (165.0, 4.0, "soft", True),
    "ivc": (140.0, 6.0, "soft", True),
    "portal": (175.0, 4.0, "soft", True),
    "artery": (165.0, 4.0, "soft", True),
    "vein": (145.0, 4.0, "soft", True),
    "adrenal": (55.0, 5.0, "soft", True),
    "esophagus": (45.0, 6.0, "soft", True),
    "bowel_wall": (70.0, 6.0, "soft", True),
    "chyme": (25.0, 10.0, "soft", False),
    "feces": (-70.0, 85.0, "fine", False),
}
#: HU of unenhanced soft tissue; enhancement jitter scales the distance from it.
_ENHANCEMENT_PIVOT_HU = 40.0
#: Which tissue each organ's parenchyma is.
ORGAN_TISSUE: dict[str, str] = {
    "spleen": "spleen", "kidney_right": "kidney", "kidney_left": "kidney", "gallbladder": "bile",
    "esophagus": "esophagus", "liver": "liver", "stomach": "stomach_wall", "aorta": "aorta",
    "inferior_vena_cava": "ivc", "portal_vein_and_splenic_vein": "portal", "pancreas": "pancreas",
    "adrenal_gland_right": "adrenal", "adrenal_gland_left": "adrenal",
}
#: HU range of focal lesions per organ (hypodense liver/spleen lesions, renal cysts, cystic
#: pancreatic lesions, calcified gallstones, lipid-rich adrenal adenomas); others: soft tissue.
LESION_HU: dict[str, tuple[float, float]] = {
    "liver": (25.0, 55.0), "spleen": (45.0, 70.0), "kidney_right": (0.0, 18.0),
    "kidney_left": (0.0, 18.0), "pancreas": (10.0, 30.0), "gallbladder": (250.0, 600.0),
    "adrenal_gland_right": (0.0, 20.0), "adrenal_gland_left": (0.0, 20.0),
}
_DEFAULT_LESION_HU = (35.0, 60.0)
_LESION_TEXTURE_HU = 4.0
#: Share of small-bowel loops holding some gas.
_BOWEL_GAS_PROB = 0.4
#: Share of cases with a little air in the esophageal lumen.
_ESOPHAGEAL_AIR_PROB = 0.3
#: An aortic aneurysm dilates the infrarenal aorta by the enlargement factor times this.
_ANEURYSM_EXTRA = 1.3
#: Organs whose "lesion" is a nodule growing out of a thin organ (added to its shape).
_NODULAR_ORGANS = ("adrenal_gland_right", "adrenal_gland_left")


def _default_absent() -> dict[str, float]:
    return {"spleen": 0.1, "gallbladder": 0.15, "kidney_right": 0.05, "kidney_left": 0.05,
            "adrenal_gland_right": 0.05, "adrenal_gland_left": 0.05}


def _default_enlarged() -> dict[str, float]:
    return {"liver": 0.2, "spleen": 0.2, "kidney_right": 0.1, "kidney_left": 0.1, "gallbladder": 0.1,
            "stomach": 0.1, "aorta": 0.08, "pancreas": 0.05, "adrenal_gland_right": 0.05,
            "adrenal_gland_left": 0.05}


def _default_lesions() -> dict[str, float]:
    return {"liver": 0.25, "spleen": 0.08, "kidney_right": 0.15, "kidney_left": 0.15, "pancreas": 0.08,
            "gallbladder": 0.12, "adrenal_gland_right": 0.05, "adrenal_gland_left": 0.05}


# The enriched pre-training preset (PhantomConfig.pretraining); docs/phantom.md explains the numbers.
# Absence: surgical + congenital = 20-35% of patients for every organ that can be missing. Both
# kidneys drawn absent keep the right one, so the right kidney's draw is raised to give the same
# effective rate as the left: p_right = p / (1 - p).
_PRETRAIN_ABSENT: dict[str, float] = {
    "spleen": 0.25, "gallbladder": 0.27, "kidney_right": 0.22, "kidney_left": 0.15, "adrenal_gland_right": 0.2,
    "adrenal_gland_left": 0.2, "stomach": 0.22, "pancreas": 0.22, "esophagus": 0.22,
    "portal_vein_and_splenic_vein": 0.2,
}
_PRETRAIN_CONGENITAL: dict[str, float] = {
    "spleen": 0.05, "gallbladder": 0.05, "kidney_right": 0.11, "kidney_left": 0.1, "adrenal_gland_right": 0.05,
    "adrenal_gland_left": 0.05, "inferior_vena_cava": 0.25,
}
_PRETRAIN_ENLARGED: dict[str, float] = {
    "liver": 0.25, "spleen": 0.25, "kidney_right": 0.15, "kidney_left": 0.15, "gallbladder": 0.15, "stomach": 0.2,
    "aorta": 0.25, "pancreas": 0.15, "adrenal_gland_right": 0.15, "adrenal_gland_left": 0.15, "esophagus": 0.15,
    "inferior_vena_cava": 0.15, "portal_vein_and_splenic_vein": 0.2,
}
_PRETRAIN_ATROPHIC: dict[str, float] = {
    "liver": 0.2, "spleen": 0.15, "kidney_right": 0.15, "kidney_left": 0.15, "gallbladder": 0.15, "pancreas": 0.2,
    "adrenal_gland_right": 0.15, "adrenal_gland_left": 0.15, "inferior_vena_cava": 0.15,
}
_PRETRAIN_LESIONS: dict[str, float] = {
    "liver": 0.35, "spleen": 0.25, "kidney_right": 0.3, "kidney_left": 0.3, "pancreas": 0.25, "gallbladder": 0.3,
    "adrenal_gland_right": 0.25, "adrenal_gland_left": 0.25, "stomach": 0.2, "esophagus": 0.2, "aorta": 0.2,
    "inferior_vena_cava": 0.2, "portal_vein_and_splenic_vein": 0.25,
}


def _check_range(name: str, value: Sequence[float], lo: float = -math.inf, hi: float = math.inf) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(f"PhantomConfig.{name} must be a (low, high) pair with {lo} <= low <= high <= {hi}, got {value!r}")


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"PhantomConfig.{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class PhantomConfig:
    """Every probability and range of the phantom generator (lengths in mm, intensities in HU).

    Args:
        body_width_mm: range of the body's left-right diameter.
        body_depth_ratio: range of anterior-posterior / left-right diameter.
        subcutaneous_fat_mm: range of the subcutaneous fat thickness (thinner at the back).
        muscle_wall_mm: range of the abdominal muscle wall thickness.
        position_jitter_mm: standard deviation of each organ's displacement from the atlas.
        global_shift_mm: standard deviation of the whole anatomy's craniocaudal shift (breathing,
            positioning).
        size_jitter: standard deviation of the log of each organ's size factor.
        organ_size_from_body: exponent of the abdominal cavity's scale in every organ's size: 1
            (the default) scales organs with the cavity, so a patient with thick subcutaneous fat
            has small organs; 0 makes organ size independent of the body.
        deformation_mm: maximum displacement of the smooth random warp of the whole anatomy.
        boundary_wobble: relative amplitude of the smooth per-organ boundary deformation.
        absent_prob: organ -> probability that it is surgically absent (at most one kidney is:
            when both are drawn absent the right one is kept). For the portal/splenic vein the
            absence is a chronic occlusion with cavernous transformation (see
            :mod:`mosmoskit.data.phantom_absence` for what fills each organ's place).
        congenital_absent_prob: organ -> probability that it is congenitally absent (renal or
            adrenal agenesis, asplenia, gallbladder agenesis, interrupted IVC with azygos
            continuation). Drawn from the same number as ``absent_prob``, so
            ``absent_prob + congenital_absent_prob`` is the organ's absence rate and must be <= 1.
        enlarged_prob: organ -> probability that it is enlarged (distended, aneurysmal).
        enlarged_scale: range of the size factor of an enlarged organ.
        atrophic_prob: organ -> probability that it is atrophic (cirrhotic liver, small spleen or
            kidney, contracted gallbladder, flat IVC, pancreatic or adrenal atrophy); only organs
            with atrophic wording (:func:`~mosmoskit.data.phantom_reports.has_wording`). Drawn from
            the same number as ``enlarged_prob`` (an organ is never both), so their sum must be <= 1.
        atrophic_scale: range of the size factor of an atrophic organ.
        lesion_prob: organ -> probability that it holds focal lesions.
        max_lesions: a lesion-bearing organ holds 1..max_lesions lesions.
        lesion_diameter_mm: range of lesion diameters (shrunk to fit small organs).
        mention_prob: probability that a normal present organ is mentioned in the report.
        mention_prob_abnormal: same for an enlarged, atrophic or lesion-bearing organ.
        mention_prob_absent: same for a surgically or congenitally absent organ.
        bowel_loops: range of the number of unlabelled small-bowel loops (distractors).
        enhancement_jitter: relative variation of contrast enhancement between cases.
        noise_hu: standard deviation of the Gaussian image noise.
        blur_mm: standard deviation of the Gaussian blur (partial-volume effect).
        slice_min_pixels: (2D) an organ with fewer pixels in a slice is not reported for it.
        out_of_plane_mention_prob: (2D) probability that an organ of the case outside the slice is
            reported as "not included at this level" (tag 0).
        scan_range_prob: (3D) probability that a scan covers only part of the abdomen: a chest CT
            that reaches down into the upper abdomen, or a pelvic CT that reaches up into the lower
            abdomen (even odds), cut at a height drawn uniformly over the craniocaudal extent of the
            solid organs. Planes beyond the cut are left unimaged (-1024 HU, label 0) and the
            report speaks of the organs the scan leaves out. 0 (the default) gives whole-volume
            scans and leaves every earlier cohort unchanged, byte for byte.
        out_of_range_mention_prob: (3D) probability that an organ wholly outside a limited scan is
            reported as "not included in the field of view" (tag 0).
        report: wording probabilities, see :class:`~mosmoskit.data.phantom_reports.ReportStyle`.

    Raises:
        ValueError: a probability outside [0, 1], a reversed or out-of-range pair, a non-BTCV organ
            name in a probability table, an atrophic organ without atrophic wording, two
            probabilities drawn from one number that sum above 1, or a non-positive size.

    :meth:`pretraining` gives the enriched pre-training preset; ``PhantomConfig()`` the default
    cohort (whose cases never draw the congenital and atrophic states).
    """

    body_width_mm: tuple[float, float] = (290.0, 360.0)
    body_depth_ratio: tuple[float, float] = (0.66, 0.8)
    subcutaneous_fat_mm: tuple[float, float] = (8.0, 32.0)
    muscle_wall_mm: tuple[float, float] = (7.0, 13.0)
    position_jitter_mm: float = 5.0
    global_shift_mm: float = 8.0
    size_jitter: float = 0.08
    organ_size_from_body: float = 1.0
    deformation_mm: float = 5.0
    boundary_wobble: float = 0.07
    absent_prob: Mapping[str, float] = field(default_factory=_default_absent)
    congenital_absent_prob: Mapping[str, float] = field(default_factory=dict)
    enlarged_prob: Mapping[str, float] = field(default_factory=_default_enlarged)
    enlarged_scale: tuple[float, float] = (1.25, 1.45)
    atrophic_prob: Mapping[str, float] = field(default_factory=dict)
    atrophic_scale: tuple[float, float] = (0.6, 0.8)
    lesion_prob: Mapping[str, float] = field(default_factory=_default_lesions)
    max_lesions: int = 3
    lesion_diameter_mm: tuple[float, float] = (8.0, 26.0)
    mention_prob: float = 0.85
    mention_prob_abnormal: float = 1.0
    mention_prob_absent: float = 0.95
    bowel_loops: tuple[int, int] = (8, 14)
    enhancement_jitter: float = 0.1
    noise_hu: float = 12.0
    blur_mm: float = 1.0
    slice_min_pixels: int = 8
    out_of_plane_mention_prob: float = 0.3
    scan_range_prob: float = 0.0
    out_of_range_mention_prob: float = 0.7
    report: ReportStyle = field(default_factory=ReportStyle)

    def __post_init__(self) -> None:
        _check_range("body_width_mm", self.body_width_mm, 150.0, 600.0)
        _check_range("body_depth_ratio", self.body_depth_ratio, 0.4, 1.0)
        _check_range("subcutaneous_fat_mm", self.subcutaneous_fat_mm, 0.0, 80.0)
        _check_range("muscle_wall_mm", self.muscle_wall_mm, 1.0, 40.0)
        _check_range("enlarged_scale", self.enlarged_scale, 1.0, 3.0)
        _check_range("atrophic_scale", self.atrophic_scale, 0.3, 1.0)
        _check_range("lesion_diameter_mm", self.lesion_diameter_mm, 1.0, 80.0)
        _check_range("bowel_loops", self.bowel_loops, 0, 40)
        for name in ("position_jitter_mm", "global_shift_mm", "size_jitter", "organ_size_from_body", "deformation_mm",
                     "boundary_wobble", "enhancement_jitter", "noise_hu", "blur_mm"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"PhantomConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.boundary_wobble >= 0.5 or self.enhancement_jitter >= 1.0:
            raise ValueError(
                f"PhantomConfig: boundary_wobble must be < 0.5 and enhancement_jitter < 1, got "
                f"{self.boundary_wobble!r} and {self.enhancement_jitter!r}"
            )
        for name in ("absent_prob", "congenital_absent_prob", "enlarged_prob", "atrophic_prob", "lesion_prob"):
            table = dict(getattr(self, name))
            unknown = [k for k in table if k not in ORGANS]
            if unknown:
                raise ValueError(f"PhantomConfig.{name}: unknown organs {unknown}; use BTCV names {list(ORGANS)}")
            for organ, p in table.items():
                _check_prob(f"{name}[{organ!r}]", p)
            object.__setattr__(self, name, table)
        no_wording = sorted(o for o, p in self.atrophic_prob.items() if p > 0 and not has_wording(o, "atrophic"))
        if no_wording:
            raise ValueError(f"PhantomConfig.atrophic_prob: organs {no_wording} have no atrophic form (no report wording)")
        for a, b in (("absent_prob", "congenital_absent_prob"), ("enlarged_prob", "atrophic_prob")):
            over = {o: round(getattr(self, a).get(o, 0.0) + getattr(self, b).get(o, 0.0), 6) for o in ORGANS}
            over = {o: v for o, v in over.items() if v > 1.0}
            if over:
                raise ValueError(f"PhantomConfig.{a} + {b} must be <= 1 per organ (one number decides both), got {over}")
        for name in ("mention_prob", "mention_prob_abnormal", "mention_prob_absent", "out_of_plane_mention_prob",
                     "scan_range_prob", "out_of_range_mention_prob"):
            _check_prob(name, getattr(self, name))
        if self.max_lesions < 1:
            raise ValueError(f"PhantomConfig.max_lesions must be >= 1, got {self.max_lesions!r}")
        if self.slice_min_pixels < 1:
            raise ValueError(f"PhantomConfig.slice_min_pixels must be >= 1, got {self.slice_min_pixels!r}")
        if isinstance(self.report, Mapping):
            object.__setattr__(self, "report", ReportStyle(**dict(self.report)))

    @classmethod
    def pretraining(cls, **overrides: Any) -> PhantomConfig:
        """The enriched pre-training cohort: every organ's presence, size and findings vary.

        In the default cohort an organ's tag is nearly always predictable without looking at it:
        absence mostly means "not at this slice level", only spleen, gallbladder, kidneys and
        adrenals are ever missing, and findings never become tags. Here each of the 13 organs that
        can be is absent (surgically or congenitally) in 20-35% of patients, and enlarged, atrophic
        or lesion-bearing in an enriched share, all drawn independently of position and slice
        level; anatomy varies as much as between real patients (body 280-380 mm wide, organs
        displaced by about 1-2 cm, liver volume +-20-30%), so a fixed atlas is no shortcut; and
        the reports use the extended wording, which also denies findings ("no hepatomegaly").
        ``docs/phantom.md`` tabulates the numbers and the reasons.

        Args:
            overrides: fields to change from the preset (``scan_range_prob=0.5``, ...).

        Returns:
            A :class:`PhantomConfig`.
        """
        values: dict[str, Any] = dict(
            body_width_mm=(280.0, 380.0), body_depth_ratio=(0.62, 0.84), subcutaneous_fat_mm=(6.0, 34.0),
            muscle_wall_mm=(6.0, 15.0), position_jitter_mm=10.0, global_shift_mm=15.0, size_jitter=0.1,
            organ_size_from_body=0.4,
            deformation_mm=10.0, boundary_wobble=0.09,
            absent_prob=_PRETRAIN_ABSENT, congenital_absent_prob=_PRETRAIN_CONGENITAL, enlarged_prob=_PRETRAIN_ENLARGED,
            atrophic_prob=_PRETRAIN_ATROPHIC, lesion_prob=_PRETRAIN_LESIONS, out_of_plane_mention_prob=0.15,
            report=ReportStyle(extended_phrasing=True),
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (stored in ``dataset.json``); :meth:`from_dict` inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhantomConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"PhantomConfig: unknown fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        for f in dataclasses.fields(cls):
            if f.name in values and isinstance(values[f.name], list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)


# ============================================================================================
# Anatomy of one case
# ============================================================================================
@dataclass(frozen=True)
class OrganSpec:
    """One labelled organ: its solid, tissue, internal structures (HU only) and clip region."""

    name: str
    shape: Shape
    tissue: str
    inner: tuple[tuple[Shape, str], ...] = ()
    clip: str = "abdomen"  # "abdomen": below the diaphragm; "body": anywhere inside the trunk
    anchor: np.ndarray = field(default_factory=lambda: np.zeros(3))


@dataclass(frozen=True)
class Lesion:
    organ: str
    center: np.ndarray
    radius: float
    hu: float


@dataclass(frozen=True)
class Body:
    """Trunk cross-section (half-axes in mm) and the levels of spine and diaphragm."""

    half_width: float
    half_depth_ant: float
    half_depth_post: float
    fat_lat: float
    fat_ant: float
    fat_post: float
    muscle: float
    muscle_post: float
    spine_y: float
    dome_right_z: float
    dome_left_z: float
    z0: float  # craniocaudal offset of the atlas in this case (vertebral levels, psoas, ribs follow it)


@dataclass(frozen=True)
class Anatomy:
    """Everything random about one case, before any grid is chosen.

    Attributes:
        body: trunk geometry.
        organs: organ name -> :class:`OrganSpec` for the present organs.
        background: unlabelled structures (bowel, small vessels), painted before the organs.
        lesions: focal lesions, painted over their organ's voxels.
        findings: organ -> :class:`OrganFinding` (all 13 BTCV organs).
        warp: three bounded fields (x, y, z displacement / ``deformation_mm``).
        texture_soft, texture_fine: unit-variance texture fields.
        enhancement: contrast enhancement factor of this case.
        noise_seed: seed of the grid-dependent noise draw.
    """

    config: PhantomConfig
    body: Body
    organs: dict[str, OrganSpec]
    background: tuple[tuple[Shape, str, str], ...]
    lesions: tuple[Lesion, ...]
    findings: dict[str, OrganFinding]
    warp: tuple[FourierField, FourierField, FourierField]
    texture_soft: FourierField
    texture_fine: FourierField
    enhancement: float
    noise_seed: int

    def organ_z_range(self) -> tuple[float, float]:
        """Craniocaudal range (mm) covered by the solid organs, for placing 2D slices."""
        solid = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "pancreas", "gallbladder")
        los, his = [], []
        for name in solid:
            if name in self.organs:
                lo, hi = self.organs[name].shape.bounds()
                los.append(lo[2])
                his.append(hi[2])
        top = max(self.body.dome_right_z, self.body.dome_left_z)
        return float(min(los)), float(min(max(his), top))


# --- body regions, evaluated on warped coordinates (any broadcastable arrays) ---------------
def _rho(x, y, half_width, half_ant, half_post, exponent=2.0):
    """Normalised elliptical radius of a trunk cross-section with different front/back depth."""
    b = np.where(y >= 0, np.float32(half_ant), np.float32(half_post))
    return (np.abs(x / np.float32(half_width)) ** exponent + np.abs(y / b) ** exponent) ** (1.0 / exponent)


def _regions(body: Body, x, y, z) -> dict[str, np.ndarray]:
    """Boolean masks of the trunk's compartments at the given (warped) points."""
    f = np.float32
    outer = _rho(x, y, body.half_width, body.half_depth_ant, body.half_depth_post, 2.3) < 1
    mw, ma, mp = body.half_width - body.fat_lat, body.half_depth_ant - body.fat_ant, body.half_depth_post - body.fat_post
    inner_muscle = _rho(x, y, mw, ma, mp, 2.2) < 1
    cw, ca, cp = mw - body.muscle, ma - body.muscle, mp - body.muscle_post
    rho_cav = _rho(x, y, cw, ca, cp, 2.1)
    cavity = rho_cav < 1
    sy = body.spine_y
    vertebra = ((x / f(24)) ** 2 + ((y - f(sy)) / f(20)) ** 2) < 1
    posterior = ((x / f(46)) ** 2 + ((y - f(sy - 40)) / f(34)) ** 2) < 1  # posterior elements + erector spinae
    za = z - f(body.z0)  # atlas height
    psoas_r = np.clip(f(6.0) + f(0.11) * (f(40.0) - za), 0.0, 30.0)  # the psoas thickens downwards
    psoas_x = f(30.0) + f(0.12) * np.clip(f(40.0) - za, 0.0, None)
    psoas = (za < 40) & (((np.abs(x) - psoas_x) ** 2 + (y - f(sy + 4)) ** 2) < psoas_r**2)
    spine = vertebra | posterior
    # Two hemidiaphragm domes (the right one higher, over the liver) blended smoothly across the
    # midline, lower laterally and posteriorly (the costophrenic recesses).
    mid, half_diff = f((body.dome_right_z + body.dome_left_z) / 2), f((body.dome_right_z - body.dome_left_z) / 2)
    dome = mid + half_diff * np.tanh(x / f(40))
    diaphragm = (dome - f(0.0035) * (np.abs(x) - f(65)) ** 2 - f(0.35) * np.clip(f(sy + 20) - y, 0, None)
                 - f(0.2) * np.clip(y - f(sy + 90), 0, None))
    mediastinum = ((x + f(12)) / f(52)) ** 2 + ((y - f(sy + 70)) / f(95)) ** 2 < 1
    lung = cavity & (z > diaphragm) & ~mediastinum & ~spine
    return {
        "outer": outer, "muscle": inner_muscle, "cavity": cavity, "rho_cav": rho_cav, "spine": spine,
        "psoas": psoas & cavity, "lung": lung, "abdomen": cavity & ~spine & (z <= diaphragm),
        "body": cavity & ~spine & ~lung,
    }


# --- atlas ----------------------------------------------------------------------------------
# Positions below are in a reference trunk (abdominal cavity 260 x 170 mm, vertebral body centre at
# y = -40 mm, z = 0 near L1/L2) and are mapped to each case by _Placer: x scales with the cavity's
# width, y with its depth about the spine, z is shifted by the case's craniocaudal offset.
_REF_CAVITY_HALF_WIDTH = 130.0
_REF_CAVITY_HALF_DEPTH = 85.0
_REF_SPINE_Y = -40.0
#: Moves the atlas down so that the organs (about -80..+110 mm in atlas coordinates) sit near the
#: middle of a field of view centred on the world origin.
_ATLAS_Z_OFFSET = -15.0


@dataclass
class _Placer:
    sx: float
    sy: float
    spine_y: float
    dz: float

    def __call__(self, p: Sequence[float]) -> np.ndarray:
        x, y, z = p
        return np.array([x * self.sx, self.spine_y + (y - _REF_SPINE_Y) * self.sy, z + self.dz])

    def many(self, pts: Sequence[Sequence[float]]) -> np.ndarray:
        return np.array([self(p) for p in pts])

    def vec(self, d: Sequence[float]) -> np.ndarray:
        """An offset (not a position) scaled like the trunk."""
        return np.array([d[0] * self.sx, d[1] * self.sy, d[2]])


def _jitter(rng: np.random.Generator, sd: float) -> np.ndarray:
    return rng.normal(0.0, sd, size=3)


def _sample_findings(rng: np.random.Generator, config: PhantomConfig) -> dict[str, dict[str, Any]]:
    """Presence, size state and lesion count per organ (mention is decided after rendering).

    Four numbers per organ, whatever the config: one decides absence (surgical below
    ``absent_prob``, congenital in the next ``congenital_absent_prob``), one the size state
    (enlarged below ``enlarged_prob``, atrophic in the next ``atrophic_prob``), one whether it has
    lesions and one how many. A config without congenital or atrophic tables draws exactly what it
    drew before they existed.
    """
    out: dict[str, dict[str, Any]] = {}
    for organ in ORGANS:
        p_surgical = config.absent_prob.get(organ, 0.0)
        p_enlarged = config.enlarged_prob.get(organ, 0.0)
        u_absent = rng.random()
        u_size = rng.random()
        has_lesion = rng.random() < config.lesion_prob.get(organ, 0.0)
        n = int(rng.integers(1, config.max_lesions + 1))
        absent = u_absent < p_surgical + config.congenital_absent_prob.get(organ, 0.0)
        enlarged = u_size < p_enlarged and not absent
        atrophic = not absent and p_enlarged <= u_size < p_enlarged + config.atrophic_prob.get(organ, 0.0)
        out[organ] = {"present": not absent, "enlarged": enlarged, "atrophic": atrophic,
                      "absence": None if not absent else "resected" if u_absent < p_surgical else "congenital",
                      "n_lesions": n if (has_lesion and not absent) else 0}
    if not out["kidney_right"]["present"] and not out["kidney_left"]["present"]:
        out["kidney_right"]["present"] = True  # a living patient keeps one kidney
        out["kidney_right"]["absence"] = None
    return out


def sample_anatomy(rng: np.random.Generator, config: PhantomConfig | None = None) -> Anatomy:
    """Draw one case's anatomy, findings (without the mention flags) and fields from ``rng``.

    Args:
        rng: the case's generator; this function consumes a fixed part of its stream that does not
            depend on any image grid.
        config: probabilities and ranges; defaults when ``None``.

    Returns:
        An :class:`Anatomy`; ``findings`` have ``mentioned=False`` (decided in :func:`make_case`).

    Everything added after the first cohorts (atrophic sizes, the structures that fill an absent
    organ's place) draws from a second generator derived from the case's noise seed, so the main
    stream, and with it every default cohort, is unchanged.
    """
    cfg = config or PhantomConfig()
    noise_seed = int(rng.integers(2**62))
    facts = _sample_findings(rng, cfg)
    aux = np.random.default_rng([noise_seed, 1])
    absent = {o for o in ORGANS if not facts[o]["present"]}

    # Body -------------------------------------------------------------------------------
    width = rng.uniform(*cfg.body_width_mm)
    half_w = width / 2
    half_d = half_w * rng.uniform(*cfg.body_depth_ratio)
    fat = rng.uniform(*cfg.subcutaneous_fat_mm)
    muscle = rng.uniform(*cfg.muscle_wall_mm)
    body = Body(
        half_width=half_w, half_depth_ant=half_d * 1.04, half_depth_post=half_d * 0.96,
        fat_lat=fat, fat_ant=fat * 1.15, fat_post=fat * 0.45, muscle=muscle, muscle_post=muscle * 2.2,
        spine_y=0.0, dome_right_z=0.0, dome_left_z=0.0, z0=0.0,
    )
    cav_w = body.half_width - body.fat_lat - body.muscle
    cav_post = body.half_depth_post - body.fat_post - body.muscle_post
    cav_ant = body.half_depth_ant - body.fat_ant - body.muscle
    spine_y = -cav_post + 42.0
    dz = _ATLAS_Z_OFFSET + rng.normal(0.0, cfg.global_shift_mm)
    place = _Placer(cav_w / _REF_CAVITY_HALF_WIDTH, (cav_ant + cav_post) / (2 * _REF_CAVITY_HALF_DEPTH), spine_y, dz)
    body = dataclasses.replace(body, spine_y=spine_y, dome_right_z=102.0 + dz + rng.normal(0, 4),
                               dome_left_z=92.0 + dz + rng.normal(0, 4), z0=dz)

    # Fields -----------------------------------------------------------------------------
    warp = tuple(FourierField.random(rng, 6, (120.0, 300.0), bounded=True) for _ in range(3))
    texture_soft = FourierField.random(rng, 12, (12.0, 45.0))
    texture_fine = FourierField.random(rng, 12, (4.0, 12.0))
    enhancement = 1.0 + rng.uniform(-cfg.enhancement_jitter, cfg.enhancement_jitter)

    trunk_scale = math.sqrt(place.sx * place.sy)  # bigger patients have bigger organs ...
    if cfg.organ_size_from_body != 1.0:  # ... but less so than their abdominal cavity
        trunk_scale = trunk_scale ** cfg.organ_size_from_body

    def size(organ: str) -> float:
        s = trunk_scale * float(np.exp(rng.normal(0.0, cfg.size_jitter)))
        if facts[organ]["enlarged"]:
            s *= rng.uniform(*cfg.enlarged_scale)
        elif facts[organ]["atrophic"]:
            s *= aux.uniform(*cfg.atrophic_scale)
        return s

    def wobble(shape: Shape, amount: float = 1.0) -> Shape:
        f = FourierField.random(rng, 6, (40.0, 110.0))
        return Wobbly(shape, f, cfg.boundary_wobble * amount)

    jit = cfg.position_jitter_mm
    organs: dict[str, OrganSpec] = {}

    # Liver: right lobe hugging the right wall, inferior tip, left lobe crossing the midline
    # anteriorly, caudate lobe by the IVC; the dome is cut by the diaphragm at render time.
    s = size("liver")
    liver_shift = _jitter(rng, jit)
    # An enlarged liver grows downwards (the diaphragm holds the dome) and mostly in the right lobe.
    grow = s / trunk_scale
    grow_down = np.array([0.0, 0.0, -55.0 * (grow - 1)])

    def lv(p, r, rot=np.eye(3), e=2.2, growth=1.0):
        return Ellipsoid(place(p) + liver_shift + grow_down * growth,
                         np.asarray(r, float) * trunk_scale * grow**growth, rot, e)

    liver_shape = Union((
        lv((72, 2, 45), (64, 78, 76), e=2.4, growth=0.6),
        lv((92, 0, -5), (40, 55, 52)),
        lv((8, 44, 62), (42, 28, 28), rotation(z_deg=-10), growth=0.3),
        lv((-34, 48, 64), (28, 17, 20), rotation(z_deg=-20), growth=0.2),
        lv((18, -12, 60), (20, 20, 28), growth=0.3),
    ))
    hv_root = place((15, -12, 100)) + liver_shift
    hepatic_veins = tuple(
        (Tube.smooth([hv_root, hv_root + place.vec(d) * 0.5, hv_root + place.vec(d)], [6.0, 4.5, 2.5]), "hepatic_vein")
        for d in ((75, -5, -45), (10, 30, -40), (-40, 40, -25))
    )
    # A cirrhotic (atrophic) liver shrinks towards the dome and has a nodular contour.
    organs["liver"] = OrganSpec("liver", wobble(liver_shape, 0.9 if facts["liver"]["atrophic"] else 0.5), "liver",
                                hepatic_veins, anchor=place((70, 5, 30)) + liver_shift)

    # Gallbladder: pear under the liver, fundus anterior-inferior.
    s = size("gallbladder")
    gb_c = place((45, 42, 12)) + liver_shift + grow_down + _jitter(rng, jit)
    gb = Ellipsoid(gb_c, np.array([15.0, 15.0, 32.0]) * [s, s, s**0.5], rotation(x_deg=-40, y_deg=15), 2.0)
    organs["gallbladder"] = OrganSpec("gallbladder", wobble(gb, 0.4), "bile", anchor=gb_c)

    # Spleen: crescent against the left posterolateral wall, concave towards the hilum.
    s = size("spleen")
    sp_c = place((-92, -32, 62)) + _jitter(rng, jit) + np.array([0, 25 * (s - 1), -40 * (s - 1)])
    ang = 128.0  # tangent of the wall: from posterior-medial to anterior-lateral
    sp_rot = rotation(z_deg=ang, x_deg=10)
    inward = np.array([np.cos(np.deg2rad(ang - 90)), np.sin(np.deg2rad(ang - 90)), 0.0])
    spleen = Difference(Ellipsoid(sp_c, np.array([58.0, 26.0, 55.0]) * s, sp_rot, 2.0),
                        Ellipsoid(sp_c + inward * 30 * s, np.array([45.0, 22.0, 42.0]) * s, sp_rot, 2.0))
    organs["spleen"] = OrganSpec("spleen", wobble(spleen, 0.6), "spleen", anchor=sp_c - inward * 10)

    # Kidneys: beans beside the spine (right lower than left), hilum notch facing anteromedially,
    # upper pole tilted medially; renal sinus fat, pelvis and renal vein sit in the notch.
    # background: (shape, tissue, clip region, organ it belongs to or "") - dropped with its organ.
    background: list[tuple[Shape, str, str, str]] = []

    def unlabelled(shape: Shape, tissue: str, clip: str = "abdomen", owner: str = "") -> None:
        background.append((shape, tissue, clip, owner))
    kidney_poles = {}
    for organ, sign, ref in (("kidney_right", 1, (70, -40, -16)), ("kidney_left", -1, (-70, -38, 4))):
        s = size(organ)
        kc = place(ref) + _jitter(rng, jit)
        # Local axes: 0 = towards the hilum (anteromedial), 1 = in-plane long axis, 2 = poles.
        # The world tilt puts the upper pole medial and posterior, as the kidneys lie on the psoas.
        rot = rotation(y_deg=-sign * 12, x_deg=10) @ rotation(z_deg=90 + sign * 40)
        radii = np.array([20.0, 30.0, 52.0]) * s
        hilum_dir = rot[:, 0]
        notch_c = kc + hilum_dir * radii[0] * 0.9
        notch = Ellipsoid(notch_c, np.array([14.0, 13.0, 20.0]) * s, rot)
        shape = Difference(Ellipsoid(kc, radii, rot, 2.0), notch)
        medulla = Ellipsoid(kc, radii * 0.62, rot)
        kidney_poles[organ] = kc + rot[:, 2] * radii[2]
        organs[organ] = OrganSpec(organ, wobble(shape, 0.3), "kidney", ((medulla, "kidney_medulla"),),
                                  anchor=kc - hilum_dir * 5)
        unlabelled(Ellipsoid(notch_c, np.array([10.0, 9.0, 16.0]) * s, rot), "renal_sinus", owner=organ)
        unlabelled(Ellipsoid(notch_c + hilum_dir * 4, np.array([5.0, 5.0, 9.0]) * s, rot), "urine", owner=organ)

    # Adrenals: drawn here (the random stream keeps its order) but built below, beside the IVC and
    # the aorta whose positions they follow.
    adrenal_draws = {organ: (size(organ), _jitter(rng, jit * 0.4)) for organ in ("adrenal_gland_right", "adrenal_gland_left")}

    # Pancreas: oblique tube from the head (right of midline, in the duodenal C-loop) to the tail
    # (splenic hilum), lobulated by the fine texture.
    s = size("pancreas")
    pshift = _jitter(rng, jit)
    pan_pts = place.many([(28, -2, -6), (26, 14, 10), (6, 24, 22), (-28, 14, 30), (-58, -4, 40), (-78, -18, 50)])
    pan_pts = pan_pts + pshift
    pan = Tube.smooth(pan_pts, np.array([12.0, 15.0, 10.0, 10.5, 9.5, 8.0]) * s)
    organs["pancreas"] = OrganSpec("pancreas", wobble(pan, 0.6), "pancreas", anchor=pan_pts[1])

    # Portal and splenic vein: splenic vein along the back of the pancreas to the confluence behind
    # the neck, portal vein up to the liver hilum, then right and left branches.
    s = size("portal_vein_and_splenic_vein")
    conf = place((4, 12, 24)) + pshift
    hilum = place((42, 14, 58)) + liver_shift
    sv = place.many([(-80, -28, 52), (-58, -14, 42), (-30, 2, 33)]) + pshift
    pv_mid = place((22, 16, 42)) + (pshift + liver_shift) / 2
    pv_shape = Union((
        Tube.smooth(np.vstack([sv, conf[None]]), np.array([5.0, 5.0, 5.5, 6.5]) * s),
        Tube.smooth([conf, pv_mid, hilum], np.array([7.0, 7.0, 6.5]) * s),
        Tube.smooth([hilum, hilum + place.vec((30, -5, 6)), hilum + place.vec((58, -8, 8))],
                    np.array([5.5, 4.5, 3.0]) * s),  # right portal branch
        Tube.smooth([hilum, hilum + place.vec((-25, 16, 8)), hilum + place.vec((-55, 24, 10))],
                    np.array([4.5, 3.5, 2.5]) * s),  # left portal branch
    ))
    organs["portal_vein_and_splenic_vein"] = OrganSpec("portal_vein_and_splenic_vein", pv_shape, "portal",
                                                       clip="body", anchor=conf)

    # Stomach: J-shaped tube (fundus high, left and posterior; body down the left anterior wall;
    # antrum crossing to the pylorus right of midline); wall, fluid, and gas on the anterior side.
    s = s_stomach = size("stomach")
    st_pts = place.many([(-45, 0, 72), (-60, 16, 55), (-58, 36, 32), (-40, 52, 10), (-8, 58, 2), (20, 48, 10),
                         (34, 32, 16)]) + _jitter(rng, jit)
    st_r = np.array([30.0, 34.0, 31.0, 26.0, 20.0, 14.0, 9.0]) * s
    stomach = Tube.smooth(st_pts, st_r)
    wall_mm = 5.0
    lumen = Tube(stomach.points, np.maximum(stomach.radii - wall_mm, 1.0))
    gas_level = spine_y + rng.uniform(60.0, 110.0) * place.sy
    gas = Intersection(lumen, HalfSpace(1, gas_level))
    organs["stomach"] = OrganSpec("stomach", wobble(stomach, 0.3), "stomach_wall", ((lumen, "fluid"), (gas, "gas")),
                                  anchor=st_pts[2])

    # Esophagus: near the midline in front of the spine, curving left into the cardia.
    s = size("esophagus")
    es_pts = np.vstack([place.many([(-2, -24, 175), (-6, -20, 135), (-14, -10, 100)]), st_pts[0] + [14, 4, 10]])
    es = Tube.smooth(es_pts + _jitter(rng, jit * 0.3) * [1, 1, 0], np.array([7.5, 7.5, 8.0, 9.0]) * s)
    gas_radius = rng.uniform(0.15, 0.35)
    es_inner = ((Tube(es.points, es.radii * gas_radius), "gas"),) if rng.random() < _ESOPHAGEAL_AIR_PROB else ()
    organs["esophagus"] = OrganSpec("esophagus", es, "esophagus", es_inner, clip="body", anchor=es_pts[1])
    if "esophagus" in absent and "stomach" not in absent:
        # Esophagectomy: the stomach, tubularised, is pulled up along the esophageal course.
        organs["stomach"] = _gastric_conduit(conduit_path(st_pts, es.points), s_stomach)

    # Aorta: left of midline, anterior to the spine, bifurcating low; an aneurysm dilates the
    # infrarenal part.
    s = size("aorta")
    ao_ctrl = place.many([(-6, -22, 180), (-9, -16, 110), (-12, -8, 40), (-13, -5, -30), (-11, -4, -105)])
    ao_ctrl = ao_ctrl + _jitter(rng, jit * 0.3) * [1, 1, 0]
    ao_r = np.array([12.0, 12.0, 11.5, 10.5, 9.5])
    if facts["aorta"]["enlarged"]:
        ao_r = ao_r * np.array([1.0, 1.0, 1.0, s * _ANEURYSM_EXTRA, s])
    else:
        ao_r = ao_r * s
    organs["aorta"] = OrganSpec("aorta", Tube.smooth(ao_ctrl, ao_r), "aorta", clip="body", anchor=ao_ctrl[2])

    # IVC: right of midline, anterior-right of the spine, passing behind the liver (caudate).
    s = size("inferior_vena_cava")
    ivc_ctrl = place.many([(22, -5, -105), (22, -4, -30), (20, -6, 25), (17, -14, 75), (10, -8, 120), (2, 5, 175)])
    ivc_ctrl = ivc_ctrl + _jitter(rng, jit * 0.3) * [1, 1, 0]
    ivc_r = np.array([11.0, 11.5, 12.0, 12.0, 13.0, 14.0]) * s
    ivc: Shape = Tube.smooth(ivc_ctrl, ivc_r)
    if facts["inferior_vena_cava"]["atrophic"]:
        # A flat (slit-like) IVC is wider than deep: two thin tubes side by side, a stadium in section.
        ivc = Union(tuple(Tube.smooth(ivc_ctrl + np.outer(sign * 0.5 * ivc_r, [1.0, 0.0, 0.0]), 0.55 * ivc_r)
                          for sign in (-1.0, 1.0)))
    organs["inferior_vena_cava"] = OrganSpec("inferior_vena_cava", ivc, "ivc", clip="body", anchor=ivc_ctrl[2])
    _add_adrenals(organs, adrenal_draws, kidney_poles, ivc_ctrl, ivc_r, ao_ctrl, ao_r, place)
    # An interrupted IVC drains through an enlarged azygos vein beside the spine, with a rim of fat
    # between it and the liver.
    azygos = azygos_path(ivc_ctrl, spine_y)
    venous_ctrl = azygos if "inferior_vena_cava" in absent else ivc_ctrl
    if "inferior_vena_cava" in absent:
        liver_spec = organs["liver"]
        organs["liver"] = dataclasses.replace(liver_spec, shape=Difference(liver_spec.shape, Tube.smooth(azygos, AZYGOS_RADIUS_MM + 4.0)))

    # Unlabelled vessels: renal veins (the left one between aorta and SMA), SMA, SMV, iliacs.
    for organ in ("kidney_right", "kidney_left"):
        kc = organs[organ].anchor
        end = np.array([venous_ctrl[1][0], venous_ctrl[1][1], kc[2] - 4])
        # the left renal vein crosses in front of the aorta, behind the SMA
        mid = np.array([kc[0] * 0.4, place((0, 8, 0))[1], kc[2]]) if organ == "kidney_left" else (kc + end) / 2
        unlabelled(Tube.smooth([kc, mid, end], [5.0, 5.0, 6.0]), "vein", owner=organ)
    sma = [ao_ctrl[2] + [0, 0, -18], *place.many([(-4, 24, 8), (-2, 32, -40), (2, 38, -95)])]
    unlabelled(Tube.smooth(sma, [4.5, 4.0, 3.5, 3.0]), "artery")
    smv = [conf, *place.many([(8, 24, -10), (10, 34, -60), (12, 40, -105)])]
    unlabelled(Tube.smooth(smv, [6.0, 5.5, 4.5, 4.0]), "vein")
    for sign in (1, -1):  # common iliac arteries and veins
        iliac_a = [ao_ctrl[-1], place((sign * 35, -6, -140)), place((sign * 62, -4, -190))]
        unlabelled(Tube.smooth(iliac_a, [8.0, 7.0, 6.0]), "artery")
        iliac_v = [venous_ctrl[0], place((sign * 40, -14, -140)), place((sign * 66, -12, -190))]
        unlabelled(Tube.smooth(iliac_v, [9.0, 8.0, 7.0]), "vein")

    # Unlabelled bowel: duodenal C-loop around the pancreatic head, colon frame, small-bowel loops.
    def bowel(points, radii, content: str, wall: float = 3.0, gas_frac: float = 0.0) -> None:
        background.extend(bowel_tube(points, radii, content, wall, gas_frac))

    duo = place.many([(34, 32, 18), (50, 20, 16), (56, 6, 0), (52, 0, -26), (28, 0, -38), (0, 4, -42),
                      (-24, 10, -34), (-34, 16, -14)]) + pshift
    bowel(duo, 11.0, "fluid", gas_frac=rng.uniform(0.0, 0.4))
    col_j = _jitter(rng, jit * 2)
    colon = place.many([(104, 0, -150), (106, 4, -90), (104, 10, -45), (86, 40, -28), (40, 66, -24), (0, 72, -40),
                        (-40, 68, -22), (-82, 40, 20), (-104, 2, -5), (-104, -4, -80), (-94, 0, -150)]) + col_j
    bowel(colon, [22, 22, 22, 21, 20, 19, 19, 18, 17, 17, 17], "feces", wall=2.5, gas_frac=rng.uniform(0.0, 0.25))
    n_loops = int(rng.integers(cfg.bowel_loops[0], cfg.bowel_loops[1] + 1))
    for _ in range(n_loops):
        p = place((rng.uniform(-75, 75), rng.uniform(-5, 65), rng.uniform(-150, -45)))
        d = rng.normal(size=3)
        pts = [p]
        for _ in range(7):  # a meandering loop: a random walk with smoothly turning direction
            d = d / (np.linalg.norm(d) + 1e-9) + rng.normal(scale=0.8, size=3)
            p = p + d / (np.linalg.norm(d) + 1e-9) * 20.0
            pts.append(p)
        content = ("fluid", "chyme", "chyme")[int(rng.integers(3))]
        gas_frac = rng.uniform(0.0, 0.5) if rng.random() < _BOWEL_GAS_PROB else 0.0
        bowel(np.array(pts), rng.uniform(9.0, 13.0), content, gas_frac=gas_frac)

    # Remove absent organs and their satellites (geometry was still drawn so that the random
    # stream, hence everything else about the case, does not depend on which organs are absent),
    # and fill their place with what really fills it (fat is already there; bowel loops, a Roux
    # limb, collateral veins, an azygos vein: mosmoskit.data.phantom_absence).
    if absent:
        beds = {o: (organs[o].anchor, *organs[o].shape.bounds()) for o in absent if o in organs}
        if "esophagus" in absent and "stomach" not in absent:
            beds["stomach"] = (st_pts[2], *stomach.bounds())  # the stomach moved up: its bed is empty
        paths = {"stomach": st_pts, "esophagus": es.points, "azygos": azygos,
                 "portal_vein_and_splenic_vein": np.vstack([sv, conf[None], pv_mid[None], hilum[None]])}
        fill = replacements(sorted(absent), beds, paths, aux)
        background.extend(fill)
    for organ in absent:
        organs.pop(organ)
    background = [b for b in background if not b[3] or b[3] in organs]

    lesions, facts = _place_lesions(rng, cfg, organs, facts, body)
    findings = {o: OrganFinding(present=facts[o]["present"], enlarged=facts[o]["enlarged"],
                                atrophic=facts[o]["atrophic"], absence=facts[o]["absence"],
                                n_lesions=facts[o]["n_lesions"], mentioned=False,
                                lesion_size_mm=facts[o].get("lesion_size_mm", 0.0)) for o in ORGANS}
    return Anatomy(cfg, body, organs, tuple((sh, t, c) for sh, t, c, _ in background), lesions, findings, warp,
                   texture_soft, texture_fine, float(enhancement), noise_seed)


def _gastric_conduit(path: np.ndarray, s: float) -> OrganSpec:
    """The stomach after an esophagectomy: a tube from the pylorus up through the hiatus along the
    esophageal course (painted anywhere in the trunk, chest included), with fluid and gas inside."""
    conduit = Tube.smooth(path, np.full(len(path), 15.0) * s)
    lumen = Tube(conduit.points, np.maximum(conduit.radii - 5.0, 1.0))
    level = float(np.mean(conduit.points[:, 1])) + 0.3 * float(np.mean(conduit.radii))
    return OrganSpec("stomach", conduit, "stomach_wall", ((lumen, "fluid"), (Intersection(lumen, HalfSpace(1, level)), "gas")),
                     clip="body", anchor=path[len(path) // 2])


#: Gap of fat (mm) kept between an adrenal and the liver or spleen, and between the right adrenal
#: and the IVC / the left adrenal and the aorta.
_ADRENAL_FAT_MM = 6.0


def _along(ctrl: np.ndarray, radii: np.ndarray, z: float) -> tuple[float, float, float]:
    """x, y and radius of a vessel given by control points (inferior first) at height z (linear)."""
    zs = ctrl[:, 2]
    return (float(np.interp(z, zs, ctrl[:, 0])), float(np.interp(z, zs, ctrl[:, 1])), float(np.interp(z, zs, radii)))


def _add_adrenals(organs: dict[str, OrganSpec], draws: Mapping[str, tuple[float, np.ndarray]],
                  kidney_poles: Mapping[str, np.ndarray], ivc_ctrl: np.ndarray, ivc_r: np.ndarray,
                  ao_ctrl: np.ndarray, ao_r: np.ndarray, place: _Placer) -> None:
    """Place both adrenals (inverted-Y limbs, apex anterior) in their retroperitoneal fat.

    Right: in the retrocaval fat, directly behind the IVC and a little lateral to it, above and
    medial to the upper pole of the right kidney, its medial limb running back along the right crus
    and its lateral limb behind the bare area of the liver. Left: lateral to the aorta and the left
    crus, in front of and medial to the upper pole of the left kidney, behind the pancreas and
    splenic vein. A fat halo around each is carved out of the liver, spleen and stomach, whether the
    gland is present or not (its absence must not leave an outline), so the gland is surrounded by
    fat as on CT rather than buried in the liver.

    Args:
        organs: the organs so far; the adrenals are added and the liver, spleen and stomach carved.
        draws: adrenal -> (size factor, 3D jitter) drawn earlier from the case's stream.
        kidney_poles: kidney -> centre of its upper pole.
        ivc_ctrl, ivc_r: IVC control points (inferior first) and radii.
        ao_ctrl, ao_r: aorta control points (superior first) and radii.
        place: the case's atlas placement.
    """
    halos = []
    for organ, kidney, sign in (("adrenal_gland_right", "kidney_right", 1.0), ("adrenal_gland_left", "kidney_left", -1.0)):
        s, j = draws[organ]
        pole = kidney_poles[kidney]
        limb_r = 3.8 * s
        if sign > 0:
            z = max(float(place((0.0, 0.0, 56.0))[2] + j[2]), float(pole[2]) + 12.0)
            vx, vy, vr = _along(ivc_ctrl, ivc_r, z)
            apex = np.array([vx + 12.0 + j[0], vy - vr - _ADRENAL_FAT_MM - limb_r - abs(j[1]), z])
            medial_end = apex + np.array([-1.0, -12.0, -18.0]) * s
            lateral_end = apex + np.array([11.0, -10.0, -15.0]) * s
        else:
            z = float(pole[2]) + 6.0 + j[2]
            order = np.argsort(ao_ctrl[:, 2])
            vx, vy, vr = _along(ao_ctrl[order], ao_r[order], z)
            # in front of the upper pole even when the kidney lies more anteriorly than usual
            apex_y = max(vy - 14.0 + j[1], float(pole[1]) + 16.0)
            apex = np.array([vx - vr - _ADRENAL_FAT_MM - limb_r - 6.0 - abs(j[0]), apex_y, z])
            medial_end = apex + np.array([3.0, -10.0, -20.0]) * s
            lateral_end = apex + np.array([-10.0, -9.0, -16.0]) * s
        limbs = (Tube.smooth([apex, medial_end], [limb_r, limb_r * 0.8]), Tube.smooth([apex, lateral_end], [limb_r, limb_r * 0.8]))
        organs[organ] = OrganSpec(organ, Union(limbs), "adrenal", anchor=apex + (medial_end - apex) * 0.3)
        pad = _ADRENAL_FAT_MM + limb_r
        halos += [Tube(t.points, t.radii + pad) for t in limbs]
        halos.append(Ellipsoid(apex, np.full(3, pad + limb_r)))
        if sign < 0:
            # A distended stomach or a large spleen is flattened against the left adrenal's fat
            # rather than pocketed around it: a broad, shallow dent.
            halos.append(Ellipsoid(apex + np.array([0.0, -20.0, -10.0]), np.array([28.0, 26.0, 34.0])))
    halo = Union(tuple(halos))
    for neighbour in ("liver", "spleen", "stomach"):
        spec = organs[neighbour]
        organs[neighbour] = dataclasses.replace(spec, shape=Difference(spec.shape, halo))


def _place_lesions(rng, cfg: PhantomConfig, organs: dict[str, OrganSpec], facts: dict, body: Body):
    """Put each lesion where it fits inside its organ and no later-painted organ covers it."""
    tries_per_size, shrink, min_radius = 60, 0.8, 2.5
    lesions: list[Lesion] = []
    order = [o for o in PAINT_ORDER if o in organs]
    for organ in order:
        n = facts[organ]["n_lesions"]
        if n == 0:
            continue
        spec = organs[organ]
        later = [organs[o].shape for o in order[order.index(organ) + 1:]]
        lo, hi = spec.shape.bounds()
        lo_h, hi_h = LESION_HU.get(organ, _DEFAULT_LESION_HU)
        placed, sizes = [], []
        for _ in range(n):
            radius = rng.uniform(*cfg.lesion_diameter_mm) / 2
            center = None
            while center is None and radius >= min_radius:
                cand = rng.uniform(lo, hi, size=(tries_per_size, 3))
                if organ in _NODULAR_ORGANS:  # a nodule sits on the limb and bulges out of it
                    ok = spec.shape.contains(cand, 1.0)
                else:
                    ok = spec.shape.contains(cand, 0.8)
                    for axis in range(3):
                        for sgn in (-1, 1):
                            off = np.zeros(3)
                            off[axis] = sgn * radius
                            ok &= spec.shape.contains(cand + off, 0.95)
                for other in later:
                    ok &= ~other.contains(cand, 1.3)
                r = _regions(body, cand[:, 0], cand[:, 1], cand[:, 2])
                ok &= r["abdomen"] if spec.clip == "abdomen" else r["body"]
                for prev in placed:  # lesions do not overlap
                    ok &= np.linalg.norm(cand - prev.center, axis=1) > radius + prev.radius
                idx = np.flatnonzero(ok)
                if idx.size:
                    center = cand[idx[0]]
                else:
                    radius *= shrink
            if center is None:
                continue
            placed.append(Lesion(organ, center, float(radius), float(rng.uniform(lo_h, hi_h))))
            sizes.append(2 * radius)
        if organ in _NODULAR_ORGANS and placed:
            nodules = tuple(Ellipsoid(les.center, np.full(3, les.radius)) for les in placed)
            organs[organ] = dataclasses.replace(spec, shape=Union((spec.shape, *nodules)))
        facts[organ]["n_lesions"] = len(placed)
        facts[organ]["lesion_size_mm"] = round(float(max(sizes)), 1) if sizes else 0.0
        lesions.extend(placed)
    return tuple(lesions), facts


# ============================================================================================
# Rendering
# ============================================================================================
@dataclass
class _Canvas:
    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    pad: float
    wx: np.ndarray
    wy: np.ndarray
    wz: np.ndarray

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        out = []
        for axis, ax in enumerate((self.xs, self.ys, self.zs)):
            i0 = int(np.searchsorted(ax, lo[axis] - self.pad, "left"))
            i1 = int(np.searchsorted(ax, hi[axis] + self.pad, "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def at(self, sl):
        return self.wx[sl], self.wy[sl], self.wz[sl]


def render(
    anatomy: Anatomy,
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    blur_sigma_vox: Sequence[float],
    noise_rng: np.random.Generator,
    imaged_z: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Sample the anatomy at the voxel centres ``xs x ys x zs`` (world mm, RAS).

    Args:
        anatomy: from :func:`sample_anatomy`.
        xs, ys, zs: 1D increasing voxel-centre coordinates; ``zs`` of length 1 renders one plane.
        blur_sigma_vox: Gaussian blur per axis in voxels (0 along an axis = no blur).
        noise_rng: generator of the grid-dependent image noise.
        imaged_z: boolean per plane of ``zs``; the planes marked false lie outside a limited
            scan's range and come out as -1024 HU (what scanners write outside the field of view,
            without noise) and label 0. ``None``: every plane is imaged.

    Returns:
        ``(hu, label, lesion_voxels)``: float32 HU of shape (X, Y, Z), uint8 BTCV labels of the same
        shape, and per lesion of ``anatomy.lesions`` the number of imaged voxels painted with its
        intensity.
    """
    from scipy import ndimage

    cfg = anatomy.config
    shape = (len(xs), len(ys), len(zs))
    f32 = np.float32
    gx, gy, gz = (a.astype(f32) for a in np.meshgrid(xs, ys, zs, indexing="ij"))
    amp = f32(cfg.deformation_mm)
    wx = gx + amp * anatomy.warp[0](gx, gy, gz)
    wy = gy + amp * anatomy.warp[1](gx, gy, gz)
    wz = gz + amp * anatomy.warp[2](gx, gy, gz)
    del gx, gy, gz
    canvas = _Canvas(np.asarray(xs), np.asarray(ys), np.asarray(zs), cfg.deformation_mm + 1.0, wx, wy, wz)
    tex = {"soft": anatomy.texture_soft(wx, wy, wz), "fine": anatomy.texture_fine(wx, wy, wz)}
    reg = _regions(anatomy.body, wx, wy, wz)
    reg["bowel"] = reg["abdomen"] & ~reg["psoas"]

    def tissue_hu(tissue: str, sl, mask) -> np.ndarray:
        base, amp_t, kind, enhancing = TISSUES[tissue]
        if enhancing:
            base = _ENHANCEMENT_PIVOT_HU + anatomy.enhancement * (base - _ENHANCEMENT_PIVOT_HU)
        t = tex[kind] if sl is None else tex[kind][sl]
        return f32(base) + f32(amp_t) * t[mask]

    hu = np.full(shape, TISSUES["air"][0], dtype=f32)
    label = np.zeros(shape, dtype=np.uint8)

    def fill(mask: np.ndarray, tissue: str) -> None:
        hu[mask] = tissue_hu(tissue, None, mask)

    # Trunk: subcutaneous fat, muscle wall, visceral fat.
    fill(reg["outer"], "fat")
    fill(reg["muscle"], "muscle")
    fill(reg["cavity"], "visceral_fat")
    _paint_ribs(anatomy.body, reg, wx, wy, wz, fill)
    fill(reg["lung"], "lung")
    body = anatomy.body
    heart = Ellipsoid(np.array([-22.0, body.spine_y + 92.0, body.dome_left_z + 62.0]), np.array([68.0, 52.0, 55.0]),
                      rotation(z_deg=-25), 2.0)
    fill(reg["cavity"] & (heart.level(wx, wy, wz) < 1) & ~reg["spine"], "heart")
    _paint_spine(body, reg, wx, wy, wz, fill)

    def paint_shape(shape_: Shape, tissue: str, clip: np.ndarray | None, organ_id: int | None = None,
                    within: int | None = None) -> np.ndarray | None:
        sl = canvas.box(*shape_.bounds())
        if sl is None:
            return None
        mask = shape_.level(*canvas.at(sl)) < 1
        if clip is not None:
            mask &= clip[sl]
        if within is not None:
            mask &= label[sl] == within
        if not mask.any():
            return None
        sub_hu = hu[sl]
        sub_hu[mask] = tissue_hu(tissue, sl, mask)
        if organ_id is not None:
            label[sl][mask] = organ_id
        return mask

    for shape_, tissue, clip in anatomy.background:
        paint_shape(shape_, tissue, reg[clip], organ_id=0)

    ids = load_label_map(LABEL_MAP_NAME).labels
    for name in PAINT_ORDER:
        spec = anatomy.organs.get(name)
        if spec is None:
            continue
        paint_shape(spec.shape, spec.tissue, reg[spec.clip], organ_id=ids[name])
        for inner_shape, tissue in spec.inner:
            paint_shape(inner_shape, tissue, None, within=ids[name])

    lesion_voxels = []
    for lesion in anatomy.lesions:
        sphere = Ellipsoid(lesion.center, np.full(3, lesion.radius))
        sl = canvas.box(*sphere.bounds())
        if sl is None:
            lesion_voxels.append(0)
            continue
        mask = (sphere.level(*canvas.at(sl)) < 1) & (label[sl] == ids[lesion.organ])
        hu[sl][mask] = f32(lesion.hu) + f32(_LESION_TEXTURE_HU) * tex["soft"][sl][mask]
        seen = mask if imaged_z is None else mask & imaged_z[sl[2]][None, None, :]
        lesion_voxels.append(int(seen.sum()))

    # An organ thinner than a voxel may fall between voxel centres; give it the voxel at its anchor
    # so that label presence always equals finding presence.
    if len(zs) > 1:
        counts = np.bincount(label.ravel(), minlength=len(ids))
        for name, spec in anatomy.organs.items():
            if counts[ids[name]] == 0:
                idx = [int(np.argmin(np.abs(ax - spec.anchor[i]))) for i, ax in enumerate((xs, ys, zs))]
                inside = all(ax[0] - 0.5 * (ax[1] - ax[0]) <= spec.anchor[i] <= ax[-1] + 0.5 * (ax[1] - ax[0])
                             for i, ax in enumerate((xs, ys, zs)))
                if not inside:
                    raise ValueError(
                        f"organ {name!r} (anchor at {np.round(spec.anchor, 1).tolist()} mm) lies outside the field of "
                        f"view x [{xs[0]:.0f}, {xs[-1]:.0f}], y [{ys[0]:.0f}, {ys[-1]:.0f}], z [{zs[0]:.0f}, {zs[-1]:.0f}] mm: "
                        f"increase shape or spacing"
                    )
                label[tuple(idx)] = ids[name]
                hu[tuple(idx)] = TISSUES[spec.tissue][0]

    if any(s > 0 for s in blur_sigma_vox):
        hu = ndimage.gaussian_filter(hu, sigma=list(blur_sigma_vox), mode="nearest")
    if cfg.noise_hu > 0:
        hu += noise_rng.normal(0.0, cfg.noise_hu, size=shape).astype(f32)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    if imaged_z is not None:
        # Blanked after blur and noise: the edge of a scan range is sharp, and nothing is measured beyond it.
        hu[:, :, ~imaged_z] = -1024.0
        label[:, :, ~imaged_z] = 0
    return hu, label, lesion_voxels


def _paint_ribs(body: Body, reg, x, y, z, fill) -> None:
    """Rib cross-sections in the outer muscle wall above the costal margin."""
    f = np.float32
    theta = np.arctan2(y - f(body.spine_y * 0.3), x)
    costal = f(body.z0 + 12) + f(48) * np.clip(np.sin(theta), 0, None) - f(30) * np.abs(np.cos(theta))
    mw = body.half_width - body.fat_lat
    ring = reg["muscle"] & ~reg["cavity"] & (_rho(x, y, mw - 2.0, body.half_depth_ant - body.fat_ant - 2.0,
                                                  body.half_depth_post - body.fat_post - 2.0, 2.2) > 0.92)
    # Ribs run obliquely downwards to the front, so a plane cuts each one as a short arc.
    phase = ((z + f(0.7) * (y - f(body.spine_y))) / f(26.0)) % f(1.0)
    ribs = ring & (z > costal) & (phase < 0.3) & ~((np.abs(x) < 30) & (y > 0)) & ~reg["spine"]
    fill(ribs, "rib")


def _paint_spine(body: Body, reg, x, y, z, fill) -> None:
    """Paraspinal muscles, psoas, vertebral bodies with discs, canal and posterior elements."""
    f = np.float32
    sy = f(body.spine_y)
    # Erector spinae either side of the spinous process, quadratus lumborum lateral to them.
    para = (((np.abs(x) - f(30)) / f(30)) ** 2 + ((y - (sy - f(42))) / f(26)) ** 2) < 1
    quadratus = (((np.abs(x) - f(62)) / f(16)) ** 2 + ((y - (sy - f(22))) / f(12)) ** 2) < 1
    fill((para | quadratus | reg["spine"]) & reg["outer"], "muscle")
    fill(reg["psoas"], "muscle")
    period, disc = f(34.0), f(7.0)
    zp = (z - f(body.z0)) % period
    rho_vb = np.sqrt((x / f(22)) ** 2 + ((y - sy) / f(18)) ** 2)
    is_disc = zp < disc
    fill((rho_vb < 1) & ~is_disc, "bone_cortex")
    fill((rho_vb < 0.8) & ~is_disc, "bone_marrow")
    fill((rho_vb < 1) & is_disc, "disc")
    rc = np.sqrt(x**2 + ((y - (sy - f(28))) / f(0.9)) ** 2)
    arch = (rc < 16) & (rc >= 9) & (y < sy - f(14)) & ~is_disc
    spinous = (np.abs(x) < 3.5) & (y < sy - f(36)) & (y > sy - f(58)) & (zp > disc) & (zp < period * f(0.6))
    transverse = (np.abs(x) < 32) & (np.abs(y - (sy - f(24))) < 3.0) & (zp > period * f(0.35)) & (zp < period * f(0.5))
    fill(arch | spinous | transverse, "bone_cortex")
    fill(rc < 9, "csf")


# ============================================================================================
# Cases
# ============================================================================================
@dataclass(frozen=True)
class PhantomCase:
    """One rendered image with its labels and report.

    Attributes:
        case_id: ``phantom_0003`` (3D) or ``phantom_0003_s05`` (2D slice 5 of case 3).
        image: HU, float32, shape (X, Y, Z) or (X, Y) for a slice; axis 0 runs to the patient's
            Right, axis 1 Anterior, axis 2 Superior (RAS).
        label: uint8 BTCV ids, same shape.
        affine: 4x4 voxel -> world (mm, RAS) matrix.
        findings: organ -> :class:`OrganFinding` as the report states it (``denied``: the finding
            kinds its sentences deny).
        report: the report text.
        tags: organ -> 1 / 0 / -1.
        z_mm: the slice's craniocaudal position (2D only).
        scan_range_mm: (low, high) craniocaudal extent of a limited-range 3D scan, in world mm;
            ``None`` for a scan of the whole volume and for slices.
        finding_tags: finding tag -> 1 stated / 0 denied / -1 not said, for every finding of
            :data:`mosmoskit.reports.findings.FINDING_TABLE`
            (:func:`~mosmoskit.data.phantom_reports.finding_tags_from_findings`).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    findings: dict[str, OrganFinding]
    report: str
    tags: dict[str, int]
    z_mm: float | None = None
    scan_range_mm: tuple[float, float] | None = None
    finding_tags: dict[str, int] = field(default_factory=dict)


def _grid_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Voxel-centre coordinates, centred on the world origin."""
    return [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]


def volume_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of a grid of ``shape`` voxels of ``spacing`` mm centred on the world origin."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return aff


def slice_affine(shape: Sequence[int], spacing: Sequence[float], z_mm: float) -> np.ndarray:
    """RAS affine of one axial plane at height ``z_mm`` (nominal thickness = in-plane spacing)."""
    aff = volume_affine((*shape, 1), (*spacing, float(spacing[0])))
    aff[2, 3] = float(z_mm)
    return aff


def _validate_grid(shape: Sequence[int], spacing: Sequence[float], spatial_dims: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if len(shape) != spatial_dims:
        raise ValueError(f"shape must have {spatial_dims} values for spatial_dims={spatial_dims}, got {tuple(shape)!r}")
    if len(spacing) != spatial_dims:
        raise ValueError(f"spacing must have {spatial_dims} values for spatial_dims={spatial_dims}, got {tuple(spacing)!r}")
    if any(int(n) != n or n < 2 for n in shape):
        raise ValueError(f"shape values must be integers >= 2, got {tuple(shape)!r}")
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing values must be positive (mm), got {tuple(spacing)!r}")
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)


def _visible_lesions(anatomy: Anatomy, lesion_vox: Sequence[int], organ: str, f: OrganFinding) -> OrganFinding:
    """Set ``n_lesions``/``lesion_size_mm`` to the lesions of ``organ`` that cover a voxel."""
    diam = [2 * les.radius for les, n in zip(anatomy.lesions, lesion_vox) if les.organ == organ and n > 0]
    if not f.present:
        return f
    return dataclasses.replace(f, n_lesions=len(diam), lesion_size_mm=round(max(diam), 1) if diam else 0.0)


def _mention(rng: np.random.Generator, cfg: PhantomConfig, f: OrganFinding) -> OrganFinding:
    if not f.present:
        p = {"resected": cfg.mention_prob_absent, "congenital": cfg.mention_prob_absent,
             "out_of_plane": cfg.out_of_plane_mention_prob, "out_of_range": cfg.out_of_range_mention_prob}[str(f.absence)]
    else:
        p = cfg.mention_prob_abnormal if (f.enlarged or f.atrophic or f.n_lesions) else cfg.mention_prob
    return dataclasses.replace(f, mentioned=bool(rng.random() < p))


def _case_rng(seed: int, index: int) -> np.random.Generator:
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed!r}, index={index!r}")
    return np.random.default_rng([int(seed), int(index)])


def _draw_scan_range(
    rng: np.random.Generator, cfg: PhantomConfig, anatomy: Anatomy, zs: np.ndarray
) -> tuple[float, float] | None:
    """The craniocaudal range (mm) of a limited scan on the planes ``zs``, or ``None`` for a whole-volume scan.

    Nothing is drawn when ``scan_range_prob`` is 0, so cohorts without limited scans keep the
    random stream (and the bytes) they had before the option existed. Otherwise three numbers are
    always drawn, limited or not, so a case's later draws do not depend on the outcome.
    """
    if cfg.scan_range_prob <= 0:
        return None
    limited = rng.random() < cfg.scan_range_prob
    from_top = rng.random() < 0.5
    cut = round(float(rng.uniform(*anatomy.organ_z_range())), 1)
    if not limited:
        return None
    half = 0.5 * float(zs[1] - zs[0]) if len(zs) > 1 else 0.0
    top, bottom = round(float(zs[-1]) + half, 1), round(float(zs[0]) - half, 1)
    return (cut, top) if from_top else (bottom, cut)


def _range_findings(
    anatomy: Anatomy, label: np.ndarray, lesion_vox: Sequence[int], scan_range: tuple[float, float], cfg: PhantomConfig
) -> tuple[dict[str, OrganFinding], set[str]]:
    """Findings of a limited-range scan before the mention draw, and the organs to leave unmentioned.

    An organ of the patient with no voxel in the range is absent from the image (``out_of_range``);
    one that crosses the range's edge with fewer than ``slice_min_pixels`` voxels inside is a sliver
    that no report would honestly call present or missing, so it is returned unmentioned and in
    the second set (no mention draw); lesions count only if imaged.
    """
    ids = load_label_map(LABEL_MAP_NAME).labels
    counts = np.bincount(label.ravel(), minlength=max(ids.values()) + 1)
    out, slivers = {}, set()
    for organ, f in anatomy.findings.items():
        if not f.present:
            out[organ] = f
            continue
        n = int(counts[ids[organ]])
        lo, hi = anatomy.organs[organ].shape.bounds()
        crosses_edge = lo[2] < scan_range[0] or hi[2] > scan_range[1]
        if n == 0:
            out[organ] = OrganFinding(present=False, absence="out_of_range")
        elif n < cfg.slice_min_pixels and crosses_edge:
            out[organ] = OrganFinding(present=True, enlarged=f.enlarged, atrophic=f.atrophic, mentioned=False)
            slivers.add(organ)
        else:
            out[organ] = _visible_lesions(anatomy, lesion_vox, organ, f)
    return out, slivers


def make_case(
    seed: int,
    index: int,
    shape: Sequence[int] = DEFAULT_SHAPE_3D,
    spacing: Sequence[float] = DEFAULT_SPACING_3D,
    config: PhantomConfig | None = None,
) -> PhantomCase:
    """Generate one 3D case in memory.

    Args:
        seed: cohort seed; with ``index`` it seeds the case's only generator.
        index: case number (``case_id`` is ``phantom_{index:04d}``).
        shape: (X, Y, Z) voxels.
        spacing: (X, Y, Z) voxel size in mm.
        config: generator settings; defaults when ``None``.

    Returns:
        A :class:`PhantomCase` whose label presence equals its findings' presence. ``n_lesions``
        counts the lesions that cover at least one voxel on this grid. With
        ``config.scan_range_prob > 0`` some cases are limited-range scans (``scan_range_mm`` set):
        organs wholly outside the range are absent from the image and, when mentioned, reported
        as "not included in the field of view" (tag 0).

    Raises:
        ValueError: bad ``shape``/``spacing``, or a field of view too small to hold an organ.
    """
    shape, spacing = _validate_grid(shape, spacing, 3)
    cfg = config or PhantomConfig()
    rng = _case_rng(seed, index)
    anatomy = sample_anatomy(rng, cfg)
    axes = _grid_axes(shape, spacing)
    blur = [cfg.blur_mm / s for s in spacing]
    scan_range = _draw_scan_range(rng, cfg, anatomy, axes[2])
    imaged_z = None
    if scan_range is not None:
        imaged_z = (axes[2] >= scan_range[0]) & (axes[2] <= scan_range[1])
        if not imaged_z.any():  # a range thinner than a slice still images its nearest plane
            imaged_z[int(np.argmin(np.abs(axes[2] - sum(scan_range) / 2)))] = True
    hu, label, lesion_vox = render(anatomy, *axes, blur, np.random.default_rng(anatomy.noise_seed), imaged_z)
    if scan_range is None:
        seen = {organ: _visible_lesions(anatomy, lesion_vox, organ, f) for organ, f in anatomy.findings.items()}
        slivers: set[str] = set()
    else:
        seen, slivers = _range_findings(anatomy, label, lesion_vox, scan_range, cfg)
    findings = {organ: f if organ in slivers else _mention(rng, cfg, f) for organ, f in seen.items()}
    present = load_label_map(LABEL_MAP_NAME).present(label, source=f"phantom case {index}")
    for organ, f in findings.items():
        if present[organ] != f.present:  # the generator's own invariant; a failure here is a bug
            raise AssertionError(f"phantom case {index}: label presence of {organ} is {present[organ]} but finding says {f.present}")
    written = compose_report(findings, rng, cfg.report, scope="volume")
    return PhantomCase(f"phantom_{index:04d}", hu, label, volume_affine(shape, spacing), written.findings, written.text,
                       tags_from_findings(written.findings), scan_range_mm=scan_range,
                       finding_tags=finding_tags_from_findings(written.findings))


def make_slices(
    seed: int,
    index: int,
    slices_per_case: int = 8,
    shape: Sequence[int] = DEFAULT_SHAPE_2D,
    spacing: Sequence[float] = DEFAULT_SPACING_2D,
    config: PhantomConfig | None = None,
) -> list[PhantomCase]:
    """Generate ``slices_per_case`` axial 2D images of one case, each with its own report.

    The planes are spread evenly (with a small random offset) over the craniocaudal range of the
    solid organs and rendered directly at their height.

    Slice-level findings and tags, for each BTCV organ:

    * visible: at least ``config.slice_min_pixels`` pixels of the organ in this slice. A visible
      organ is ``present``; it is mentioned with ``mention_prob`` (``mention_prob_abnormal`` if the
      case's organ is enlarged or atrophic or a lesion shows in this slice); tag 1 if mentioned,
      else -1. ``enlarged``/``atrophic`` are the case's findings; ``n_lesions`` counts lesions with
      pixels in this slice.
    * absent from the whole case: ``absence="resected"`` (surgery) or ``"congenital"``, mentioned
      with ``mention_prob_absent`` (tag 0), else tag -1. Such absences are reportable on every slice.
    * in the case but with no pixel in this slice: ``absence="out_of_plane"``, mentioned as "not
      included at this level" with ``out_of_plane_mention_prob`` (tag 0), else tag -1.
    * 1 to ``slice_min_pixels - 1`` pixels (a sliver): never mentioned (tag -1), since neither
      "present" nor "not included" would be honest.

    Args:
        seed, index: as in :func:`make_case`.
        slices_per_case: number of axial planes.
        shape: (X, Y) pixels; spacing: (X, Y) mm.
        config: generator settings.

    Returns:
        One :class:`PhantomCase` per slice (image and label of shape (X, Y)).

    Raises:
        ValueError: bad ``shape``, ``spacing`` or ``slices_per_case``.
    """
    shape, spacing = _validate_grid(shape, spacing, 2)
    if int(slices_per_case) != slices_per_case or slices_per_case < 1:
        raise ValueError(f"slices_per_case must be an integer >= 1, got {slices_per_case!r}")
    cfg = config or PhantomConfig()
    rng = _case_rng(seed, index)
    anatomy = sample_anatomy(rng, cfg)
    z_lo, z_hi = anatomy.organ_z_range()
    step = (z_hi - z_lo) / slices_per_case
    offsets = rng.uniform(-0.3, 0.3, size=slices_per_case)
    noise = np.random.default_rng(anatomy.noise_seed)
    xs, ys = _grid_axes(shape, spacing)
    blur = [cfg.blur_mm / spacing[0], cfg.blur_mm / spacing[1], 0.0]
    ids = load_label_map(LABEL_MAP_NAME).labels
    out = []
    for k in range(slices_per_case):
        z = round(float(z_lo + (k + 0.5 + offsets[k]) * step), 2)
        hu, label, lesion_vox = render(anatomy, xs, ys, np.array([z]), blur, noise)
        hu, label = hu[:, :, 0], label[:, :, 0]
        counts = np.bincount(label.ravel(), minlength=len(ids))
        findings = {}
        for organ, case_f in anatomy.findings.items():
            n_pix = int(counts[ids[organ]])
            if not case_f.present:
                f = OrganFinding(present=False, absence=case_f.absence, mentioned=False)
            elif n_pix >= cfg.slice_min_pixels:
                f = _visible_lesions(anatomy, lesion_vox, organ,
                                     OrganFinding(present=True, enlarged=case_f.enlarged, atrophic=case_f.atrophic))
            elif n_pix == 0:
                f = OrganFinding(present=False, absence="out_of_plane", mentioned=False)
            else:
                findings[organ] = OrganFinding(present=True, mentioned=False)
                continue
            findings[organ] = _mention(rng, cfg, f)
        written = compose_report(findings, rng, cfg.report, scope="slice")
        out.append(PhantomCase(f"phantom_{index:04d}_s{k:02d}", hu, label, slice_affine(shape, spacing, z),
                               written.findings, written.text, tags_from_findings(written.findings), z_mm=z,
                               finding_tags=finding_tags_from_findings(written.findings)))
    return out


# ============================================================================================
# Writing a cohort
# ============================================================================================
def nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file as bytes, reproducible byte for byte (gzip mtime 0, no file name).

    Args:
        array: the voxel data, (X, Y[, Z]); its dtype is kept.
        affine: 4x4 voxel -> world (mm, RAS); written to both qform and sform (code 1, scanner).
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


_IMAGE_DTYPES = ("int16", "float32")


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    spatial_dims: int = 3,
    config: PhantomConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    slices_per_case: int = 8,
    image_dtype: str = "int16",
) -> Path:
    """Write a phantom cohort in the layout of a real data set.

    Layout::

        out_dir/
          imagesTr/phantom_0000.nii.gz   HU (int16 or float32), RAS affine, spacing in the header
          labelsTr/phantom_0000.nii.gz   uint8 BTCV ids
          dataset.json                   MSD-style, plus spatial_dims, label_map, generator
          label_map.json                 the BTCV label map
          reports.jsonl                  one JSON per image: case_id, image, label, report, tags,
                                         finding_tags, findings (+ parent_case, slice_index, z_mm
                                         in 2D)

    In 2D mode each case gives ``slices_per_case`` files ``phantom_0000_s00.nii.gz`` ... holding
    2D NIfTIs of shape (X, Y); see :func:`make_slices` for slice-level tags.

    Args:
        out_dir: the folder; must be empty or absent unless ``overwrite``.
        n: number of cases (patients), >= 1.
        seed: cohort seed; case ``i`` uses the generator seeded by ``(seed, i)``.
        shape: voxels per axis; default (96, 96, 64) in 3D, (128, 128) in 2D.
        spacing: mm per axis; default (4, 4, 5) in 3D, (3, 3) in 2D.
        spatial_dims: 3 for volumes, 2 for axial slices.
        config: generator settings (stored in ``dataset.json``).
        overwrite: allow a non-empty ``out_dir``; stale ``phantom_*`` files of an earlier cohort
            in ``imagesTr``/``labelsTr`` are removed, nothing else is touched.
        progress: show a progress bar.
        slices_per_case: (2D) axial slices per case.
        image_dtype: ``"int16"`` (rounded HU, like scanners write) or ``"float32"``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``n < 1``, bad shape/spacing/dims/dtype (the message names the parameter).
        FileExistsError: ``out_dir`` holds files and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    from mosmoskit import __version__
    from mosmoskit.io import atomic_write_bytes, atomic_write_text, ensure_new_dir

    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n (number of cases) must be an integer >= 1, got {n!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if image_dtype not in _IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {list(_IMAGE_DTYPES)}, got {image_dtype!r}")
    if shape is None:
        shape = DEFAULT_SHAPE_3D if spatial_dims == 3 else DEFAULT_SHAPE_2D
    if spacing is None:
        spacing = DEFAULT_SPACING_3D if spatial_dims == 3 else DEFAULT_SPACING_2D
    shape, spacing = _validate_grid(shape, spacing, spatial_dims)
    if spatial_dims == 2 and (int(slices_per_case) != slices_per_case or slices_per_case < 1):
        raise ValueError(f"slices_per_case must be an integer >= 1, got {slices_per_case!r}")
    cfg = config or PhantomConfig()
    root = ensure_new_dir(out_dir, overwrite=overwrite)
    label_map = load_label_map(LABEL_MAP_NAME)
    written: set[str] = set()
    rows: list[dict[str, Any]] = []
    for index in tqdm(range(int(n)), desc="phantoms", unit="case", disable=not progress):
        if spatial_dims == 3:
            cases = [make_case(seed, index, shape, spacing, cfg)]
        else:
            cases = make_slices(seed, index, slices_per_case, shape, spacing, cfg)
        for k, case in enumerate(cases):
            name = f"{case.case_id}.nii.gz"
            image = np.rint(case.image).astype(np.int16) if image_dtype == "int16" else case.image.astype(np.float32)
            atomic_write_bytes(root / "imagesTr" / name, nifti_gz_bytes(image, case.affine))
            atomic_write_bytes(root / "labelsTr" / name, nifti_gz_bytes(case.label.astype(np.uint8), case.affine))
            written.add(name)
            row: dict[str, Any] = {
                "case_id": case.case_id, "image": f"imagesTr/{name}", "label": f"labelsTr/{name}",
                "report": case.report, "tags": case.tags, "finding_tags": case.finding_tags,
                "findings": {o: f.to_dict() for o, f in case.findings.items()},
            }
            if spatial_dims == 2:
                row.update(parent_case=f"phantom_{index:04d}", slice_index=k, z_mm=case.z_mm)
            elif case.scan_range_mm is not None:
                row["scan_range_mm"] = list(case.scan_range_mm)
            rows.append(row)
    if overwrite:
        for sub in ("imagesTr", "labelsTr"):
            for stale in sorted((root / sub).glob("phantom_*.nii.gz")):
                if stale.name not in written:
                    stale.unlink()

    dataset = {
        "name": "mosmos_phantom",
        "description": (
            "Synthetic CT-like abdominal phantoms with the 13 BTCV organs and free-text reports, "
            f"generated by mosmoskit {__version__} ({'axial 2D slices' if spatial_dims == 2 else '3D volumes'})."
        ),
        "reference": "mosmoskit.data.phantom",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": f"{spatial_dims}D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for name, i in label_map.labels.items()},
        "numTraining": len(rows),
        "numTest": 0,
        "training": [{"image": f"./{r['image']}", "label": f"./{r['label']}"} for r in rows],
        "test": [],
        "spatial_dims": spatial_dims,
        "label_map": LABEL_MAP_NAME,
        "generator": {
            "seed": int(seed), "n_cases": int(n), "shape": list(shape), "spacing": list(spacing),
            "slices_per_case": int(slices_per_case) if spatial_dims == 2 else None,
            "image_dtype": image_dtype, "config": cfg.to_dict(), "kit_version": __version__,
        },
    }
    atomic_write_text(root / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    label_map.save(root / "label_map.json")
    atomic_write_text(root / "reports.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return root


def ensure_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    spatial_dims: int = 3,
    slices_per_case: int = 8,
    progress: bool = True,
    config: PhantomConfig | None = None,
) -> Path:
    """Reuse the cohort in ``out_dir`` if it was generated with these settings, else generate it.

    The settings compared are those ``dataset.json`` records under ``generator`` (seed, number of
    patients, grid, spacing, slices per patient, generator config) and ``spatial_dims``; a recorded
    config is read with :meth:`PhantomConfig.from_dict`, so a cohort written before a config field
    existed still matches that field's default. Anything else in the folder
    (a cohort of other settings, a broken ``dataset.json``) is replaced, so a folder never
    silently holds another cohort than the caller asked for.

    Args:
        out_dir, n, seed, shape, spacing, spatial_dims, slices_per_case, progress, config: as in
            :func:`generate_cohort` (``None`` shape/spacing: the defaults for ``spatial_dims``;
            ``None`` config: the defaults).

    Returns:
        ``out_dir``.
    """
    three = spatial_dims == 3
    shape = tuple(int(v) for v in (shape or (DEFAULT_SHAPE_3D if three else DEFAULT_SHAPE_2D)))
    spacing = tuple(float(v) for v in (spacing or (DEFAULT_SPACING_3D if three else DEFAULT_SPACING_2D)))
    cfg = config or PhantomConfig()
    wanted = {"seed": int(seed), "n_cases": int(n), "shape": list(shape), "spacing": list(spacing),
              "slices_per_case": int(slices_per_case) if spatial_dims == 2 else None}
    root = Path(out_dir)
    dataset_json = root / "dataset.json"
    if dataset_json.is_file():
        try:
            recorded = json.loads(dataset_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            recorded = {}
        generator = recorded.get("generator") or {}
        if (recorded.get("spatial_dims") == spatial_dims and all(generator.get(k) == v for k, v in wanted.items())
                and _recorded_config(generator) == cfg):
            return root
    return generate_cohort(root, n=n, seed=seed, shape=shape, spacing=spacing, spatial_dims=spatial_dims,
                           slices_per_case=slices_per_case, progress=progress, overwrite=True, config=cfg)


def _recorded_config(generator: Mapping[str, Any]) -> PhantomConfig | None:
    """The generator config a ``dataset.json`` records, or ``None`` if it is missing or unreadable."""
    try:
        return PhantomConfig.from_dict(generator["config"])
    except (KeyError, TypeError, ValueError):
        return None
