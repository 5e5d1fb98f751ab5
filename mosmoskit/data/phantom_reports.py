"""Free-text radiology reports written from the phantom's per-organ findings.

The phantom generator (:mod:`mosmoskit.data.phantom`) knows, for each of the 13 BTCV organs, whether
it is present, enlarged, how many focal lesions it holds and whether the report should mention it.
This module turns that record into report text that reads like a real abdominal CT report, with the
variation a tag parser must cope with:

* sentence templates chosen at random, synonyms and adjectives ("hepatic", "renal", "IVC");
* negated findings that do **not** mean absence ("no splenomegaly", "no focal hepatic lesion");
* absences ("status post cholecystectomy", "the left kidney is not visualized");
* paired mentions ("both kidneys are normal in size", "the adrenal glands are unremarkable");
* abnormal findings with side and size; organs left unmentioned;
* three layouts: running prose, one finding per line, and ``FINDINGS:`` / ``IMPRESSION:``.

**Ground-truth tags.** The tag of an organ is what the report says about it, which the findings
record fixes before any text is written (:func:`tags_from_findings`):

* ``1``  - mentioned as present (normal or abnormal),
* ``0``  - mentioned as absent (surgically absent; in slice reports not in this slice; in reports of a
  limited-range scan outside its field of view),
* ``-1`` - not mentioned: the organ's names, adjectives and side words do not appear in the text.

All wording lives in the tables :data:`ORGAN_TEMPLATES`, :data:`PAIR_TEMPLATES`,
:data:`FILLER_SENTENCES` and :data:`IMPRESSION_NORMAL`; the code only picks rows and fills the
placeholders ``{side}``/``{Side}`` (right/left), ``{count}`` (two, three, ...), ``{size}`` (mm).

Example:
    >>> import numpy as np
    >>> from mosmoskit.data.phantom_reports import OrganFinding, write_report, tags_from_findings
    >>> findings = {"spleen": OrganFinding(present=False, absence="resected"),
    ...             "liver": OrganFinding(present=True, enlarged=True)}
    >>> text = write_report(findings, np.random.default_rng(0))
    >>> tags_from_findings(findings)
    {'spleen': 0, 'liver': 1}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "ABSENCE_KINDS",
    "FILLER_SENTENCES",
    "ORGAN_TEMPLATES",
    "OrganFinding",
    "PAIR_TEMPLATES",
    "ReportStyle",
    "tags_from_findings",
    "write_report",
]

#: Why an organ is not present. ``resected``: absent from the whole case (surgery, agenesis);
#: ``out_of_plane``: present in the case but not in this 2D slice (slice reports only);
#: ``out_of_range``: present in the patient but outside the craniocaudal range of a limited-range
#: 3D scan (volume reports only).
ABSENCE_KINDS = ("resected", "out_of_plane", "out_of_range")

#: The absence kinds each report scope can state.
_SCOPE_ABSENCES = {"volume": ("resected", "out_of_range"), "slice": ("resected", "out_of_plane")}

# --------------------------------------------------------------------------------------------
# The template table.
#
# Row key = organ (both kidneys share "kidney", both adrenals share "adrenal"; their templates
# always carry {side}/{Side} so one side can be mentioned without naming the other).
#   normal       : present, not enlarged, no lesion. Many are negated findings ("No splenomegaly.")
#                  which still mean the organ is there (tag 1).
#   enlarged     : present and enlarged.
#   lesion_one   : exactly one focal lesion ({size} = its diameter in mm).
#   lesion_many  : two or more ({count} = "two", "three", ..., {size} = the largest).
#   resected     : absent from the case (tag 0).
#   out_of_plane : (slice reports) present in the case but not in this slice (tag 0).
#   out_of_range : (volume reports of a limited-range scan) outside the field of view (tag 0); not
#                  written here but derived from out_of_plane below, so the two cannot drift.
#   impression   : short phrases for the IMPRESSION section, keyed enlarged / lesion / resected.
# A sentence names only its own organ: no "splenic hilum" in a pancreas sentence, no "hepatic" in
# a vessel sentence, so an unmentioned organ never leaks into the text.
# --------------------------------------------------------------------------------------------
ORGAN_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "liver": {
        "normal": (
            "The liver is normal in size and attenuation.",
            "Normal hepatic size and contour.",
            "No focal hepatic lesion.",
            "Liver: unremarkable.",
            "No hepatomegaly. The liver enhances homogeneously.",
            "The liver is unremarkable without focal lesion.",
        ),
        "enlarged": (
            "Hepatomegaly.",
            "The liver is enlarged.",
            "Enlarged liver with smooth contour.",
            "Hepatomegaly with homogeneous enhancement.",
        ),
        "lesion_one": (
            "A {size} mm hypodense hepatic lesion.",
            "Single hypoattenuating lesion in the liver measuring {size} mm.",
            "There is a focal hypodense liver lesion of {size} mm.",
        ),
        "lesion_many": (
            "{Count} hypodense hepatic lesions, the largest measuring {size} mm.",
            "Multiple hypoattenuating liver lesions ({count}), up to {size} mm.",
            "{Count} focal lesions in the liver, largest {size} mm.",
        ),
        "resected": ("The liver is not visualized.",),
        "out_of_plane": ("The liver is not included at this level.", "No hepatic parenchyma at this level."),
        "impression_enlarged": ("Hepatomegaly.",),
        "impression_lesion": ("Hypodense hepatic lesion(s), further characterization with MRI recommended.",
                              "Focal liver lesion(s)."),
        "impression_resected": ("Liver not visualized.",),
    },
    "spleen": {
        "normal": (
            "The spleen is normal in size.",
            "No splenomegaly.",
            "Spleen: unremarkable.",
            "Normal splenic size and attenuation.",
            "The spleen is homogeneous and not enlarged.",
        ),
        "enlarged": (
            "Splenomegaly.",
            "The spleen is enlarged.",
            "Moderate splenomegaly with homogeneous enhancement.",
        ),
        "lesion_one": (
            "A {size} mm hypodense splenic lesion.",
            "Small hypoattenuating lesion in the spleen ({size} mm).",
        ),
        "lesion_many": (
            "{Count} hypodense splenic lesions up to {size} mm.",
            "Multiple small lesions in the spleen, the largest {size} mm.",
        ),
        "resected": (
            "Status post splenectomy.",
            "Surgically absent spleen.",
            "The spleen is not visualized, consistent with prior splenectomy.",
            "Splenectomy.",
        ),
        "out_of_plane": ("The spleen is not included at this level.", "No splenic tissue at this level."),
        "impression_enlarged": ("Splenomegaly.",),
        "impression_lesion": ("Splenic lesion(s), likely benign.",),
        "impression_resected": ("Post-splenectomy state.",),
    },
    "kidney": {
        "normal": (
            "The {side} kidney is normal in size.",
            "Unremarkable {side} kidney without hydronephrosis.",
            "No hydronephrosis of the {side} kidney.",
            "The {side} kidney enhances symmetrically, no renal calculus on the {side}.",
            "{Side} kidney: unremarkable.",
        ),
        "enlarged": (
            "The {side} kidney is enlarged.",
            "Enlarged {side} kidney.",
            "{Side} renal enlargement.",
        ),
        "lesion_one": (
            "A {size} mm simple cyst in the {side} kidney.",
            "{Side} renal cyst measuring {size} mm.",
            "Hypodense lesion of the {side} kidney ({size} mm), likely a cyst.",
        ),
        "lesion_many": (
            "{Count} cysts in the {side} kidney, up to {size} mm.",
            "Multiple {side} renal cysts, the largest {size} mm.",
        ),
        "resected": (
            "Status post {side} nephrectomy.",
            "The {side} kidney is not visualized.",
            "{Side} nephrectomy.",
            "Surgically absent {side} kidney.",
        ),
        "out_of_plane": ("The {side} kidney is not included at this level.",
                         "No {side} renal tissue at this level."),
        "impression_enlarged": ("Enlarged {side} kidney.",),
        "impression_lesion": ("{Side} renal cyst(s), Bosniak I.", "Simple {side} renal cyst(s)."),
        "impression_resected": ("Status post {side} nephrectomy.",),
    },
    "gallbladder": {
        "normal": (
            "The gallbladder is unremarkable.",
            "Normal gallbladder without stones.",
            "No cholelithiasis. The gallbladder wall is not thickened.",
            "Gallbladder: unremarkable.",
        ),
        "enlarged": (
            "The gallbladder is distended.",
            "Distended gallbladder without wall thickening.",
        ),
        "lesion_one": (
            "A {size} mm gallstone.",
            "Cholelithiasis with a single {size} mm stone in the gallbladder.",
        ),
        "lesion_many": (
            "Cholelithiasis: {count} gallstones, up to {size} mm.",
            "Multiple gallstones ({count}), the largest {size} mm.",
        ),
        "resected": (
            "Status post cholecystectomy.",
            "The gallbladder is surgically absent.",
            "Cholecystectomy.",
            "The gallbladder is not visualized (prior cholecystectomy).",
        ),
        "out_of_plane": ("The gallbladder is not included at this level.",),
        "impression_enlarged": ("Distended gallbladder.",),
        "impression_lesion": ("Cholelithiasis.",),
        "impression_resected": ("Status post cholecystectomy.",),
    },
    "esophagus": {
        "normal": (
            "The distal esophagus is unremarkable.",
            "No esophageal wall thickening.",
            "Esophagus: unremarkable.",
        ),
        "enlarged": ("The distal esophagus is dilated.",),
        "lesion_one": ("Focal wall thickening of the distal esophagus ({size} mm).",),
        "lesion_many": ("{Count} foci of esophageal wall thickening, up to {size} mm.",),
        "resected": ("Status post esophagectomy.", "The esophagus is not visualized."),
        "out_of_plane": ("The esophagus is not included at this level.",),
        "impression_enlarged": ("Dilated distal esophagus.",),
        "impression_lesion": ("Esophageal wall thickening, endoscopy suggested.",),
        "impression_resected": ("Status post esophagectomy.",),
    },
    "stomach": {
        "normal": (
            "The stomach is unremarkable.",
            "No gastric wall thickening.",
            "Stomach: normal.",
            "The stomach is partially filled with fluid and gas, without wall thickening.",
        ),
        "enlarged": (
            "The stomach is distended.",
            "Gastric distension with fluid.",
        ),
        "lesion_one": ("Focal gastric wall thickening ({size} mm).",),
        "lesion_many": ("{Count} foci of gastric wall thickening, up to {size} mm.",),
        "resected": ("Status post gastrectomy.", "The stomach is not visualized."),
        "out_of_plane": ("The stomach is not included at this level.", "No gastric tissue at this level."),
        "impression_enlarged": ("Distended stomach.",),
        "impression_lesion": ("Gastric wall thickening.",),
        "impression_resected": ("Status post gastrectomy.",),
    },
    "aorta": {
        "normal": (
            "The abdominal aorta is normal in caliber.",
            "No abdominal aortic aneurysm.",
            "Aorta: normal caliber.",
            "The aorta is of normal caliber without dissection.",
        ),
        "enlarged": (
            "Abdominal aortic aneurysm.",
            "The abdominal aorta is aneurysmal.",
            "Aneurysmal dilatation of the abdominal aorta.",
        ),
        "lesion_one": ("Focal aortic wall thickening ({size} mm).",),
        "lesion_many": ("{Count} foci of aortic wall thickening.",),
        "resected": ("The aorta is not visualized.",),
        "out_of_plane": ("The aorta is not included at this level.",),
        "impression_enlarged": ("Abdominal aortic aneurysm, vascular surgery referral suggested.",),
        "impression_lesion": ("Aortic wall thickening.",),
        "impression_resected": ("Aorta not visualized.",),
    },
    "inferior_vena_cava": {
        "normal": (
            "The IVC is patent.",
            "The inferior vena cava is unremarkable.",
            "Normal caliber IVC.",
        ),
        "enlarged": ("The IVC is distended.", "Dilated inferior vena cava."),
        "lesion_one": ("Filling defect in the IVC ({size} mm).",),
        "lesion_many": ("{Count} filling defects in the inferior vena cava.",),
        "resected": ("The IVC is not visualized.",),
        "out_of_plane": ("The IVC is not included at this level.",),
        "impression_enlarged": ("Distended IVC.",),
        "impression_lesion": ("IVC filling defect, thrombus not excluded.",),
        "impression_resected": ("IVC not visualized.",),
    },
    "portal_vein_and_splenic_vein": {
        "normal": (
            "The portal vein is patent.",
            "Patent portal and splenic veins.",
            "The portal venous system is patent.",
            "Portal vein: normal caliber, patent.",
        ),
        "enlarged": ("The portal vein is dilated.", "Dilated portal and splenic veins."),
        "lesion_one": ("Partial filling defect in the portal vein ({size} mm).",),
        "lesion_many": ("{Count} filling defects in the portal venous system.",),
        "resected": ("The portal vein is not visualized.",),
        "out_of_plane": ("The portal vein is not included at this level.",),
        "impression_enlarged": ("Dilated portal vein, correlate for portal hypertension.",),
        "impression_lesion": ("Portal vein filling defect.",),
        "impression_resected": ("Portal vein not visualized.",),
    },
    "pancreas": {
        "normal": (
            "The pancreas is unremarkable.",
            "Normal pancreatic enhancement without ductal dilatation.",
            "Pancreas: normal.",
            "No pancreatic mass.",
        ),
        "enlarged": ("The pancreas is diffusely enlarged.", "Bulky pancreas."),
        "lesion_one": (
            "A {size} mm cystic pancreatic lesion.",
            "Hypodense lesion in the pancreas measuring {size} mm.",
        ),
        "lesion_many": ("{Count} cystic pancreatic lesions up to {size} mm.",),
        "resected": ("Status post pancreatectomy.", "The pancreas is not visualized."),
        "out_of_plane": ("The pancreas is not included at this level.",),
        "impression_enlarged": ("Bulky pancreas, correlate with lipase.",),
        "impression_lesion": ("Cystic pancreatic lesion(s), follow-up recommended.",),
        "impression_resected": ("Status post pancreatectomy.",),
    },
    "adrenal": {
        "normal": (
            "The {side} adrenal gland is unremarkable.",
            "Normal {side} adrenal.",
            "No {side} adrenal nodule.",
        ),
        "enlarged": ("The {side} adrenal gland is thickened.", "{Side} adrenal hyperplasia."),
        "lesion_one": (
            "A {size} mm {side} adrenal nodule, likely adenoma.",
            "{Side} adrenal nodule measuring {size} mm.",
        ),
        "lesion_many": ("{Count} {side} adrenal nodules, up to {size} mm.",),
        "resected": (
            "Status post {side} adrenalectomy.",
            "The {side} adrenal gland is not visualized.",
        ),
        "out_of_plane": ("The {side} adrenal gland is not included at this level.",),
        "impression_enlarged": ("{Side} adrenal hyperplasia.",),
        "impression_lesion": ("{Side} adrenal nodule, likely adenoma.",),
        "impression_resected": ("Status post {side} adrenalectomy.",),
    },
}

# Sentences naming both sides of a paired organ at once; used when both sides are mentioned and
# in the same state (both normal, or both out of plane in a slice report).
PAIR_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "kidney": {
        "normal": (
            "Both kidneys are normal in size.",
            "The kidneys are unremarkable, no hydronephrosis.",
            "Normal bilateral kidneys without hydronephrosis.",
            "Kidneys: unremarkable.",
        ),
        "out_of_plane": ("The kidneys are not included at this level.",),
    },
    "adrenal": {
        "normal": (
            "The adrenal glands are unremarkable.",
            "Normal adrenals.",
            "Both adrenal glands are normal.",
        ),
        "resected": ("Status post bilateral adrenalectomy.",),
        "out_of_plane": ("The adrenal glands are not included at this level.",),
    },
}

#: "at this level" (one slice) becomes the extent of a limited-range volume.
_OUT_OF_RANGE_PLACES = ("in the field of view", "in the scanned range")


def _out_of_range_sentences(out_of_plane: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.replace("at this level", place) for s in out_of_plane for place in _OUT_OF_RANGE_PLACES)


for _table in (ORGAN_TEMPLATES, PAIR_TEMPLATES):
    for _row in _table.values():
        if "out_of_plane" in _row:
            _row["out_of_range"] = _out_of_range_sentences(_row["out_of_plane"])

# Sentences about things that are not BTCV organs: they pad the report the way real reports are
# padded, and name no organ (no "renal", "hepatic", "splenic", "gastric", ... in here).
FILLER_SENTENCES: tuple[str, ...] = (
    "No free fluid.",
    "No free intraperitoneal air.",
    "No pathologically enlarged lymph nodes.",
    "The visualized bowel loops are unremarkable.",
    "Mild degenerative changes of the lumbar spine.",
    "The abdominal wall is intact.",
    "No ascites.",
    "The visualized lung bases are clear.",
    "No acute osseous abnormality.",
)

IMPRESSION_NORMAL: tuple[str, ...] = (
    "No acute abnormality in the abdomen.",
    "Unremarkable CT of the abdomen.",
    "No acute intra-abdominal process.",
)

SLICE_HEADERS: tuple[str, ...] = (
    "Single axial CT image of the abdomen.",
    "Axial image, contrast-enhanced.",
    "Axial CT section.",
)

# Organ -> (template row, side). The order is the usual reading order of an abdominal CT report.
_ROWS: dict[str, tuple[str, str | None]] = {
    "liver": ("liver", None),
    "gallbladder": ("gallbladder", None),
    "spleen": ("spleen", None),
    "pancreas": ("pancreas", None),
    "adrenal_gland_right": ("adrenal", "right"),
    "adrenal_gland_left": ("adrenal", "left"),
    "kidney_right": ("kidney", "right"),
    "kidney_left": ("kidney", "left"),
    "stomach": ("stomach", None),
    "esophagus": ("esophagus", None),
    "aorta": ("aorta", None),
    "inferior_vena_cava": ("inferior_vena_cava", None),
    "portal_vein_and_splenic_vein": ("portal_vein_and_splenic_vein", None),
}
_PAIRS = {"kidney": ("kidney_right", "kidney_left"), "adrenal": ("adrenal_gland_right", "adrenal_gland_left")}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


@dataclass(frozen=True)
class OrganFinding:
    """What is true about one organ in one case (or one slice), and whether the report says it.

    Args:
        present: the organ is in the image (it has voxels in the label map).
        enlarged: enlarged / distended / aneurysmal (only when present).
        n_lesions: number of focal lesions (cysts, hypodense lesions, stones), >= 0.
        mentioned: the report talks about this organ; if false its names do not appear in the text.
        absence: why a non-present organ is missing, one of :data:`ABSENCE_KINDS`; ``None`` when
            present.
        lesion_size_mm: diameter of the largest lesion (0 when there is none).

    Raises:
        ValueError: inconsistent fields (an absent organ that is enlarged or has lesions, a present
            organ with an absence kind, a negative count).
    """

    present: bool
    enlarged: bool = False
    n_lesions: int = 0
    mentioned: bool = True
    absence: str | None = None
    lesion_size_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.n_lesions < 0:
            raise ValueError(f"OrganFinding: n_lesions must be >= 0, got {self.n_lesions}")
        if self.lesion_size_mm < 0:
            raise ValueError(f"OrganFinding: lesion_size_mm must be >= 0, got {self.lesion_size_mm}")
        if self.present:
            if self.absence is not None:
                raise ValueError(f"OrganFinding: a present organ cannot have absence={self.absence!r}")
        else:
            if self.enlarged or self.n_lesions:
                raise ValueError("OrganFinding: an absent organ cannot be enlarged or hold lesions")
            if self.absence is None:
                object.__setattr__(self, "absence", "resected")
            if self.absence not in ABSENCE_KINDS:
                raise ValueError(f"OrganFinding: absence must be one of {ABSENCE_KINDS}, got {self.absence!r}")

    @property
    def abnormal(self) -> bool:
        """Present with an enlargement or a lesion, or absent from the whole case."""
        return (self.present and (self.enlarged or self.n_lesions > 0)) or self.absence == "resected"

    @property
    def tag(self) -> int:
        """1 mentioned as present, 0 mentioned as absent, -1 not mentioned."""
        if not self.mentioned:
            return -1
        return 1 if self.present else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrganFinding:
        return cls(**dict(data))


@dataclass(frozen=True)
class ReportStyle:
    """Probabilities that shape the wording (not the content) of a report.

    Args:
        structured_prob: chance of the ``FINDINGS:`` / ``IMPRESSION:`` layout.
        list_prob: chance of one sentence per line (otherwise running prose), when not structured.
        pair_prob: chance of one sentence for both kidneys / both adrenals when both are mentioned
            and in the same state.
        shuffle_prob: chance of shuffling the organ order (reports usually follow a fixed order).
        max_fillers: up to this many non-organ sentences ("No free fluid.") are added.

    Raises:
        ValueError: a probability outside [0, 1] or a negative ``max_fillers``.
    """

    structured_prob: float = 0.35
    list_prob: float = 0.3
    pair_prob: float = 0.7
    shuffle_prob: float = 0.15
    max_fillers: int = 2

    def __post_init__(self) -> None:
        for name in ("structured_prob", "list_prob", "pair_prob", "shuffle_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"ReportStyle.{name} must be in [0, 1], got {value!r}")
        if self.max_fillers < 0:
            raise ValueError(f"ReportStyle.max_fillers must be >= 0, got {self.max_fillers!r}")


def tags_from_findings(findings: Mapping[str, OrganFinding]) -> dict[str, int]:
    """Organ -> ground-truth tag (1 present, 0 absent, -1 not mentioned), in the order given."""
    return {name: f.tag for name, f in findings.items()}


def _state(f: OrganFinding) -> str:
    if not f.present:
        return str(f.absence)
    if f.enlarged or f.n_lesions:
        return "abnormal"
    return "normal"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(template: str, side: str | None, f: OrganFinding | None = None) -> str:
    values = {"side": side or "", "Side": (side or "").capitalize()}
    if f is not None:
        count = _COUNT_WORDS.get(f.n_lesions, "multiple")
        values.update(count=count, Count=count.capitalize(), size=str(int(round(f.lesion_size_mm))))
    return template.format(**values)


def _organ_sentences(name: str, f: OrganFinding, rng: np.random.Generator) -> list[str]:
    row_key, side = _ROWS[name]
    row = ORGAN_TEMPLATES[row_key]
    state = _state(f)
    if state in ABSENCE_KINDS:
        return [_fill(_pick(rng, row[state]), side)]
    if state == "normal":
        return [_fill(_pick(rng, row["normal"]), side)]
    out = []
    if f.enlarged:
        out.append(_fill(_pick(rng, row["enlarged"]), side, f))
    if f.n_lesions == 1:
        out.append(_fill(_pick(rng, row["lesion_one"]), side, f))
    elif f.n_lesions > 1:
        out.append(_fill(_pick(rng, row["lesion_many"]), side, f))
    return out


def _impression_lines(findings: Mapping[str, OrganFinding], rng: np.random.Generator) -> list[str]:
    lines = []
    for name, f in findings.items():
        if not f.mentioned or not f.abnormal:
            continue
        row_key, side = _ROWS[name]
        row = ORGAN_TEMPLATES[row_key]
        if not f.present:
            lines.append(_fill(_pick(rng, row["impression_resected"]), side))
            continue
        if f.enlarged:
            lines.append(_fill(_pick(rng, row["impression_enlarged"]), side))
        if f.n_lesions:
            lines.append(_fill(_pick(rng, row["impression_lesion"]), side))
    return lines


def write_report(
    findings: Mapping[str, OrganFinding],
    rng: np.random.Generator,
    style: ReportStyle | None = None,
    scope: str = "volume",
) -> str:
    """Write a free-text report that says exactly what ``findings`` marks as mentioned.

    Args:
        findings: BTCV organ name -> :class:`OrganFinding`. Organs not in the mapping are treated
            as not mentioned.
        rng: the only source of randomness (template choice, order, layout), so a seeded generator
            gives the same text every time.
        style: layout probabilities; :class:`ReportStyle` defaults when ``None``.
        scope: ``"volume"`` for a 3D scan (allows ``resected`` and ``out_of_range`` absences),
            ``"slice"`` for one axial image (adds a header line; allows ``resected`` and
            ``out_of_plane``).

    Returns:
        The report text. An organ with ``mentioned=False`` contributes no word (name, adjective or
        side phrase); every mentioned organ contributes at least one sentence whose meaning
        matches its tag (:func:`tags_from_findings`).

    Raises:
        ValueError: an unknown organ name, an unknown ``scope``, or an absence kind the scope cannot
            state (``out_of_plane`` in a volume report, ``out_of_range`` in a slice report).
    """
    style = style or ReportStyle()
    if scope not in _SCOPE_ABSENCES:
        raise ValueError(f"write_report: scope must be 'volume' or 'slice', got {scope!r}")
    unknown = [n for n in findings if n not in _ROWS]
    if unknown:
        raise ValueError(f"write_report: unknown organ names {unknown}; expected BTCV names {list(_ROWS)}")
    bad = {n: f.absence for n, f in findings.items() if not f.present and f.absence not in _SCOPE_ABSENCES[scope]}
    if bad:
        raise ValueError(
            f"write_report: a {scope} report can state the absences {list(_SCOPE_ABSENCES[scope])}, got {bad}"
        )

    # Sentence groups in reading order; a group is one organ or one merged pair.
    groups: list[list[str]] = []
    done: set[str] = set()
    for name in _ROWS:
        f = findings.get(name)
        if f is None or not f.mentioned or name in done:
            continue
        row_key, _ = _ROWS[name]
        pair = _PAIRS.get(row_key)
        if pair is not None:
            a, b = findings.get(pair[0]), findings.get(pair[1])
            if (
                a is not None and b is not None and a.mentioned and b.mentioned
                and _state(a) == _state(b) and _state(a) in PAIR_TEMPLATES[row_key]
                and rng.random() < style.pair_prob
            ):
                groups.append([_pick(rng, PAIR_TEMPLATES[row_key][_state(a)])])
                done.update(pair)
                continue
        groups.append(_organ_sentences(name, f, rng))
        done.add(name)
    if len(groups) > 1 and rng.random() < style.shuffle_prob:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    n_fill = int(rng.integers(style.max_fillers + 1)) if style.max_fillers else 0
    fillers = [FILLER_SENTENCES[i] for i in rng.choice(len(FILLER_SENTENCES), size=n_fill, replace=False)]
    sentences = [s for g in groups for s in g] + fillers
    header = [_pick(rng, SLICE_HEADERS)] if scope == "slice" else []

    if rng.random() < style.structured_prob:
        impression = _impression_lines(findings, rng) or [_pick(rng, IMPRESSION_NORMAL)]
        numbered = impression if len(impression) == 1 else [f"{i + 1}. {s}" for i, s in enumerate(impression)]
        body = " ".join(header + sentences)
        return "FINDINGS:\n" + body + "\n\nIMPRESSION:\n" + "\n".join(numbered)
    if rng.random() < style.list_prob:
        return "\n".join(header + sentences)
    return " ".join(header + sentences)
