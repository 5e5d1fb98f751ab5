"""The words the report parser knows, kept as data.

Everything here is a readable table; the logic that uses it lives in :mod:`mosmoskit.reports.tags`.
Patterns are Python regular-expression fragments matched against the *lower-cased* report, on word
boundaries (``\\b`` is added around each term). Keep them small: a term is a word or a short phrase,
optionally with ``s?`` / ``(?:...)`` for spelling variants. Start a term with a plain letter (not a
group or ``[...]``) where you can: the compiled expression dispatches on the first letter, which is
what makes the parser fast. Longer terms win over shorter ones that
start at the same place ("splenic vein" before "splenic"), and open-ended patterns (those containing
``[a-z]*``) are tried last, so a listed word always beats a catch-all.

How to extend
-------------
* A new organ: add an entry to :data:`ORGANS` keyed by its canonical label name with the side removed
  (``kidney_left`` and ``kidney_right`` both use ``"kidney"``; see
  :func:`mosmoskit.labels.canonical_name`). Any label map whose names reduce to that key is tagged.
* A label that should listen to several vocabulary entries (AMOS ``prostate_uterus``, a lung lobe that
  inherits statements about the whole lung): add it to :data:`LABEL_CONCEPTS`.
* A phrase that looks like an organ but is not ("renal artery", "portal venous phase"): add it to
  :data:`IGNORED_TERMS`; matching it consumes the words so they never tag anything.
* Another way to say "outside the image" (a field of view, a scan range, a slice): extend
  :data:`IMAGE_EXTENT`; the after-cues and the negation scope pick it up.

Term kinds (the keys of an :data:`ORGANS` entry)
-------------------------------------------------
``noun``
    The organ itself, singular ("kidney", "liver"). Negated as a whole ("no spleen is seen") it means
    *absent*; used as a modifier of a finding ("no liver lesion") it means *present*.
``plural``
    Plural nouns of a paired organ ("kidneys", "adrenal glands"): they name both sides.
``finding``
    Adjectives and abnormality words ("hepatic", "splenomegaly", "hydronephrosis", "gallstones").
    They describe an organ that is there, so they mean *present* even when negated
    ("no splenomegaly").
``removed``
    Words that by themselves say the organ was removed or never formed ("splenectomy",
    "renal agenesis"). They mean *absent*, unless a partial qualifier precedes them ("partial
    nephrectomy") or they are negated ("no prior cholecystectomy": *present*).
``partial``
    Removal words that always leave organ behind ("hemicolectomy", "sleeve gastrectomy",
    "hepatectomy"): *present*.
``fossa``
    The place where the organ sits ("gallbladder fossa", "renal fossa"): no tag on its own, *absent*
    when called empty ("the left renal fossa is empty").
``sided``
    Terms that carry their own side (``{"lul": "left"}``) for paired structures.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "BOTH_SIDE_WORDS",
    "CLAUSE_BREAKS",
    "CONTINUATION_ABSENCE",
    "EMPTY_WORDS",
    "FINDING_HEDGES",
    "FINDING_HEDGES_TRAILING",
    "FINDING_IGNORED",
    "FINDING_KIND_NAMES",
    "FINDING_NEAR_ONLY",
    "FINDING_NEGATIONS",
    "FINDING_NORMAL",
    "FINDING_ORGAN_REFS",
    "FINDING_SCOPE_WORDS",
    "FINDING_STANDALONE",
    "FINDING_WORDS",
    "HEDGE_TRAILING",
    "HEDGE_WORDS",
    "IGNORED_TERMS",
    "IMAGE_EXTENT",
    "IN_IMAGE_EXTENT",
    "LABEL_ALIASES",
    "LABEL_CONCEPTS",
    "LIST_CONNECTORS",
    "MULTI_ORGAN_PROCEDURES",
    "NEGATION_CUES",
    "ORGANS",
    "OUT_OF_IMAGE_EXTENT",
    "PARTIAL_QUALIFIERS",
    "PART_OF_ORGAN",
    "POST_ABSENT",
    "POST_FILLERS",
    "POST_PARTIAL",
    "POST_UNCERTAIN",
    "PRE_FILLERS",
    "REMOVAL_CUES",
    "SIDE_WORDS",
    "SOLITARY_PATTERNS",
    "SIDE_ANAPHORA",
    "SIDE_POST_PATTERNS",
    "TERM_KINDS",
]

#: The keys an :data:`ORGANS` entry may use (see the module docstring for their meaning).
TERM_KINDS = ("noun", "plural", "finding", "removed", "partial", "fossa", "sided")

# ---------------------------------------------------------------------------------------------------
# Organ vocabulary, keyed by canonical label name with the side removed.
# ---------------------------------------------------------------------------------------------------
ORGANS: dict[str, dict[str, object]] = {
    "liver": {
        "noun": ["liver", r"hepatic\s+(?:tissue|parenchyma)"],
        "finding": [
            "hepatic", "intrahepatic", "perihepatic", "subcapsular hepatic", "hepatis",
            "hepatomegaly", "cirrhosis", "cirrhotic", "hepat[a-z]*",
        ],
        # A living patient's hepatectomy is partial or followed by a transplant: either way there is
        # a liver in the image, so "hepatectomy" never means absent.
        "partial": ["hepatectomy", "hemihepatectomy", "hepatic resection", "segmentectomy"],
        "fossa": [],
    },
    "spleen": {
        "noun": ["spleen", r"splenic\s+(?:tissue|parenchyma)"],
        "finding": ["splenic", "splenomegaly", "perisplenic", "splenic lesion", "polysplenia"],
        "removed": ["splenectomy", "splenectomies", "asplenia", "asplenic"],
        "fossa": ["splenic bed", "splenectomy bed", "splenic fossa"],
    },
    "kidney": {
        "noun": ["kidney", "renal tissue", "renal parenchyma"],
        "plural": ["kidneys"],
        "finding": [
            "renal", "perirenal", "hydronephrosis", "hydroureteronephrosis", "pyelonephritis",
            "nephrolithiasis", "nephrocalcinosis", "nephromegaly", "nephrostomy", "nephropathy",
            "renal pelvis", "renal sinus", "renal cortex", "renal cyst", "renal cysts",
            "[a-z]*nephr[a-z]*",
        ],
        "removed": [
            "nephrectomy", "nephrectomies", "nephroureterectomy", "renal agenesis",
            "agenesis of the kidney",
        ],
        "partial": ["heminephrectomy"],
        "fossa": ["renal fossa", "nephrectomy bed", "renal bed"],
    },
    "gallbladder": {
        "noun": ["gallbladder", r"gall[\s-]+bladder", "gb"],
        "finding": [
            "cholelithiasis", "gallstones?", "gall stones?", "cholecystitis", "pericholecystic",
            "cholecystostomy", "cholecyst[a-z]*", "biliary sludge",
        ],
        "removed": ["cholecystectomy", "cholecystectomies", r"gallbladder\s+agenesis"],
        "fossa": [r"gallbladder\s+(?:fossa|bed)", r"gall[\s-]+bladder\s+(?:fossa|bed)", "cholecystectomy bed"],
    },
    "esophagus": {
        "noun": ["esophagus", "oesophagus", r"esophageal\s+tissue", r"oesophageal\s+tissue"],
        "finding": ["esophageal", "oesophageal", "distal esophageal", "periesophageal", "esophag[a-z]*", "oesophag[a-z]*"],
        "removed": ["esophagectomy", "oesophagectomy"],
    },
    "stomach": {
        "noun": ["stomach", r"gastric\s+tissue"],
        "finding": [
            "gastric", "gastritis", "perigastric", "gastrostomy", "gastroparesis", "hiatal hernia",
            "hiatus hernia", "gastric bypass",
        ],
        "removed": ["gastrectomy", "gastrectomies"],
        "partial": ["sleeve gastrectomy", "antrectomy"],
    },
    "aorta": {
        "noun": ["aorta", "aortas"],
        "finding": ["aortic", "aaa", "periaortic", "abdominal aortic aneurysm", "aortic aneurysm"],
    },
    "inferior_vena_cava": {
        "noun": [r"inferior\s+vena\s+cava", r"vena\s+cava", "ivc", "cava", "postcava"],
        "finding": ["caval", "ivc filter"],
        # An interrupted IVC drains through an azygos (or hemiazygos) vein: no cava where the label is.
        "removed": [
            r"interrupted\s+(?:inferior\s+vena\s+cava|ivc)", r"interruption\s+of\s+the\s+(?:inferior\s+vena\s+cava|ivc)",
            r"azygos\s+continuation", r"hemiazygos\s+continuation",
        ],
    },
    "superior_vena_cava": {
        "noun": [r"superior\s+vena\s+cava", "svc"],
    },
    "portal_vein_and_splenic_vein": {
        "noun": [
            r"portal\s+veins?", r"main\s+portal\s+veins?", r"hepatic\s+portal\s+veins?", r"splenic\s+veins?", r"portal\s+venous\s+system",
            r"portal\s+and\s+splenic\s+veins?", "portosplenic", "splenoportal", r"portosplenic\s+confluence",
            r"splenoportal\s+confluence", "portomesenteric",
        ],
        "finding": [r"portal\s+venous", r"portal\s+vein\s+thrombosis", r"portal\s+hypertension"],
        # Chronic occlusion: the main portal vein is replaced by a web of small collaterals.
        "removed": [r"cavernous\s+transformation", r"portal\s+cavernoma"],
    },
    "pancreas": {
        "noun": ["pancreas", r"pancreatic\s+(?:tissue|parenchyma)"],
        "finding": ["pancreatic", "peripancreatic", "pancreatitis", "pancrea[a-z]*"],
        "removed": ["pancreatectomy", r"total\s+pancreatectomy"],
        "partial": [r"distal\s+pancreatectomy"],
    },
    "adrenal_gland": {
        "noun": [r"adrenal\s+gland", "adrenal", r"suprarenal\s+gland", r"adrenal\s+tissue"],
        "plural": [r"adrenal\s+glands", "adrenals", r"suprarenal\s+glands"],
        "finding": ["adrenal nodule", "adrenal mass", "adrenal adenoma", "adrenal hyperplasia"],
        "removed": ["adrenalectomy", "adrenalectomies", r"adrenal\s+agenesis"],
    },
    "duodenum": {
        "noun": ["duodenum", r"duodenal\s+tissue"],
        "finding": ["duodenal", "periduodenal"],
        "removed": ["duodenectomy"],
    },
    "urinary_bladder": {
        "noun": [r"urinary\s+bladder", "bladder"],
        "finding": ["perivesical", "cystitis"],
        "removed": ["cystectomy", r"radical\s+cystectomy", "cystoprostatectomy"],
        "partial": [r"partial\s+cystectomy"],
    },
    "prostate": {
        "noun": ["prostate", r"prostatic\s+tissue"],
        "finding": ["prostatic", "prostatomegaly", "prostate gland"],
        "removed": ["prostatectomy", "cystoprostatectomy"],
    },
    "uterus": {
        "noun": ["uterus", r"uterine\s+tissue"],
        "finding": ["uterine", "endometrial", "endometrium", "myometrium", "myometrial"],
        "removed": ["hysterectomy"],
        "partial": [r"supracervical\s+hysterectomy"],
    },
    "colon": {
        "noun": [
            "colon", r"large\s+bowel", r"large\s+intestine", "cecum", "caecum", r"sigmoid(?:\s+colon)?",
            r"hepatic\s+flexures?", r"splenic\s+flexures?",
        ],
        "finding": ["colonic", "colitis", "diverticulosis", "diverticulitis", "pericolonic"],
        "removed": ["colectomy", r"total\s+colectomy", "proctocolectomy"],
        "partial": ["hemicolectomy", r"sigmoid\s+colectomy", r"sigmoidectomy"],
    },
    "small_bowel": {
        "noun": [r"small\s+bowel", r"small[\s-]+intestine", "jejunum", "ileum"],
        "finding": ["jejunal", "ileal", r"small-bowel", "enteritis"],
    },
    "heart": {
        "noun": ["heart"],
        "finding": ["cardiac", "cardiomegaly", "pericardial", "pericardium"],
    },
    "lung": {
        "noun": ["lung", r"lung\s+base"],
        "plural": ["lungs", r"lung\s+bases", r"both\s+lungs"],
        "finding": ["pulmonary", "bibasilar", "pneumonia", "atelectasis"],
        "removed": ["pneumonectomy", "pneumonectomies"],
        "partial": ["lobectomy", r"wedge\s+resection"],
    },
    "lung_upper_lobe": {
        "noun": [r"upper\s+lobe", "lingula"],
        "plural": [r"upper\s+lobes"],
        "removed": [r"upper\s+lobectomy"],
        "sided": {"lul": "left", "rul": "right", "lingula": "left"},
    },
    "lung_middle_lobe": {
        "noun": [r"middle\s+lobe"],
        "removed": [r"middle\s+lobectomy"],
        "sided": {"rml": "right", r"middle\s+lobe": "right", r"middle\s+lobectomy": "right"},
    },
    "lung_lower_lobe": {
        "noun": [r"lower\s+lobe"],
        "plural": [r"lower\s+lobes"],
        "removed": [r"lower\s+lobectomy"],
        "sided": {"lll": "left", "rll": "right"},
    },
    "trachea": {
        "noun": ["trachea"],
        "finding": ["tracheal", "tracheostomy"],
    },
    "thyroid_gland": {
        "noun": [r"thyroid(?:\s+gland)?"],
        "finding": ["goiter", "goitre"],
        "removed": ["thyroidectomy", r"total\s+thyroidectomy"],
        "partial": ["hemithyroidectomy"],
    },
    "brain": {
        "noun": ["brain"],
    },
    "spinal_cord": {
        "noun": [r"spinal\s+cord"],
    },
    "iliac_artery": {
        "noun": [r"iliac\s+artery"],
        "plural": [r"iliac\s+arteries"],
    },
    "iliac_vena": {
        "noun": [r"iliac\s+vein"],
        "plural": [r"iliac\s+veins"],
    },
    "femur": {
        "noun": ["femur", r"femoral\s+(?:head|neck|shaft)"],
        "plural": ["femurs", "femora", r"femoral\s+heads"],
    },
}

#: Procedures that remove several organs at once: term -> {organ: "removed" | "partial"}.
#: A Whipple (pancreaticoduodenectomy) takes the pancreatic head, the duodenum and the gallbladder.
MULTI_ORGAN_PROCEDURES: dict[str, dict[str, str]] = {
    r"whipple(?:\s+procedure)?": {"pancreas": "partial", "duodenum": "removed", "gallbladder": "removed"},
    r"pancreaticoduodenectomy": {"pancreas": "partial", "duodenum": "removed", "gallbladder": "removed"},
    r"pancreatoduodenectomy": {"pancreas": "partial", "duodenum": "removed", "gallbladder": "removed"},
}

#: Phrases that contain an organ word but are not that organ. Matching them consumes the words.
IGNORED_TERMS: list[str] = [
    # vessels named after an organ belong to other structures (or to none of the label maps)
    r"renal\s+(?:arter(?:y|ies)|veins?|vessels?|vasculature|hilum\s+vessels)",
    r"hepatic\s+(?:arter(?:y|ies)|veins?|ducts?|vasculature)", r"common\s+hepatic\s+duct",
    r"splenic\s+arter(?:y|ies)", r"gastric\s+(?:arter(?:y|ies)|veins?)", r"gastroduodenal\s+artery",
    r"pancreaticoduodenal\s+(?:arter(?:y|ies)|veins?)", r"aortic\s+valve", r"cardiac\s+valve",
    r"pulmonary\s+(?:arter(?:y|ies)|veins?|embol(?:us|i|ism))", r"adrenal\s+veins?",
    # contrast phases and protocols are not anatomy
    r"portal\s+venous\s+phase", r"portal\s+(?:venous\s+)?phase", r"portal\s+venous\s+contrast",
    r"hepatic\s+(?:arterial|venous|portal)\s+phase", r"nephrographic(?:\s+phase)?", r"renal\s+protocol",
    r"pancreatic\s+protocol", r"pancreatic\s+phase", r"cardiac\s+gating",
    # accessory or transplanted tissue is not the native organ of the label map
    "splenules?", r"accessory\s+spleens?", "splenosis",
    # (a liver transplant *is* the liver in the image, so "liver transplant" is not listed here)
    *(rf"{organ}\s+(?:transplant|allograft)s?" for organ in ("renal", "kidney", "pancreas", "pancreatic")),
    r"transplant(?:ed)?\s+(?:kidney|pancreas|liver)", r"ovarian\s+cystectomy",
    # spaces between organs
    r"hepatorenal(?:\s+(?:recess|space|pouch))?", r"splenorenal(?:\s+(?:recess|ligament|shunt))?",
    r"gastrohepatic\s+ligament", r"hepatoduodenal\s+ligament", "aortocaval",
]

# ---------------------------------------------------------------------------------------------------
# Label names -> vocabulary entries.
# ---------------------------------------------------------------------------------------------------
#: Label base names (canonical, side removed) that listen to more than one vocabulary entry, or to
#: one under another name. A lung lobe also hears statements about the whole lung ("the lungs are
#: clear", "left pneumonectomy").
LABEL_CONCEPTS: dict[str, tuple[str, ...]] = {
    "prostate_uterus": ("prostate", "uterus"),
    "lung_upper_lobe": ("lung_upper_lobe", "lung"),
    "lung_middle_lobe": ("lung_middle_lobe", "lung"),
    "lung_lower_lobe": ("lung_lower_lobe", "lung"),
}

#: Other spellings of label base names met in user label maps.
LABEL_ALIASES: dict[str, str] = {
    "kidneys": "kidney",
    "adrenal_glands": "adrenal_gland",
    "adrenal": "adrenal_gland",
    "adrenals": "adrenal_gland",
    "lungs": "lung",
    "small_intestine": "small_bowel",
    "large_bowel": "colon",
    "oesophagus": "esophagus",
    "thyroid": "thyroid_gland",
    "iliac_vein": "iliac_vena",
    "portal_vein": "portal_vein_and_splenic_vein",
}

# ---------------------------------------------------------------------------------------------------
# Cues. All are regex fragments on lower-cased text.
# ---------------------------------------------------------------------------------------------------
#: The part of the body the image shows: the field of view, the scan range, or (for one axial slice)
#: "this level". An organ outside it is absent *from the image* (tag 0), whatever the patient has.
IMAGE_EXTENT: str = (
    r"(?:(?:the\s+)?(?:field\s+of\s+view|fov|(?:scan(?:ned)?|imag(?:ed|ing))\s+(?:range|volume|field|region|area)"
    r"|scan\s+coverage|imaged\s+levels?)"
    r"|(?:this|the\s+(?:current|present|same))\s+(?:level|slice|section|image|cut))"
)

#: Where an organ is said to be, relative to :data:`IMAGE_EXTENT`: inside it ("no splenic tissue
#: *at this level*", "not *in the field of view*") ...
IN_IMAGE_EXTENT: str = rf"(?:at|on|in|within|inside)\s+{IMAGE_EXTENT}"

#: ... or outside it ("*above the field of view*", "*outside the scan range*").
OUT_OF_IMAGE_EXTENT: str = rf"(?:(?:outside|above|below|beyond|out)(?:\s+of)?|excluded\s+from)\s+{IMAGE_EXTENT}"

#: Words that negate what follows: the organ itself ("no spleen is seen") or a finding ("no
#: splenomegaly"). Which one depends on what is negated (see :mod:`mosmoskit.reports.tags`).
NEGATION_CUES: list[str] = [
    "no", "without", "absent", r"negative\s+for", r"free\s+of", "neither", "nor", r"not\s+any",
]

#: Phrases that remove or deny the organ named next ("removal of the gallbladder", "agenesis of the
#: left kidney"). A partial qualifier before them keeps the organ ("partial resection of the liver").
REMOVAL_CUES: list[str] = [
    r"absence\s+of", r"surgical\s+absence\s+of", r"congenital\s+absence\s+of", r"post-?surgical\s+absence\s+of",
    r"removal\s+of", r"resection\s+of",
    r"excision\s+of", r"agenesis\s+of", r"aplasia\s+of", r"status\s+post\s+removal\s+of",
    r"non-?visuali[sz]ation\s+of", r"non-?visuali[sz]ed",
]

#: Words allowed between a negation/removal cue and the organ for the cue to reach it ("no evidence
#: of a left kidney", "no prior splenectomy"). Anything else (a finding noun, a preposition) breaks
#: the scope: "no free fluid around the liver" does not negate the liver.
PRE_FILLERS: list[str] = [
    "the", "a", "an", "any", "evidence", "of", "sign", "signs", "definite", "definitive", "visible",
    "visualized", "visualised", "identifiable", "discrete", "residual", "remaining", "native", "ct",
    "radiographic", "sonographic", "imaging", "prior", "previous", "history", "known", "surgical",
    "left", "right", "bilateral", "both", "either", "sided", "side", "normal", "intact", "other",
    "recent", "interval", "definitely",
]

#: Links between the items of a list ("the liver, spleen and pancreas"; "no gallbladder or spleen").
LIST_CONNECTORS: list[str] = ["or", "and", "nor", "the", "a", "an", "either", "left", "right", "both", "bilateral"]

_SEEN = (
    r"(?:seen|identified|visuali[sz]ed|visible|present|noted|evident|demonstrated|detected|appreciated|appreciable"
    r"|found|depicted|discernible|identifiable)\b"
)

#: After a negated organ noun, what makes it "the organ is not there" rather than a finding of the
#: organ: the end of the clause, a list end, or a verb of seeing, bare or after an auxiliary ("no
#: gallbladder is identified", "no spleen can be seen"). Anything else ("no liver lesion") makes the
#: negation about the finding, and so does a verb that is not one of seeing: in "no hepatomegaly,
#: and the spleen is normal" the list under "no" ends at "spleen", but "is normal" describes it.
CONTINUATION_ABSENCE: list[str] = [
    r"[,.;:)(]", "$", _SEEN,
    r"(?:is|are|was|were|has|have|had|can|could)(?:\s+(?:be|been|not|definitely|definitively|clearly|convincingly"
    r"|confidently|reliably|now|otherwise|currently|still|[a-z]+ly))*\s+" + _SEEN,
    r"(?:status|s/p|post)\b", r"(?:tissue|remains?)\b",
    # "no splenic tissue at this level", "no spleen (is) within the field of view": not in the image
    rf"(?:(?:is|are|was|were)\s+)?{IN_IMAGE_EXTENT}\b",
]

#: Words allowed between an organ and an after-cue ("the spleen *has been surgically* removed", "the
#: gallbladder *is probably* absent"). Hedge words are allowed here and then make the result
#: uncertain.
POST_FILLERS: list[str] = [
    "is", "are", "was", "were", "has", "have", "had", "been", "be", "appears", "appear", "seems",
    "seem", "to", "also", "again", "now", "either", "both", "already", "completely", "entirely",
    "previously", "still", "therefore", "thus", "itself", "themselves", "lies", "lie", "located",
    "situated",
]

#: After-cues that say the organ is not there.
POST_ABSENT: list[str] = [
    r"(?:surgically|post-?surgically|congenitally|now)?\s*absent",
    r"not\s+(?:been\s+)?(?:seen|visuali[sz]ed|identified|visible|demonstrated|detected|present|appreciated|evident|found)",
    r"(?:cannot|can\s*not|can't|could\s+not|couldn't)\s+be\s+(?:seen|visuali[sz]ed|identified|demonstrated|detected|found)",
    r"(?:surgically\s+)?(?:removed|resected|excised)",
    r"no\s+longer\s+(?:seen|visuali[sz]ed|identified|visible|present|demonstrated)",
    "missing", r"status\s+post\s+(?:removal|resection)",
    r"(?:is|are|was|were)n['’]?t\s+(?:been\s+)?(?:seen|visuali[sz]ed|identified|visible|demonstrated|detected|present)",
    # Outside the image: absent from the image (a spec decision: the tag says what the image shows).
    # "not included (at this level | in the field of view | in the scan range)", "not imaged".
    # ("not included in its entirety" is partial coverage: POST_PARTIAL is tried first.)
    r"not\s+(?:been\s+)?(?:included|imaged)",
    rf"not\s+{IN_IMAGE_EXTENT}",  # "not at this level", "not in the field of view"
    OUT_OF_IMAGE_EXTENT,  # "outside / above / below the field of view", "excluded from the scan range"
]

#: After-cues that leave presence open ("the gallbladder is not well seen"): uncertain (-1).
POST_UNCERTAIN: list[str] = [
    r"not\s+(?:well|clearly|adequately|optimally|fully|definitely|confidently|reliably|convincingly|entirely|definitively|separately)\s+(?:seen|visuali[sz]ed|identified|evaluated|assessed|delineated|demonstrated|imaged)",
    r"(?:poorly|suboptimally|incompletely|partially)\s+(?:seen|visuali[sz]ed|evaluated|assessed|delineated)",
    r"obscured", r"not\s+(?:evaluated|assessed)",
]

#: After-cues that say only part of the organ is gone or out of the image: present. They are tried
#: before the uncertain and absent ones, so "not fully included" is partial coverage (the organ
#: has voxels in the image), not "not included".
POST_PARTIAL: list[str] = [
    r"partially\s+(?:resected|removed|excised)", r"partially\s+absent",
    # partly inside the image
    r"not\s+(?:fully|entirely|completely|wholly)\s+(?:included|imaged)",
    r"(?:partially|partly|incompletely)\s+(?:included|imaged)",
    r"not\s+(?:been\s+)?(?:included|imaged)\s+(?:in\s+(?:its|their)\s+entirety|in\s+full|completely|entirely)",
    rf"(?:partly|partially|incompletely)\s+{OUT_OF_IMAGE_EXTENT}",  # "partly outside the field of view"
]

#: "The *upper pole of the* left kidney is not imaged", "the *tail of the* pancreas is outside the
#: field of view": an after-cue on the organ named after one of these speaks of a part of it, and
#: the rest of the organ is there (present). Matched right before the organ word (side words may
#: sit in between).
PART_OF_ORGAN: list[str] = [
    r"(?:upper|lower|superior|inferior|cranial|caudal)\s+(?:poles?|portions?|parts?|aspects?|margins?|edges?|extent|tips?)",
    "poles?", "domes?", "tips?", "tail", "head", "neck", "body", "fundus", "apex", "base", "portions?",
    "parts?", "aspects?", "margins?", "edges?", "segments?", "lobes?", "remainder", "rest", "most",
    "majority", "some", "bulk",
]

#: Qualifiers before a removal word that keep part of the organ ("partial nephrectomy", "distal
#: pancreatectomy").
PARTIAL_QUALIFIERS: list[str] = [
    "partial", "partially", "subtotal", "hemi", "distal", "proximal", "segmental", "wedge", "sleeve",
    "limited", r"near[\s-]+total", "lobar", "polar", r"upper[\s-]+pole", r"lower[\s-]+pole",
]

#: Hedges: an absence statement near one of these becomes uncertain ("possible prior
#: cholecystectomy", "the spleen is probably absent").
#: A hedge followed by one of these doubts the *cause* ("not seen, likely due to prior
#: splenectomy"), not the statement, and does not count.
_HEDGE_OF_CAUSE = r"(?!\s+(?:due|secondary|related|because|from)\b)"

HEDGE_WORDS: list[str] = [
    "possible", "possibly", "probable", rf"probably{_HEDGE_OF_CAUSE}", rf"likely{_HEDGE_OF_CAUSE}", "may",
    "might", "questionable",
    r"question\s+of", "suspected", "suspect", r"suspicious\s+(?:for|of)", r"suggest[a-z]*", "presumed",
    "presumably", "apparent", "apparently", "perhaps", "equivocal", "uncertain", r"\?", "versus", "vs",
    r"cannot\s+(?:be\s+)?(?:excluded|ruled\s+out|exclude)", r"not\s+excluded", r"could\s+represent",
    r"may\s+represent",
]

#: Hedges that follow the statement ("splenectomy cannot be excluded", "cholecystectomy?").
HEDGE_TRAILING: list[str] = [
    r"\?", r"(?:cannot|can\s*not|can't)\s+(?:be\s+)?(?:excluded|ruled\s+out|exclude)", r"(?:is\s+)?not\s+excluded",
    # "either surgically absent or contracted"
    r"or\s+(?:[a-z]+\s+){0,2}(?:contracted|collapsed|decompressed|atrophic|obscured|not\s+distended)",
    # "not visualized, possibly contracted": the sentence goes on to doubt its own absence; but
    # "not seen, likely due to prior splenectomy" only doubts the reason, not the absence.
    r"(?:is\s+)?(?:possible|probable|likely|suspected|presumed|questionable|uncertain|possibly|probably"
    r"|perhaps|presumably|maybe)"
    r"(?!\s+(?:due|secondary|related|from|because|post|status|s/p|surgically|absent|removed|resected"
    r"|(?:[a-z]+\s+)?[a-z]*ectomy))",
]

#: Words that place a paired organ: side word -> sides it names.
SIDE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left",),
    "right": ("right",),
    "bilateral": ("left", "right"),
    "bilaterally": ("left", "right"),
    "bilat": ("left", "right"),
    "both": ("left", "right"),
    "either": ("left", "right"),
    "neither": ("left", "right"),
    "lt": ("left",),
    "rt": ("right",),
}

#: Side words that are plural by themselves (used in the documentation and tests).
BOTH_SIDE_WORDS: tuple[str, ...] = tuple(w for w, s in SIDE_WORDS.items() if len(s) == 2)

#: Side phrases *after* a mention, within a few words ("renal cyst on the left", "hydronephrosis
#: bilaterally"). Group 1 is the side word.
SIDE_POST_PATTERNS: list[str] = [
    r"(?:on|in|at|of|to)\s+the\s+(left|right)\b",
    r"(bilaterally)\b",
    r"^\s*,?\s*(left|right)\s*(?:side|-?sided)?\s*(?:[,.;:]|$)",
]

#: "Kidneys: *the left* is absent": a side word standing for the side of a paired organ named just
#: before with a plural noun. Group 1 is the side word; an after-cue must follow.
SIDE_ANAPHORA: str = r"\b(?:the\s+)?(left|right)(?:\s+(?:one|side))?\b"

#: "Solitary right kidney": the named side is present and the *other* side absent. Group 1 is the
#: side; the value is the vocabulary entry.
SOLITARY_PATTERNS: dict[str, str] = {
    r"\bsolitary\s+(?:functioning\s+|native\s+)?(left|right)\s+kidney\b": "kidney",
    r"\bsolitary\s+(?:functioning\s+|native\s+)?(left|right)\s+(?:adrenal|adrenal\s+gland)\b": "adrenal_gland",
    r"\bsolitary\s+(?:functioning\s+|native\s+)?(left|right)\s+lung\b": "lung",
}

#: Words that make a fossa or bed "empty": the organ is absent.
EMPTY_WORDS: list[str] = ["empty", "vacant"]

#: Words that start a new clause inside a sentence: cues do not cross them.
CLAUSE_BREAKS: list[str] = ["but", "however", "whereas", "although", "though", "while", "otherwise"]


# ===================================================================================================
# Findings: the words of the finding-tag parser (:mod:`mosmoskit.reports.findings`)
# ===================================================================================================
# A finding tag ("hepatomegaly", "renal_lesion_left") belongs to one organ and has one *kind*:
# ``enlarged`` (hepatomegaly, aneurysm, distension, hyperplasia), ``atrophic`` (small, shrunken,
# flattened, contracted) or ``lesion`` (focal lesion, cyst, nodule, stone, wall thickening,
# thrombus). The parser finds an organ reference and a finding word in the same clause and ties
# the word to the nearest reference whose organ accepts it, so every table below is keyed by the
# vocabulary entry of :data:`ORGANS` (sides removed) and by kind.

#: The kinds a finding can have, in the order the finding table lists them.
FINDING_KIND_NAMES: tuple[str, ...] = ("enlarged", "atrophic", "lesion")

#: Words that point at an organ for the finding parser: ``singular`` nouns and adjectives, and
#: ``plural`` nouns that name both sides of a paired organ. Vessels and ducts named after an organ
#: are in :data:`FINDING_IGNORED`, so "hepatic vein" never points at the liver.
FINDING_ORGAN_REFS: dict[str, dict[str, list[str]]] = {
    "liver": {"singular": ["liver", "hepatic", r"hepatic\s+parenchyma"]},
    "spleen": {"singular": ["spleen", "splenic", r"splenic\s+parenchyma"]},
    "kidney": {"singular": ["kidney", "renal", r"renal\s+parenchyma"], "plural": ["kidneys"]},
    "gallbladder": {"singular": ["gallbladder", r"gall[\s-]+bladder", "gb"]},
    "esophagus": {"singular": ["esophagus", "oesophagus", "esophageal", "oesophageal"]},
    "stomach": {"singular": ["stomach", "gastric"]},
    "aorta": {"singular": ["aorta", "aortic"]},
    "inferior_vena_cava": {"singular": [r"inferior\s+vena\s+cava", r"vena\s+cava", "ivc", "cava", "caval", "postcava"]},
    "portal_vein_and_splenic_vein": {
        "singular": [
            r"portal\s+veins?", r"main\s+portal\s+veins?", r"splenic\s+veins?", r"portal\s+and\s+splenic\s+veins?",
            r"portal\s+venous\s+system", r"portal\s+venous", "portosplenic", "splenoportal", r"portosplenic\s+confluence",
            r"splenoportal\s+confluence",
        ],
    },
    "pancreas": {"singular": ["pancreas", "pancreatic", r"pancreatic\s+parenchyma"]},
    "adrenal_gland": {
        "singular": ["adrenal", r"adrenal\s+gland", r"suprarenal\s+gland"],
        "plural": ["adrenals", r"adrenal\s+glands", r"suprarenal\s+glands"],
    },
}

#: Finding words per organ and kind. A word counts for an organ only when the clause refers to that
#: organ (see :data:`FINDING_ORGAN_REFS`); "thickened" is adrenal hyperplasia but gastric wall
#: thickening, and means nothing for the gallbladder ("the gallbladder wall is not thickened").
_LESION_WORDS = ["lesions?", "mass(?:es)?", "nodules?", "cysts?", "tumou?rs?", r"hypodensit(?:y|ies)", "metastas[ie]s"]
_WALL_WORDS = [r"wall\s+thickening", "thickening", r"thickened\s+wall", r"wall\s+thickened", "thickened"]
_CLOT_WORDS = [r"filling\s+defects?", "thrombus", "thrombi", "thrombosis", "thrombosed", "clots?"]
_DILATED = ["dilated", "dilatation", "dilation", "distended", "distension", "distention", "enlarged", "enlargement"]
FINDING_WORDS: dict[str, dict[str, list[str]]] = {
    "liver": {
        "enlarged": ["enlarged", "enlargement"],
        "atrophic": ["atrophic", "atrophy", "shrunken", "small"],
        "lesion": [*_LESION_WORDS, "hemangiomas?"],
    },
    "spleen": {
        "enlarged": ["enlarged", "enlargement"],
        "atrophic": ["atrophic", "atrophy", "shrunken", "small"],
        "lesion": _LESION_WORDS,
    },
    "kidney": {
        "enlarged": ["enlarged", "enlargement"],
        "atrophic": ["atrophic", "atrophy", "shrunken", "small", r"cortical\s+thinning"],
        "lesion": [*_LESION_WORDS, "angiomyolipomas?"],
    },
    "gallbladder": {
        "enlarged": ["distended", "distension", "distention", "enlarged", "hydrops"],
        "atrophic": ["contracted", "shrunken", "atrophic", "small"],
        "lesion": ["stones?", "calculi", "calculus", "gallstones?", r"gall\s+stones?"],
    },
    "esophagus": {"enlarged": ["dilated", "dilatation", "dilation", "distended", "patulous"], "lesion": [*_WALL_WORDS, "mass(?:es)?"]},
    "stomach": {
        "enlarged": ["distended", "distension", "distention", "dilated", "dilatation"],
        "lesion": [*_WALL_WORDS, "mass(?:es)?", "lesions?"],
    },
    "aorta": {
        "enlarged": ["aneurysms?", "aneurysmal", "dilated", "dilatation", "ectatic", "ectasia", "enlarged"],
        "lesion": [*_WALL_WORDS, r"mural\s+thrombus"],
    },
    "inferior_vena_cava": {
        "enlarged": _DILATED,
        "atrophic": ["flat", "flattened", "flattening", r"slit[\s-]+like", "collapsed", "small"],
        "lesion": _CLOT_WORDS,
    },
    "portal_vein_and_splenic_vein": {"enlarged": _DILATED, "lesion": _CLOT_WORDS},
    "pancreas": {
        "enlarged": ["enlarged", "enlargement", "bulky"],
        "atrophic": ["atrophic", "atrophy", "shrunken", "small"],
        "lesion": [*_LESION_WORDS, "ipmns?"],
    },
    "adrenal_gland": {
        "enlarged": ["hyperplasia", "hyperplastic", "thickened", "thickening", "enlarged", "enlargement"],
        "atrophic": ["atrophic", "atrophy", "thin", "small"],
        "lesion": ["nodules?", "adenomas?", "mass(?:es)?", "lesions?", "incidentalomas?"],
    },
}

#: Finding words that count only right next to their organ ("small left kidney", "the spleen is
#: small"), never across a clause ("small hypoattenuating lesion in the spleen" is no atrophy).
FINDING_NEAR_ONLY: tuple[str, ...] = ("small", "thin", "flat")

#: Terms that name the organ and the finding at once: term -> ((vocabulary entry, kind), ...).
FINDING_STANDALONE: dict[str, tuple[tuple[str, str], ...]] = {
    "hepatomegaly": (("liver", "enlarged"),),
    "hepatosplenomegaly": (("liver", "enlarged"), ("spleen", "enlarged")),
    "splenomegaly": (("spleen", "enlarged"),),
    "nephromegaly": (("kidney", "enlarged"),),
    "cholelithiasis": (("gallbladder", "lesion"),),
    "cholecystolithiasis": (("gallbladder", "lesion"),),
    "gallstones?": (("gallbladder", "lesion"),),
    r"gall\s+stones?": (("gallbladder", "lesion"),),
    "aaa": (("aorta", "enlarged"),),
}

#: Statements that an organ is normal, and which kinds they deny: ``all`` ("unremarkable",
#: "normal", "within normal limits"), ``size`` (the enlarged and atrophic kinds: "normal in size",
#: "normal caliber"), ``lesion`` ("patent", said of a vein: no thrombus), ``none`` ("normal
#: enhancement" speaks of neither size nor lesions). Tried longest first at each place.
FINDING_NORMAL: dict[str, str] = {
    "unremarkable": "all",
    r"within\s+normal\s+limits": "all",
    r"normal(?:[\s-]+appearing|\s+in\s+appearance|\s+appearance)": "all",
    "normal": "all",
    r"normal(?:\s+in)?\s+(?:size|caliber|calibre|dimensions?|volume|bulk)": "size",
    r"normal[\s-]+sized": "size",
    # "normal hepatic size", "normal pancreatic enhancement": a look-ahead, so the organ word stays a reference
    r"normal(?=\s+[a-z]+\s+(?:size|caliber|calibre|bulk|volume)\b)": "size",
    r"normal(?=\s+(?:[a-z]+\s+)?(?:enhancement|attenuation|density|contour|position|course|shape|morphology|orientation)\b)": "none",
    "patent": "lesion",
}

#: Phrases that hold finding words or organ words but are neither: consumed before anything else.
FINDING_IGNORED: list[str] = [
    r"hepatic\s+(?:arter(?:y|ies)|veins?|ducts?|flexure|vasculature)", r"splenic\s+(?:arter(?:y|ies)|flexure)",
    r"renal\s+(?:arter(?:y|ies)|veins?|pelvis|pelvises|calyx|calyces|calcul(?:us|i)|stones?|sinus|collecting\s+system)",
    r"gastric\s+(?:arter(?:y|ies)|veins?|varices|antrum\s+contrast)", r"aortic\s+(?:valve|root|arch)",
    *(rf"{w}\s+ducts?(?:\s+(?:dilatation|dilation))?" for w in (r"common\s+bile", "bile", "biliary", "pancreatic", "cystic", "hepatic")),
    *(rf"{w}\s+(?:ductal\s+)?(?:dilatation|dilation)" for w in ("biliary", "ductal", r"intrahepatic\s+biliary")), "ductal",
    r"portal\s+venous\s+phase", r"portal\s+(?:venous\s+)?phase", r"lymph\s+nodes?", r"small[\s-]+bowel",
    r"small[\s-]+intestines?", "smaller", "smallest", "largest", "larger",
]

#: Words before a finding that negate it ("no", "without"); "not" negates what follows it
#: directly ("the spleen is not enlarged").
FINDING_NEGATIONS: list[str] = ["no", "without", r"negative\s+for", r"free\s+of", "nor", "neither", r"not\s+any", "not"]

#: Words before a finding that make it uncertain ("possible hepatic lesion"). Like every finding
#: term, each starts with a plain letter (the compiled expression is a tree on the first letters),
#: except the question mark.
FINDING_HEDGES: list[str] = [
    "possible", "possibly", "probable", "probably", "likely", "suspected", "suspect", r"suspicious\s+(?:for|of)",
    "questionable", r"question\s+of", r"concerning\s+for", r"may\s+represent", r"could\s+represent", r"may\s+be",
    r"cannot\s+exclude", r"can\s*not\s+exclude", "equivocal", "presumed", "presumably", "perhaps", r"\?",
]

#: Hedges right after a finding ("thrombus not excluded", "splenic lesion?"). A word about the
#: lesion's nature ("lesion, likely a cyst") is not a hedge of the lesion.
FINDING_HEDGES_TRAILING: list[str] = [
    r"(?:is\s+|are\s+)?not\s+excluded", r"(?:cannot|can\s*not|can't)\s+be\s+(?:excluded|ruled\s+out)",
    r"(?:is|are)\s+(?:possible|suspected|questioned|uncertain)", r"\?",
]

#: Words a negation or hedge reaches a finding through ("no *definite focal hepatic* lesion", "no
#: hepatomegaly *or* splenomegaly"). Organ words, side words and other finding words are let
#: through too; any other word ends the scope ("no hepatomegaly; the spleen *is* enlarged").
FINDING_SCOPE_WORDS: list[str] = [
    "a", "an", "the", "any", "evidence", "of", "sign", "signs", "definite", "definitive", "focal",
    "discrete", "suspicious", "significant", "new", "additional", "other", "obvious", "visible", "solid",
    "cystic", "hypodense", "hypoattenuating", "hyperdense", "enhancing", "simple", "complex", "or", "nor",
    "and", "main", "distal", "proximal", "abdominal", "wall", "mural", "gross", "convincing", "measurable",
    "appreciable", "identifiable", "mass-like", "nodular", "diffuse", "mild", "moderate", "severe",
    "marked", "markedly", "significantly", "definitely", "clearly", "grossly", "substantially", "further",
    "intrinsic", "acute", "chronic", "residual", "recurrent", "partial", "occlusive", "nonocclusive",
    "left", "right", "bilateral", "both", "either", "sided", "cortical", "organized", "bland", "tiny", "few",
    "several", "multiple", "numerous", "single", "solitary", "punctate", "subcentimeter", "large", "calcified",
    "incidental", "portal", "mesenteric", "venous",
]


def _check_tables(organs: Mapping[str, Mapping[str, object]]) -> None:
    """Fail at import time on a typo in the tables (an unknown kind, a sided term of a bad side)."""
    for organ, entry in organs.items():
        unknown = set(entry) - set(TERM_KINDS)
        if unknown:
            raise ValueError(f"vocabulary entry {organ!r} has unknown kinds {sorted(unknown)}; use {TERM_KINDS}")
        sided = entry.get("sided", {})
        if not isinstance(sided, Mapping) or any(s not in ("left", "right") for s in sided.values()):
            raise ValueError(f"vocabulary entry {organ!r}: 'sided' must map terms to 'left' or 'right'")
    for term, effects in MULTI_ORGAN_PROCEDURES.items():
        for organ, effect in effects.items():
            if organ not in organs or effect not in ("removed", "partial"):
                raise ValueError(f"procedure {term!r}: bad effect {organ!r}: {effect!r}")
    for label, concepts in LABEL_CONCEPTS.items():
        missing = [c for c in concepts if c not in organs]
        if missing:
            raise ValueError(f"LABEL_CONCEPTS[{label!r}] names unknown vocabulary entries {missing}")


_check_tables(ORGANS)
