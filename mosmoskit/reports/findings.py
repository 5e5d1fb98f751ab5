"""Finding tags from free-text radiology reports: which abnormality of which organ a report states.

Organ tags (:mod:`mosmoskit.reports.tags`) say whether an organ is *there*; most of them can be
guessed without looking at the organ (an abdominal CT report mentions the liver). Finding tags say
*what the organ looks like*: enlarged, atrophic, or holding a focal lesion. They can only be checked
by looking at the organ itself, which is what a localising pre-training signal needs.

The vocabulary
--------------
:data:`FINDING_TAGS` maps each finding tag to the organ (label-map name, BTCV spelling) it belongs
to, and :data:`FINDING_KINDS` to its *kind*: ``enlarged``, ``atrophic`` or ``lesion``. Paired
organs have one tag per side (``renal_lesion_left``). Only findings the phantom generator writes
and their common real phrasings are covered; see ``docs/report_tags.md`` for the full table.

Values, per finding tag:

* ``1``  the report states the finding: "hepatomegaly", "a 12 mm hypodense hepatic lesion",
  "the left kidney is atrophic", "partial portal vein thrombosis";
* ``0``  the report states it is not there: "no hepatomegaly", "no focal hepatic lesion", "the
  spleen is not enlarged", or a normal statement of the organ: "the liver is normal in size"
  denies hepatomegaly and liver atrophy, "the IVC is patent" denies an IVC thrombus, and
  "the pancreas is unremarkable" denies every pancreatic finding;
* ``-1`` the report does not say, or says it in an uncertain way ("possible hepatic lesion",
  "IVC thrombus not excluded").

A removed or missing organ is not a finding: "status post splenectomy" leaves every splenic finding
at ``-1`` (its organ tag is 0).

How a report is read
--------------------
1. The report is lower-cased and split into sentences and clauses as the organ-tag parser does.
2. One compiled expression finds organ references ("liver", "hepatic", "left kidney"), finding words
   ("enlarged", "cyst", "thrombus"), terms that carry both ("hepatomegaly", "cholelithiasis"),
   normal statements ("unremarkable", "normal in size", "patent"), negations and hedges; phrases
   such as "hepatic vein", "ductal dilatation" and "small bowel" are consumed first so they never
   count.
3. A finding word belongs to the nearest organ reference in its clause whose organ accepts it
   ("small hypoattenuating lesion in the spleen": a splenic lesion), and to every organ listed with
   that reference ("the liver and spleen are enlarged"). "Small", "thin" and "flat" count only next
   to their organ ("small left kidney", "the spleen is small").
4. A negation ("no", "without", "not", "negative for") or hedge ("possible", "suspected") reaches a
   finding through determiners, adjectives, organ words and list links only (NegEx-style scope).
5. Paired organs take their side from the reference ("left renal cyst", "cyst in the right kidney",
   "bilateral adrenal adenomas"); a negated finding without a side ("no adrenal nodule") denies it
   on both sides; a stated finding without a side cannot be placed and stays ``-1``.
6. Per finding tag over the whole report: stated beats denied beats uncertain.

Example:
    >>> from mosmoskit.reports.findings import extract_findings
    >>> found = extract_findings("Hepatomegaly without focal lesion. Left renal cyst. No splenomegaly.", "btcv")
    >>> found["hepatomegaly"], found["liver_lesion"], found["renal_lesion_left"], found["splenomegaly"]
    (1, 0, 1, 0)
    >>> found["renal_lesion_right"], found["liver_atrophy"]
    (-1, -1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping

import numpy as np

from mosmoskit.reports import vocabulary as V
from mosmoskit.reports.tags import (
    TAG_ABSENT,
    TAG_PRESENT,
    TAG_UNKNOWN,
    _DASHES,
    LabelMapLike,
    _check_report,
    _concepts_for,
    _grammar,
    _literal_at,
    _prefix_tree,
    tag_names,
)

__all__ = [
    "FINDING_KINDS",
    "FINDING_TABLE",
    "FINDING_TAGS",
    "FindingEvidence",
    "explain_findings",
    "extract_findings",
    "extract_findings_batch",
    "finding_names",
    "finding_tag",
]

#: Every finding tag: (name, organ as a BTCV label name, kind). The order is the column order of
#: :func:`extract_findings_batch`: organs in BTCV label order, kinds enlarged / atrophic / lesion.
FINDING_TABLE: tuple[tuple[str, str, str], ...] = (
    ("splenomegaly", "spleen", "enlarged"),
    ("splenic_atrophy", "spleen", "atrophic"),
    ("splenic_lesion", "spleen", "lesion"),
    ("renal_enlargement_right", "kidney_right", "enlarged"),
    ("renal_atrophy_right", "kidney_right", "atrophic"),
    ("renal_lesion_right", "kidney_right", "lesion"),
    ("renal_enlargement_left", "kidney_left", "enlarged"),
    ("renal_atrophy_left", "kidney_left", "atrophic"),
    ("renal_lesion_left", "kidney_left", "lesion"),
    ("gallbladder_distension", "gallbladder", "enlarged"),
    ("gallbladder_contracted", "gallbladder", "atrophic"),
    ("gallstones", "gallbladder", "lesion"),
    ("esophageal_dilatation", "esophagus", "enlarged"),
    ("esophageal_wall_thickening", "esophagus", "lesion"),
    ("hepatomegaly", "liver", "enlarged"),
    ("liver_atrophy", "liver", "atrophic"),
    ("liver_lesion", "liver", "lesion"),
    ("gastric_distension", "stomach", "enlarged"),
    ("gastric_wall_thickening", "stomach", "lesion"),
    ("aortic_aneurysm", "aorta", "enlarged"),
    ("aortic_wall_thickening", "aorta", "lesion"),
    ("ivc_dilatation", "inferior_vena_cava", "enlarged"),
    ("ivc_flattening", "inferior_vena_cava", "atrophic"),
    ("ivc_thrombus", "inferior_vena_cava", "lesion"),
    ("portal_vein_dilatation", "portal_vein_and_splenic_vein", "enlarged"),
    ("portal_vein_thrombosis", "portal_vein_and_splenic_vein", "lesion"),
    ("pancreatic_enlargement", "pancreas", "enlarged"),
    ("pancreatic_atrophy", "pancreas", "atrophic"),
    ("pancreatic_lesion", "pancreas", "lesion"),
    ("adrenal_hyperplasia_right", "adrenal_gland_right", "enlarged"),
    ("adrenal_atrophy_right", "adrenal_gland_right", "atrophic"),
    ("adrenal_nodule_right", "adrenal_gland_right", "lesion"),
    ("adrenal_hyperplasia_left", "adrenal_gland_left", "enlarged"),
    ("adrenal_atrophy_left", "adrenal_gland_left", "atrophic"),
    ("adrenal_nodule_left", "adrenal_gland_left", "lesion"),
)

#: Finding tag -> the organ (BTCV label name) it belongs to.
FINDING_TAGS: dict[str, str] = {name: organ for name, organ, _ in FINDING_TABLE}
#: Finding tag -> its kind: "enlarged", "atrophic" or "lesion".
FINDING_KINDS: dict[str, str] = {name: kind for name, _, kind in FINDING_TABLE}

_BY_ORGAN_KIND: dict[tuple[str, str], str] = {(organ, kind): name for name, organ, kind in FINDING_TABLE}
_RANK = {TAG_UNKNOWN: 1, TAG_ABSENT: 2, TAG_PRESENT: 3}  # uncertain < denied < stated
_SIZE_KINDS = ("enlarged", "atrophic")


def finding_tag(organ: str, kind: str) -> str | None:
    """The finding tag of ``organ`` (BTCV name) and ``kind``, or ``None`` if there is none.

    Example: ``finding_tag("liver", "enlarged") == "hepatomegaly"``;
    ``finding_tag("aorta", "atrophic") is None``.
    """
    return _BY_ORGAN_KIND.get((organ, kind))


@dataclass(frozen=True)
class FindingEvidence:
    """One statement's contribution to one finding tag (see :func:`explain_findings`).

    Attributes:
        finding: the finding tag.
        value: ``1`` stated, ``0`` denied, ``-1`` uncertain.
        term: the words of the report that were matched.
        reason: which rule decided the value.
        clause: the clause the statement sits in (lower-cased).
    """

    finding: str
    value: int
    term: str
    reason: str
    clause: str


# ---------------------------------------------------------------------------------------------------
# Compiled grammar
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Role:
    kind: str  # "ref", "word", "standalone", "normal", "ignored", "negation", "hedge"
    concept: str = ""
    detail: str = ""  # ref: "plural" | "singular"; word: finding kind; normal: scope
    effects: tuple[tuple[str, str], ...] = ()  # standalone: (concept, kind) pairs


@dataclass(frozen=True)
class _FindingGrammar:
    tokens: re.Pattern[str]
    roles: Mapping[str, tuple[_Role, ...]]
    near_only: frozenset[str]
    scope_words: frozenset[str]
    near_gap_words: frozenset[str]
    connector: re.Pattern[str]
    hedge_trailing: re.Pattern[str]
    side_word: re.Pattern[str]
    side_post: tuple[re.Pattern[str], ...]
    plain: re.Pattern[str]


#: Words allowed between a near-only word and its organ ("small, nodular liver", "the spleen is small").
_NEAR_GAP = (
    "is", "are", "was", "were", "appears", "appear", "seems", "the", "and", "very", "relatively", "slightly",
    "somewhat", "nodular", "contracted", "cirrhotic", "atrophic", "shrunken", "diffusely", "overall", "now",
)


@lru_cache(maxsize=1)
def _finding_grammar() -> _FindingGrammar:
    merged: dict[str, list[_Role]] = {}

    def add(pattern: str, role: _Role) -> None:
        merged.setdefault(pattern, []).append(role)

    for concept, entry in V.FINDING_ORGAN_REFS.items():
        for number in ("singular", "plural"):
            for pattern in entry.get(number, ()):
                add(pattern, _Role("ref", concept, number))
    for concept, kinds in V.FINDING_WORDS.items():
        for kind, patterns in kinds.items():
            for pattern in patterns:
                add(pattern, _Role("word", concept, kind))
    for pattern, effects in V.FINDING_STANDALONE.items():
        add(pattern, _Role("standalone", effects=tuple(effects)))
    for pattern, scope in V.FINDING_NORMAL.items():
        add(pattern, _Role("normal", detail=scope))
    for pattern in V.FINDING_IGNORED:
        add(pattern, _Role("ignored"))
    for pattern in V.FINDING_NEGATIONS:
        add(pattern, _Role("negation"))
    for pattern in V.FINDING_HEDGES:
        add(pattern, _Role("hedge"))
    # A standalone term ("gallstones") is also a gallbladder word; the standalone reading wins.
    for pattern, roles in merged.items():
        if any(r.kind == "standalone" for r in roles):
            merged[pattern] = [r for r in roles if r.kind != "word"]
    # Longest first, so "portal and splenic veins" beats "portal vein" and "normal in size" beats
    # "normal"; terms that start with plain letters are factored into a tree on those letters (as
    # the organ-tag parser does), which is what makes one pass over a report fast.
    ordered = sorted(merged, key=lambda p: (-len(p), p))
    named, roles = [], {}
    for i, pattern in enumerate(ordered):
        if re.compile(pattern).groups:
            raise ValueError(f"finding vocabulary term {pattern!r} has a capturing group; use (?:...) instead")
        roles[f"f{i}"] = tuple(merged[pattern])
        named.append((f"f{i}", pattern))
    factored = [(n, p) for n, p in named if _literal_at(p, 0)]
    others = [(n, p) for n, p in named if not _literal_at(p, 0)]
    if any(p[:1].isalpha() or p[:1] in "([" for _, p in others):
        raise ValueError(f"finding vocabulary terms must start with a plain letter: {[p for _, p in others]}")
    tree = r"(?<![a-z0-9])(?:" + _prefix_tree(factored, 0) + r")(?![a-z0-9])"
    g = _grammar()
    return _FindingGrammar(
        tokens=re.compile("|".join([tree, *(f"(?P<{n}>{p})" for n, p in others)])),
        roles=roles,
        near_only=frozenset(V.FINDING_NEAR_ONLY),
        scope_words=frozenset(V.FINDING_SCOPE_WORDS) | frozenset(V.SIDE_WORDS),
        near_gap_words=frozenset(_NEAR_GAP) | frozenset(V.SIDE_WORDS),
        connector=re.compile(r"(?:[\s,/&]|\b(?:" + "|".join(V.LIST_CONNECTORS) + r")\b)*"),
        hedge_trailing=re.compile(r"[\s,:\-]*(?:" + "|".join(V.FINDING_HEDGES_TRAILING) + ")"),
        side_word=g.side_word,
        side_post=g.side_post,
        plain=re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]"),
    )


# ---------------------------------------------------------------------------------------------------
# Label maps -> finding columns
# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _finding_plan(names: tuple[str, ...]) -> tuple[tuple[str, ...], Mapping[tuple[str, str | None, str], int]]:
    """Finding names for a label map's names, and (concept, side, kind) -> column."""
    labels = set()
    for name in names:
        concepts, side = _concepts_for(name)
        labels.update((c, side) for c in concepts)
    columns: list[str] = []
    index: dict[tuple[str, str | None, str], int] = {}
    for finding, organ, kind in FINDING_TABLE:
        concepts, side = _concepts_for(organ)
        if any((c, side) in labels for c in concepts):
            for c in concepts:
                index[(c, side, kind)] = len(columns)
            columns.append(finding)
    return tuple(columns), index


