"""The small, deterministic WordPiece vocabulary of the ``"tiny"`` text encoder.

The tiny encoder (see ``text_encoder.py``) exists so that tests and CPU demos run a real
tokenise -> transformer -> pool path without any download. Its vocabulary is data kept in code:

* the five BERT special tokens, first, at ids 0-4 (``[PAD]`` is id 0, as BERT configs expect);
* punctuation, digits, single letters and ``##``-continuation letters/digits, so that *every*
  lowercase ASCII word can be split into known pieces (an unknown word becomes letters, not
  ``[UNK]``; only non-ASCII symbols fall back to ``[UNK]``);
* a few common suffix wordpieces (``##s``, ``##ed``, ``##megaly`` ...);
* whole words: organ names of the shipped label maps, their synonyms and adjectives, radiology
  vocabulary, and common English words of reports.

The order of ``TINY_VOCAB`` fixes the token ids, so never reorder it: append new words at the end
of a group's list only if you accept that the ids of tiny encoders saved earlier no longer match.
Lower case only (the tokenizer lower-cases its input).
"""

from __future__ import annotations

import string

__all__ = ["SPECIAL_TOKENS", "TINY_VOCAB", "tiny_vocab"]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_PUNCTUATION: tuple[str, ...] = tuple(".,;:()[]-/%+='\"?!<>&*#")

_SUFFIXES: tuple[str, ...] = (
    "##s", "##es", "##ed", "##ing", "##ly", "##al", "##ic", "##ous", "##ity", "##ment", "##tion",
    "##ation", "##ness", "##er", "##or", "##ary", "##ial", "##ize", "##ise", "##ized", "##ised",
    "##megaly", "##itis", "##ectomy", "##ostomy", "##otomy", "##oma", "##graphy", "##scopy",
    "##logy", "##pathy", "##genic", "##dense", "##attenuating", "##enhancing",
)

_ANATOMY: tuple[str, ...] = (
    # organs and structures of the shipped label maps (btcv, amos, totalseg, mmwhs, brats)
    "spleen", "kidney", "kidneys", "gallbladder", "gall", "bladder", "esophagus", "oesophagus",
    "liver", "stomach", "aorta", "inferior", "superior", "vena", "cava", "postcava", "portal",
    "splenic", "vein", "veins", "artery", "arteries", "pancreas", "adrenal", "gland", "glands",
    "duodenum", "urinary", "prostate", "uterus", "lung", "lungs", "lobe", "lobes", "upper", "lower",
    "middle", "trachea", "thyroid", "small", "bowel", "colon", "cyst", "sacrum", "vertebra",
    "vertebrae", "heart", "pulmonary", "brachiocephalic", "trunk", "subclavian", "carotid",
    "common", "atrial", "appendage", "iliac", "humerus", "scapula", "clavicle", "clavicula",
    "femur", "hip", "hips", "spinal", "cord", "gluteus", "maximus", "medius", "minimus",
    "autochthon", "iliopsoas", "brain", "skull", "rib", "ribs", "sternum", "costal", "cartilage",
    "cartilages", "ventricle", "ventricles", "atrium", "atria", "myocardium", "ascending",
    "descending", "tumor", "tumour", "core", "edema", "oedema", "necrotic", "enhancing",
    "peritumoral", "spine", "pelvis", "abdomen", "chest", "thorax", "muscle", "muscles", "bone",
    "bones", "vessel", "vessels", "intervertebral", "disc", "discs", "duct", "ducts", "bile",
    "biliary", "appendix", "rectum", "ureter", "ureters", "mesentery", "peritoneum",
    "retroperitoneum", "diaphragm", "lymph", "node", "nodes",
)

_SYNONYMS: tuple[str, ...] = (
    # adjectives and synonyms the report parser maps to organ tags
    "hepatic", "hepato", "renal", "nephro", "pancreatic", "gastric", "esophageal", "oesophageal",
    "aortic", "caval", "cholecyst", "duodenal", "colonic", "cardiac", "suprarenal", "vesical",
    "thyroidal", "tracheal", "vertebral", "uterine", "prostatic", "cerebral", "ivc", "svc",
    "lv", "rv", "la", "ra", "myocardial", "ventricular", "intestine", "intestinal", "bowels",
)

