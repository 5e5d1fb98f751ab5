"""Free-text radiology reports written from the phantom's per-organ findings.

The phantom generator (:mod:`mosmoskit.data.phantom`) knows, for each of the 13 BTCV organs, whether
it is present, enlarged, how many focal lesions it holds and whether the report should mention it.
This module turns that record into report text that reads like a real abdominal CT report, with the
variation a tag parser must cope with:

* sentence templates chosen at random, synonyms and adjectives ("hepatic", "renal", "IVC");
* negated findings that do **not** mean absence ("no splenomegaly", "no focal hepatic lesion");
* absences ("status post cholecystectomy", "the left kidney is not visualized");
* paired mentions ("both kidneys are normal in size", "the adrenal glands are unremarkable");
* abnormal findings with side and size (enlarged, atrophic, focal lesions); organs left unmentioned;
* congenital absences ("right renal agenesis", "interrupted IVC with azygos continuation");
* three layouts: running prose, one finding per line, and ``FINDINGS:`` / ``IMPRESSION:``.

With :attr:`ReportStyle.extended_phrasing` (the enriched pre-training preset) more wordings are
used (:data:`EXTENDED_TEMPLATES`), and an abnormal organ's report may also deny its other findings
("Hepatomegaly. No focal hepatic lesion."); without it the wording and the random stream are those
of earlier cohorts.

**Ground-truth tags.** The tag of an organ is what the report says about it, which the findings
record fixes before any text is written (:func:`tags_from_findings`):

* ``1``  - mentioned as present (normal or abnormal),
* ``0``  - mentioned as absent (surgically absent; in slice reports not in this slice; in reports of a
  limited-range scan outside its field of view),
* ``-1`` - not mentioned: the organ's names, adjectives and side words do not appear in the text.

**Ground-truth finding tags** (:mod:`mosmoskit.reports.findings`) say what the report states about
each finding of a mentioned organ: ``1`` stated (the organ is enlarged, atrophic or holds a lesion,
and every abnormal finding is written), ``0`` denied by the sentence chosen ("no hepatomegaly",
"normal in size", "unremarkable"; :data:`NORMAL_DENIES` says which kinds each sentence denies, and
:func:`compose_report` records them in :attr:`OrganFinding.denied`), ``-1`` not said
(:func:`finding_tags_from_findings`).

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

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.data.phantom_wording import EXTENDED_TEMPLATES, NORMAL_DENIES
from mosmoskit.reports.findings import FINDING_TABLE
from mosmoskit.reports.vocabulary import FINDING_KIND_NAMES

__all__ = [
    "ABSENCE_KINDS",
    "EXTENDED_TEMPLATES",
    "FILLER_SENTENCES",
    "NORMAL_DENIES",
    "ORGAN_TEMPLATES",
    "OrganFinding",
    "PAIR_TEMPLATES",
    "ReportStyle",
    "WrittenReport",
    "compose_report",
    "finding_tags_from_findings",
    "has_wording",
    "tags_from_findings",
    "write_report",
]

#: Why an organ is not present. ``resected``: absent from the whole case, removed or lost (surgery;
#: for the portal/splenic vein, chronic occlusion with cavernous transformation); ``congenital``:
#: absent from the whole case since birth (renal or adrenal agenesis, asplenia, interrupted IVC);
#: ``out_of_plane``: present in the case but not in this 2D slice (slice reports only);
#: ``out_of_range``: present in the patient but outside the craniocaudal range of a limited-range
#: 3D scan (volume reports only).
ABSENCE_KINDS = ("resected", "congenital", "out_of_plane", "out_of_range")

#: The absence kinds each report scope can state.
_SCOPE_ABSENCES = {"volume": ("resected", "congenital", "out_of_range"),
                   "slice": ("resected", "congenital", "out_of_plane")}
#: Absences of the whole case (not of one image's extent).
_CASE_ABSENCES = ("resected", "congenital")

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
# The rows atrophic and congenital, the extended wordings (*_more) and the denial add-ons
# (no_lesion, normal_size) are in EXTENDED_TEMPLATES (mosmoskit.data.phantom_wording), merged into
# this table at import.
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

# The enriched preset's rows (mosmoskit.data.phantom_wording) join the table; none may replace a row.
for _row_key, _extra in EXTENDED_TEMPLATES.items():
    for _kind, _sentences in _extra.items():
        if _kind in ORGAN_TEMPLATES[_row_key]:
            raise ValueError(f"EXTENDED_TEMPLATES[{_row_key!r}][{_kind!r}] would replace a row of ORGAN_TEMPLATES")
        ORGAN_TEMPLATES[_row_key][_kind] = _sentences

_DENYING_ROWS = ("normal", "normal_more", "no_lesion", "normal_size")


def _check_denials() -> None:
    """Fail at import on a normal sentence without a NORMAL_DENIES entry, or an entry of no sentence."""
    sentences = {t for row in ORGAN_TEMPLATES.values() for kind in _DENYING_ROWS for t in row.get(kind, ())}
    sentences |= {t for row in PAIR_TEMPLATES.values() for t in row.get("normal", ())}
    missing, stray = sorted(sentences - set(NORMAL_DENIES)), sorted(set(NORMAL_DENIES) - sentences)
    bad = {t: k for t, k in NORMAL_DENIES.items() if not set(k) <= set(FINDING_KIND_NAMES)}
    if missing or stray or bad:
        raise ValueError(f"NORMAL_DENIES: missing {missing}, not a normal sentence {stray}, bad kinds {bad}")


_check_denials()

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
        n_lesions: number of focal lesions (cysts, hypodense lesions, stones, thrombi), >= 0.
        mentioned: the report talks about this organ; if false its names do not appear in the text.
        absence: why a non-present organ is missing, one of :data:`ABSENCE_KINDS`; ``None`` when
            present.
        lesion_size_mm: diameter of the largest lesion (0 when there is none).
        atrophic: small / shrunken / flattened / contracted (only when present, never with
            ``enlarged``).
        denied: finding kinds (``"enlarged"``, ``"atrophic"``, ``"lesion"``) the report states are
            absent ("no hepatomegaly" denies ``enlarged``), set by :func:`compose_report` from the
            sentences it chose; never a kind the organ has.

    Raises:
        ValueError: inconsistent fields (an absent organ that is enlarged, atrophic, holds lesions
            or has denials, a present organ with an absence kind, an organ both enlarged and
            atrophic, a negative count, an unknown or contradicted denied kind).
    """

    present: bool
    enlarged: bool = False
    n_lesions: int = 0
    mentioned: bool = True
    absence: str | None = None
    lesion_size_mm: float = 0.0
    atrophic: bool = False
    denied: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_lesions < 0:
            raise ValueError(f"OrganFinding: n_lesions must be >= 0, got {self.n_lesions}")
        if self.lesion_size_mm < 0:
            raise ValueError(f"OrganFinding: lesion_size_mm must be >= 0, got {self.lesion_size_mm}")
        object.__setattr__(self, "denied", tuple(self.denied))
        unknown = [k for k in self.denied if k not in FINDING_KIND_NAMES]
        if unknown:
            raise ValueError(f"OrganFinding: denied kinds must be among {FINDING_KIND_NAMES}, got {unknown}")
        if self.present:
            if self.absence is not None:
                raise ValueError(f"OrganFinding: a present organ cannot have absence={self.absence!r}")
            if self.enlarged and self.atrophic:
                raise ValueError("OrganFinding: an organ cannot be both enlarged and atrophic")
            contradicted = [k for k in self.denied if k in self.stated_kinds]
            if contradicted:
                raise ValueError(f"OrganFinding: denied={self.denied!r} contradicts the organ's own findings {contradicted}")
        else:
            if self.enlarged or self.atrophic or self.n_lesions or self.denied:
                raise ValueError("OrganFinding: an absent organ cannot be enlarged, atrophic, hold lesions or have denials")
            if self.absence is None:
                object.__setattr__(self, "absence", "resected")
            if self.absence not in ABSENCE_KINDS:
                raise ValueError(f"OrganFinding: absence must be one of {ABSENCE_KINDS}, got {self.absence!r}")

    @property
    def stated_kinds(self) -> tuple[str, ...]:
        """The finding kinds this organ has: ``enlarged``, ``atrophic``, ``lesion`` (in that order)."""
        has = {"enlarged": self.enlarged, "atrophic": self.atrophic, "lesion": self.n_lesions > 0}
        return tuple(k for k in FINDING_KIND_NAMES if has[k])

    @property
    def abnormal(self) -> bool:
        """Present with an enlargement, atrophy or a lesion, or absent from the whole case."""
        return (self.present and bool(self.stated_kinds)) or self.absence in _CASE_ABSENCES

    @property
    def tag(self) -> int:
        """1 mentioned as present, 0 mentioned as absent, -1 not mentioned."""
        if not self.mentioned:
            return -1
        return 1 if self.present else 0

    def finding_values(self) -> dict[str, int]:
        """Kind -> what the report says about it: 1 stated, 0 denied, -1 not said (or not mentioned)."""
        if not (self.mentioned and self.present):
            return dict.fromkeys(FINDING_KIND_NAMES, -1)
        stated = self.stated_kinds
        return {k: 1 if k in stated else 0 if k in self.denied else -1 for k in FINDING_KIND_NAMES}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["denied"] = list(self.denied)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrganFinding:
        """Inverse of :meth:`to_dict`; rows written before ``atrophic``/``denied`` existed read as their defaults."""
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
        extended_phrasing: also use the wordings of :data:`EXTENDED_TEMPLATES` (``*_more`` rows)
            and the denial add-ons below. False keeps the text (and random stream) of cohorts
            written before it existed.
        denial_prob: (extended phrasing) chance that an abnormal organ's sentences are followed by
            one denying its other findings: "No focal hepatic lesion." after "Hepatomegaly.", "The
            liver is normal in size." after a liver lesion.

    Raises:
        ValueError: a probability outside [0, 1] or a negative ``max_fillers``.
    """

    structured_prob: float = 0.35
    list_prob: float = 0.3
    pair_prob: float = 0.7
    shuffle_prob: float = 0.15
    max_fillers: int = 2
    extended_phrasing: bool = False
    denial_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("structured_prob", "list_prob", "pair_prob", "shuffle_prob", "denial_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"ReportStyle.{name} must be in [0, 1], got {value!r}")
        if self.max_fillers < 0:
            raise ValueError(f"ReportStyle.max_fillers must be >= 0, got {self.max_fillers!r}")


@dataclass(frozen=True)
class WrittenReport:
    """A report and the findings it was written from, with what each sentence denies.

    Attributes:
        text: the report.
        findings: the findings given to :func:`compose_report`, each mentioned present organ's
            ``denied`` set to the kinds its chosen sentences deny.
    """

    text: str
    findings: dict[str, OrganFinding]


def has_wording(organ: str, kind: str) -> bool:
    """Whether the report writer can state ``kind`` (a template row: ``"atrophic"``, ``"congenital"``,
    ...) for the BTCV organ ``organ``."""
    row = _ROWS.get(organ)
    return row is not None and kind in ORGAN_TEMPLATES[row[0]]


def tags_from_findings(findings: Mapping[str, OrganFinding]) -> dict[str, int]:
    """Organ -> ground-truth tag (1 present, 0 absent, -1 not mentioned), in the order given."""
    return {name: f.tag for name, f in findings.items()}


def finding_tags_from_findings(findings: Mapping[str, OrganFinding]) -> dict[str, int]:
    """Ground-truth finding tags: every BTCV finding tag -> 1 stated, 0 denied, -1 not said.

    Args:
        findings: BTCV organ -> :class:`OrganFinding` as returned by :func:`compose_report` (its
            ``denied`` kinds come from the sentences written). Organs missing from the mapping, not
            mentioned or absent give -1 for all their findings.

    Returns:
        ``{finding: value}`` for every tag of :data:`mosmoskit.reports.findings.FINDING_TABLE`, in
        that order (the keys of ``extract_findings(report, "btcv")``).
    """
    out = {}
    for name, organ, kind in FINDING_TABLE:
        f = findings.get(organ)
        out[name] = -1 if f is None else f.finding_values()[kind]
    return out


def _state(f: OrganFinding) -> str:
    if not f.present:
        return str(f.absence)
    if f.enlarged or f.atrophic or f.n_lesions:
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


def _options(row: Mapping[str, tuple[str, ...]], kind: str, style: ReportStyle) -> tuple[str, ...]:
    """The sentences for ``kind``: the row, plus its ``*_more`` wordings with extended phrasing.

    A congenital absence falls back to the resected wording for organs without congenital rows.
    """
    if kind == "congenital" and kind not in row:
        kind = "resected"
    if kind not in row:
        raise ValueError(f"write_report: no {kind!r} wording for this organ ({sorted(row)})")
    options = row[kind]
    if style.extended_phrasing:
        options = options + row.get(f"{kind}_more", ())
    return options


def _organ_sentences(name: str, f: OrganFinding, rng: np.random.Generator,
                     style: ReportStyle) -> tuple[list[str], tuple[str, ...]]:
    """The sentences about one organ, and the finding kinds they deny."""
    row_key, side = _ROWS[name]
    row = ORGAN_TEMPLATES[row_key]
    state = _state(f)
    if state in ABSENCE_KINDS:
        return [_fill(_pick(rng, _options(row, state, style)), side)], ()
    if state == "normal":
        template = _pick(rng, _options(row, "normal", style))
        return [_fill(template, side)], NORMAL_DENIES[template]
    out = []
    if f.enlarged:
        out.append(_fill(_pick(rng, _options(row, "enlarged", style)), side, f))
    if f.atrophic:
        out.append(_fill(_pick(rng, _options(row, "atrophic", style)), side, f))
    if f.n_lesions == 1:
        out.append(_fill(_pick(rng, _options(row, "lesion_one", style)), side, f))
    elif f.n_lesions > 1:
        out.append(_fill(_pick(rng, _options(row, "lesion_many", style)), side, f))
    denied: tuple[str, ...] = ()
    if style.extended_phrasing and rng.random() < style.denial_prob:
        # deny what the organ does not have: lesions of an enlarged or atrophic organ, size changes
        # of a lesion-bearing one
        addon = "no_lesion" if not f.n_lesions else "normal_size" if not (f.enlarged or f.atrophic) else None
        if addon is not None and addon in row:
            template = _pick(rng, row[addon])
            out.append(_fill(template, side))
            denied = NORMAL_DENIES[template]
    return out, denied


def _impression_lines(findings: Mapping[str, OrganFinding], rng: np.random.Generator) -> list[str]:
    lines = []
    for name, f in findings.items():
        if not f.mentioned or not f.abnormal:
            continue
        row_key, side = _ROWS[name]
        row = ORGAN_TEMPLATES[row_key]
        if not f.present:
            kind = "impression_congenital" if f.absence == "congenital" and "impression_congenital" in row else "impression_resected"
            lines.append(_fill(_pick(rng, row[kind]), side))
            continue
        if f.enlarged:
            lines.append(_fill(_pick(rng, row["impression_enlarged"]), side))
        if f.atrophic:
            lines.append(_fill(_pick(rng, row["impression_atrophic"]), side))
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
        scope: ``"volume"`` for a 3D scan (allows ``resected``, ``congenital`` and
            ``out_of_range`` absences), ``"slice"`` for one axial image (adds a header line;
            allows ``resected``, ``congenital`` and ``out_of_plane``).

    Returns:
        The report text (:attr:`WrittenReport.text` of :func:`compose_report`, which also says
        which findings the text denies). An organ with ``mentioned=False`` contributes no word
        (name, adjective or side phrase); every mentioned organ contributes at least one sentence
        whose meaning matches its tag (:func:`tags_from_findings`).

    Raises:
        ValueError: an unknown organ name, an unknown ``scope``, an absence kind the scope cannot
            state (``out_of_plane`` in a volume report, ``out_of_range`` in a slice report), or a
            finding the organ has no wording for (an atrophic aorta).
    """
    return compose_report(findings, rng, style, scope).text