def finding_names(label_map: LabelMapLike) -> tuple[str, ...]:
    """The finding tags of ``label_map``: those whose organ is one of its structures, in
    :data:`FINDING_TABLE` order.

    Args:
        label_map: a :class:`~mosmoskit.labels.LabelMap`, a shipped name (``"btcv"``, ``"amos"``, ...)
            or a label-map JSON path. Names are matched as the organ-tag parser matches them
            (``right_kidney`` is ``kidney_right``, ``postcava`` the IVC).

    Returns:
        The finding tag names, e.g. all 35 for ``"btcv"``; none for a map without those organs.
    """
    return _finding_plan(tag_names(label_map))[0]


# ---------------------------------------------------------------------------------------------------
# Reading one clause
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Unit:
    start: int
    end: int
    text: str
    roles: tuple[_Role, ...] = ()  # empty: a plain word or punctuation
    sides: frozenset[str] | None = None  # refs of paired organs


def _units(clause: str, fg: _FindingGrammar) -> list[_Unit]:
    """The clause as matched vocabulary terms and the plain words and marks between them."""
    out: list[_Unit] = []
    pos = 0
    for hit in fg.tokens.finditer(clause):
        out.extend(_Unit(m.start() + pos, m.end() + pos, m.group(0)) for m in fg.plain.finditer(clause[pos : hit.start()]))
        out.append(_Unit(hit.start(), hit.end(), hit.group(0), fg.roles[hit.lastgroup]))  # type: ignore[index]
        pos = hit.end()
    out.extend(_Unit(m.start() + pos, m.end() + pos, m.group(0)) for m in fg.plain.finditer(clause[pos:]))
    return out