_RADIOLOGY: tuple[str, ...] = (
    "ct", "mri", "mr", "scan", "scans", "contrast", "enhanced", "axial", "coronal", "sagittal",
    "image", "images", "imaging", "study", "exam", "examination", "findings", "finding",
    "impression", "history", "technique", "comparison", "normal", "abnormal", "unremarkable",
    "enlarged", "enlargement", "hepatomegaly", "splenomegaly", "cardiomegaly", "atrophic",
    "atrophy", "mass", "masses", "lesion", "lesions", "cysts", "nodule", "nodules",
    "calcification", "calcified", "stone", "stones", "calculus", "calculi", "hydronephrosis",
    "cirrhosis", "steatosis", "fatty", "dilated", "dilatation", "dilation", "thickening",
    "thickened", "wall", "fluid", "ascites", "effusion", "free", "air", "fat", "density",
    "attenuation", "hypodense", "hyperdense", "focal", "diffuse", "mild", "mildly", "moderate",
    "moderately", "severe", "severely", "large", "size", "sized", "measuring", "measures",
    "measured", "cm", "mm", "limits", "surgically", "absent", "absence", "status", "post",
    "resection", "resected", "removed", "splenectomy", "nephrectomy", "cholecystectomy",
    "hepatectomy", "pancreatectomy", "gastrectomy", "adrenalectomy", "visualized", "visualised",
    "seen", "identified", "evidence", "suspicious", "consistent", "compatible", "suggestive",
    "likely", "possible", "probable", "unchanged", "stable", "new", "prior", "compared",
    "bilateral", "bilaterally", "left", "right", "anterior", "posterior", "medial", "lateral",
    "proximal", "distal", "contour", "contours", "smooth", "irregular", "homogeneous",
    "heterogeneous", "metastasis", "metastases", "infarct", "infarction", "hemorrhage",
    "haemorrhage", "obstruction", "inflammation", "infection", "benign", "malignant", "tumors",
    "tumours", "mildly", "markedly", "unremarkably", "intact", "patent", "occluded", "stenosis",
    "aneurysm", "dissection", "fracture", "fractures", "degenerative", "changes", "change",
    "incidental", "simple", "complex", "organ", "organs", "tag", "tags", "report", "reports",
)

_ENGLISH: tuple[str, ...] = (
    "the", "a", "an", "and", "or", "but", "is", "are", "was", "were", "be", "been", "being", "has",
    "have", "had", "with", "without", "in", "on", "at", "to", "from", "for", "by", "as", "of",
    "into", "within", "near", "this", "that", "these", "those", "there", "which", "also", "no",
    "not", "none", "nor", "any", "some", "all", "both", "each", "either", "neither", "other",
    "otherwise", "appears", "appear", "appearance", "noted", "note", "present", "shows", "show",
    "shown", "demonstrates", "demonstrated", "patient", "slightly", "very", "more", "less", "than",
    "it", "its", "their", "they", "he", "she", "his", "her", "we", "you", "i", "can", "may",
    "might", "should", "will", "would", "could", "does", "do", "did", "up", "down", "out", "over",
    "under", "after", "before", "since", "again", "only", "well", "good", "poor", "one", "two",
    "three", "four", "five", "six", "seven", "eight", "nine", "ten", "first", "second", "third",
    "same", "side", "sides", "part", "parts", "region", "area", "level", "levels", "per", "about",
    "approximately", "up", "year", "years", "old", "male", "female", "man", "woman", "age",
    "time", "day", "days", "hello", "world", "text", "word", "words",
)


def tiny_vocab() -> tuple[str, ...]:
    """Build the vocabulary: special tokens, characters, suffixes, then whole words, deduplicated.

    Returns:
        The tokens in id order (``tokens[i]`` has id ``i``); the same tuple on every call.
    """
    groups = (
        SPECIAL_TOKENS,
        _PUNCTUATION,
        tuple(string.digits),
        tuple(string.ascii_lowercase),
        tuple(f"##{c}" for c in string.ascii_lowercase + string.digits),
        _SUFFIXES,
        _ANATOMY,
        _SYNONYMS,
        _RADIOLOGY,
        _ENGLISH,
    )
    # dict keeps first-seen order, so duplicates across groups (words listed twice on purpose for
    # readability of each group) never shift ids.
    ordered = dict.fromkeys(token for group in groups for token in group)
    return tuple(ordered)


TINY_VOCAB: tuple[str, ...] = tiny_vocab()