def compose_report(
    findings: Mapping[str, OrganFinding],
    rng: np.random.Generator,
    style: ReportStyle | None = None,
    scope: str = "volume",
) -> WrittenReport:
    """:func:`write_report`, also returning the findings with the kinds each organ's sentences deny.

    Args, Raises: as in :func:`write_report`; the same ``rng`` draws give the same text.

    Returns:
        A :class:`WrittenReport`; :func:`finding_tags_from_findings` of its ``findings`` are the
        ground-truth finding tags of its ``text``.
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
    denied: dict[str, tuple[str, ...]] = {}
    done: set[str] = set()
    for name in _ROWS:
        f = findings.get(name)
        if f is None or not f.mentioned or name in done:
            continue
        row_key, _ = _ROWS[name]
        pair = _PAIRS.get(row_key)
        # (Classic wording may also pair the second side after the first was written alone, as the
        # first cohorts did; the extended wording does not repeat a side.)
        if pair is not None and not (style.extended_phrasing and done.intersection(pair)):
            a, b = findings.get(pair[0]), findings.get(pair[1])
            if (
                a is not None and b is not None and a.mentioned and b.mentioned
                and _state(a) == _state(b) and _state(a) in PAIR_TEMPLATES[row_key]
                and rng.random() < style.pair_prob
            ):
                template = _pick(rng, PAIR_TEMPLATES[row_key][_state(a)])
                groups.append([template])
                for organ in pair:  # an organ spoken of twice denies what either sentence denies
                    denied[organ] = denied.get(organ, ()) + NORMAL_DENIES.get(template, ())
                done.update(pair)
                continue
        sentences, denied_here = _organ_sentences(name, f, rng, style)
        denied[name] = denied.get(name, ()) + denied_here
        groups.append(sentences)
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
        text = "FINDINGS:\n" + body + "\n\nIMPRESSION:\n" + "\n".join(numbered)
    elif rng.random() < style.list_prob:
        text = "\n".join(header + sentences)
    else:
        text = " ".join(header + sentences)
    written = {name: replace(f, denied=tuple(k for k in FINDING_KIND_NAMES if k in denied.get(name, ()) and k not in f.stated_kinds))
               if f.present and f.mentioned else f for name, f in findings.items()}
    return WrittenReport(text, written)