def _role(unit: _Unit, kind: str) -> list[_Role]:
    if any(r.kind == "ignored" for r in unit.roles):
        return []  # an ignored phrase ("hepatic vein") is nothing but a list item
    return [r for r in unit.roles if r.kind == kind]


_PAIRED = ("kidney", "adrenal_gland")


def _place_refs(clause: str, units: list[_Unit], fg: _FindingGrammar, window: int = 30) -> None:
    """Give each reference to a paired organ its sides ("left renal", "kidneys", "cyst on the right")."""
    refs = [i for i, u in enumerate(units) if _role(u, "ref") and _role(u, "ref")[0].concept in _PAIRED]
    for n, i in enumerate(refs):
        u = units[i]
        role = _role(u, "ref")[0]
        prev_end = max((units[j].end for j in range(i) if _role(units[j], "ref")), default=0)
        lo = max(prev_end, u.start - window)
        colon = clause.rfind(":", lo, u.start)
        found: set[str] = set()
        for word in fg.side_word.findall(clause, colon + 1 if colon >= 0 else lo, u.start):
            found.update(V.SIDE_WORDS[word])
        if not found:
            nxt = units[refs[n + 1]].start if n + 1 < len(refs) else len(clause)
            hi = min(nxt, u.end + window)
            for pattern in fg.side_post:
                hit = pattern.search(clause, u.end, hi)
                if hit:
                    found.update(V.SIDE_WORDS[hit.group(1)])
                    break
        if not found and role.detail == "plural":
            found = {"left", "right"}
        u.sides = frozenset(found) if found else None
    # A side-less reference takes the side of the nearest placed reference of its organ in the clause
    # ("hypodense lesion of the left kidney, likely a renal cyst").
    for i in refs:
        u = units[i]
        if u.sides is None:
            concept = _role(u, "ref")[0].concept
            placed = [j for j in refs if units[j].sides is not None and _role(units[j], "ref")[0].concept == concept]
            if placed:
                u.sides = units[min(placed, key=lambda j: abs(j - i))].sides


_LISTABLE = ("ref", "word", "standalone", "ignored")


def _gap_ok(units: list[_Unit], lo: int, hi: int, allowed: frozenset[str], max_words: int, list_commas: bool) -> bool:
    """Whether the units strictly between indices lo and hi are all allowed.

    Allowed are vocabulary terms that can stand in a list (organ words, finding words, ignored
    phrases such as "biliary dilatation"), the plain words of ``allowed`` and light punctuation; at
    most ``max_words`` words. With ``list_commas`` a comma is allowed only when a listable term
    follows it ("no hepatomegaly, splenomegaly or ..."), so "no hydronephrosis, small left renal
    cyst" does not negate the cyst.
    """
    words = 0
    for k in range(lo + 1, hi):
        u = units[k]
        if u.roles:
            if not any(r.kind in _LISTABLE for r in u.roles):
                return False
            words += 1
            continue
        if u.text == ",":
            if list_commas and (k + 1 >= len(units) or not any(r.kind in _LISTABLE for r in units[k + 1].roles)):
                return False
            continue
        if u.text in ("-", "/", "(", ")", ":"):
            continue
        if u.text not in allowed:
            return False
        words += 1
    return words <= max_words


def _modifier(units: list[_Unit], i: int, fg: _FindingGrammar) -> tuple[str, str] | None:
    """("negation" | "hedge", cue text) of the nearest cue whose scope reaches unit i, if any."""
    for k in range(i - 1, max(-1, i - 12), -1):
        cues = [r.kind for r in units[k].roles if r.kind in ("negation", "hedge")]
        if cues and _gap_ok(units, k, i, fg.scope_words, 8, list_commas=True):
            return cues[0], units[k].text
    return None


#: Words a trailing hedge reaches back over to its finding ("thrombus *in the* IVC cannot be excluded").
_TRAILING_GAP = frozenset(("in", "within", "of", "at", "into", "involving", "the", "a", "an", "this", "main", "distal",
                           "proximal", "upper", "lower", "infrarenal", "suprarenal", "is", "are", "left", "right"))


def _trailing_hedge(clause: str, units: list[_Unit], i: int, fg: _FindingGrammar) -> bool:
    """A hedge after the finding ("splenic lesion?", "thrombus in the IVC cannot be excluded").

    The hedge may follow the finding's own phrase (organ words and a few prepositions), but not a
    comma or another finding: in "IVC filling defect, thrombus not excluded" the filling defect is
    stated and only the thrombus is hedged.
    """
    k = i
    while True:
        end = units[k].end
        if fg.hedge_trailing.match(clause, end, min(len(clause), end + 40)):
            return True
        k += 1
        if k >= len(units) or k > i + 7:
            return False
        u = units[k]
        if u.roles:
            if not _role(u, "ref") and not any(r.kind == "ignored" for r in u.roles):
                return False  # another finding, a negation, a normal statement
        elif u.text not in _TRAILING_GAP and u.text not in ("(", ")", "-"):
            return False


def _chain(clause: str, units: list[_Unit], ref: int, fg: _FindingGrammar) -> list[int]:
    """The reference ``ref`` and every reference listed with it ("the liver, spleen and pancreas")."""
    refs = [i for i, u in enumerate(units) if _role(u, "ref")]
    pos = refs.index(ref)
    lo = hi = pos
    while lo > 0 and fg.connector.fullmatch(clause, units[refs[lo - 1]].end, units[refs[lo]].start):
        lo -= 1
    while hi + 1 < len(refs) and fg.connector.fullmatch(clause, units[refs[hi]].end, units[refs[hi + 1]].start):
        hi += 1
    return refs[lo : hi + 1]


def _ref_concepts(unit: _Unit) -> tuple[str, ...]:
    """The organs a unit refers to: a reference, or a term that names its organ ("hepatomegaly")."""
    refs = _role(unit, "ref")
    if refs:
        return (refs[0].concept,)
    standalone = _role(unit, "standalone")
    return tuple(dict.fromkeys(c for c, _ in standalone[0].effects)) if standalone else ()


def _nearest_ref(units: list[_Unit], i: int, accepts) -> int | None:
    """Index of the unit nearest to unit i (in characters) that refers to an organ passing ``accepts``."""
    best, best_d = None, None
    for j, u in enumerate(units):
        if j == i or not any(accepts(c) for c in _ref_concepts(u)):
            continue
        d = units[i].start - u.end if j < i else u.start - units[i].end
        if best_d is None or d < best_d:  # ties keep the earlier (preceding) reference
            best, best_d = j, d
    return best


def _near(units: list[_Unit], i: int, j: int, fg: _FindingGrammar) -> bool:
    """Whether a near-only word (unit i: "small", "thin", "flat") describes the organ of unit j.

    Only a few words may separate them ("small, nodular liver", "the spleen is small"), and an organ
    word right before a lesion word is a modifier, not the organ: in "small left renal cyst" the
    cyst is small, not the kidney.
    """
    if not _gap_ok(units, min(i, j), max(i, j), fg.near_gap_words, 3, list_commas=False):
        return False
    if i < j and j + 1 < len(units):
        nxt = units[j + 1]
        if any(r.detail == "lesion" for r in _role(nxt, "word")) or _role(nxt, "ref"):
            return False
    return True


def _accepting(word: _Unit) -> dict[str, str]:
    """concept -> kind for every organ that accepts this finding word."""
    return {r.concept: r.detail for r in _role(word, "word")}


@dataclass(frozen=True)
class _FVote:
    concept: str
    kind: str
    sides: frozenset[str] | None  # None: unplaced (only matters for paired organs)
    value: int  # TAG_PRESENT / TAG_ABSENT / TAG_UNKNOWN (uncertain)
    term: str
    reason: str
    clause: str


def _polarity(clause: str, units: list[_Unit], i: int, fg: _FindingGrammar) -> tuple[int, str]:
    mod = _modifier(units, i, fg)
    if mod is not None and mod[0] == "negation":
        return TAG_ABSENT, f"negated by {mod[1]!r}"
    if mod is not None or _trailing_hedge(clause, units, i, fg):
        return TAG_UNKNOWN, f"hedged by {mod[1]!r}" if mod else "hedged after"
    return TAG_PRESENT, "stated"


def _votes_in_clause(clause: str, fg: _FindingGrammar) -> list[_FVote]:
    units = _units(clause, fg)
    if not any(_role(u, "ref") or _role(u, "standalone") for u in units):
        return []
    _place_refs(clause, units, fg)
    votes: list[_FVote] = []
    for i, u in enumerate(units):
        if _role(u, "standalone"):
            value, reason = _polarity(clause, units, i, fg)
            sides = _standalone_sides(clause, units, i, fg)
            for concept, kind in _role(u, "standalone")[0].effects:
                votes.append(_FVote(concept, kind, sides, value, u.text, reason, clause))
        elif _role(u, "word"):
            accepts = _accepting(u)
            j = _nearest_ref(units, i, lambda c: c in accepts)
            if j is None or (u.text in fg.near_only and not _near(units, i, j, fg)):
                continue
            value, reason = _polarity(clause, units, i, fg)
            if not _role(units[j], "ref"):  # "hepatomegaly without focal lesion": the term names the organ
                sides = _standalone_sides(clause, units, j, fg)
                for concept in _ref_concepts(units[j]):
                    if concept in accepts:
                        votes.append(_FVote(concept, accepts[concept], sides, value, u.text,
                                            f"{reason}, of {units[j].text!r}", clause))
                continue
            for k in _chain(clause, units, j, fg):
                concept = _role(units[k], "ref")[0].concept
                if concept in accepts:
                    votes.append(_FVote(concept, accepts[concept], units[k].sides, value, u.text,
                                        f"{reason}, of {units[k].text!r}", clause))
        elif _role(u, "normal"):
            scope = _role(u, "normal")[0].detail
            if scope == "none" or _modifier(units, i, fg) is not None:
                continue
            if scope == "lesion":  # "patent": a vein without thrombus
                j = _nearest_ref(units, i, lambda c: "thrombus" in V.FINDING_WORDS.get(c, {}).get("lesion", ()))
            else:
                j = _nearest_ref(units, i, lambda c: True)
            if j is None or not _role(units[j], "ref"):
                continue
            kinds = {"all": V.FINDING_KIND_NAMES, "size": _SIZE_KINDS, "lesion": ("lesion",)}[scope]
            for k in _chain(clause, units, j, fg):
                ref = units[k]
                concept = _role(ref, "ref")[0].concept
                if concept in _PAIRED and ref.sides is None:
                    continue  # "the kidney is normal": which one?
                for kind in kinds:
                    votes.append(_FVote(concept, kind, ref.sides, TAG_ABSENT, u.text,
                                        f"normal statement ({scope}) of {ref.text!r}", clause))
    return votes


def _standalone_sides(clause: str, units: list[_Unit], i: int, fg: _FindingGrammar) -> frozenset[str] | None:
    prev_end = max((units[j].end for j in range(i) if _role(units[j], "ref") or _role(units[j], "standalone")), default=0)
    found: set[str] = set()
    for word in fg.side_word.findall(clause, max(prev_end, units[i].start - 30), units[i].start):
        found.update(V.SIDE_WORDS[word])
    return frozenset(found) if found else None


def _collect(text: str) -> list[_FVote]:
    g, fg = _grammar(), _finding_grammar()
    lowered = text.lower().translate(_DASHES)
    votes: list[_FVote] = []
    for sentence in g.sentence_split.split(lowered):
        for clause in g.clause_split.split(sentence):
            if clause and not clause.isspace():
                votes.extend(_votes_in_clause(clause, fg))
    return votes


def _columns(vote: _FVote, index: Mapping[tuple[str, str | None, str], int]) -> list[int]:
    """The finding columns a vote speaks for (a paired organ: its sides; unplaced and denied: both)."""
    if vote.concept not in _PAIRED:
        col = index.get((vote.concept, None, vote.kind))
        return [] if col is None else [col]
    sides = vote.sides
    if sides is None:
        if vote.value != TAG_ABSENT:
            return []  # "a renal cyst": which side?
        sides = frozenset(("left", "right"))  # "no adrenal nodule": neither side has one
    cols = [index.get((vote.concept, side, vote.kind)) for side in sorted(sides)]
    return [c for c in cols if c is not None]


def _finding_row(text: str, n: int, index: Mapping[tuple[str, str | None, str], int]) -> list[int]:
    best = [0] * n  # ranks; 0 = nothing said
    for vote in _collect(text):
        rank = _RANK[vote.value]
        for col in _columns(vote, index):
            if rank > best[col]:
                best[col] = rank
    to_value = {0: TAG_UNKNOWN, 1: TAG_UNKNOWN, 2: TAG_ABSENT, 3: TAG_PRESENT}
    return [to_value[r] for r in best]


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------
def extract_findings(text: str, label_map: LabelMapLike, *, allow_empty: bool = False) -> dict[str, int]:
    """Finding tags of one report, keyed by :func:`finding_names` of the label map.

    Args:
        text: the report.
        label_map: as in :func:`mosmoskit.reports.extract_tags`; it decides which findings are
            reported (those of its organs).
        allow_empty: return all ``-1`` for an empty or whitespace-only report instead of raising.

    Returns:
        ``{finding: value}`` in :data:`FINDING_TABLE` order, value in ``{1, 0, -1}``: stated,
        stated absent (negated or covered by a normal statement), not said or uncertain.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``text`` is empty or whitespace only and ``allow_empty`` is false.
    """
    names, index = _finding_plan(tag_names(label_map))
    if not _check_report(text, allow_empty):
        return dict.fromkeys(names, TAG_UNKNOWN)
    return dict(zip(names, _finding_row(text, len(names), index)))


def extract_findings_batch(texts: Iterable[str], label_map: LabelMapLike, *, allow_empty: bool = False) -> np.ndarray:
    """Finding tags of many reports as a matrix, columns in :func:`finding_names` order.

    Args:
        texts: the reports (any iterable of ``str``; not a single ``str``).
        label_map: as in :func:`extract_findings`.
        allow_empty: as in :func:`extract_findings`.

    Returns:
        int8 array of shape (N, F): N reports, F finding tags; values in ``{1, 0, -1}``.

    Raises:
        TypeError: ``texts`` is a single string, or one report is not a string (the message gives
            its index and type).
        ValueError: an empty report when ``allow_empty`` is false (the message gives its index).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("extract_findings_batch expects a sequence of reports, got a single string; use extract_findings")
    names, index = _finding_plan(tag_names(label_map))
    rows = []
    for i, text in enumerate(texts):
        if _check_report(text, allow_empty, where=f"report {i}"):
            rows.append(_finding_row(text, len(names), index))
        else:
            rows.append([TAG_UNKNOWN] * len(names))
    return np.asarray(rows, dtype=np.int8).reshape(len(rows), len(names))


def explain_findings(text: str, label_map: LabelMapLike) -> list[FindingEvidence]:
    """Every statement behind :func:`extract_findings`, in reading order, for debugging.

    Args:
        text: the report.
        label_map: as in :func:`extract_findings`.

    Returns:
        One :class:`FindingEvidence` per (statement, finding tag); stated findings of a paired organ
        that could not be placed on a side do not appear.

    Raises:
        TypeError, ValueError: as in :func:`extract_findings` (an empty report raises).
    """
    names, index = _finding_plan(tag_names(label_map))
    _check_report(text, allow_empty=False)
    return [FindingEvidence(names[col], vote.value, vote.term, vote.reason, vote.clause.strip())
            for vote in _collect(text) for col in _columns(vote, index)]
