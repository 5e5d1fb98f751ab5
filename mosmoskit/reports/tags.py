"""Rule-based organ tags from free-text radiology reports.

MOSMOS supervises an image encoder with the organs a report mentions. This module reads them: for
every foreground name of a label map it answers

* ``1``  the report describes the organ as there (normal or abnormal: "hepatomegaly", "no focal
  liver lesion", "the kidneys are unremarkable", "no splenomegaly");
* ``0``  the report says it is not there ("splenectomy", "the gallbladder is surgically absent",
  "the left kidney is not visualized", "no gallbladder is seen"), or not in the image ("the spleen
  is not included in the field of view", "no splenic tissue at this level"): the tag says what the
  image shows;
* ``-1`` the report does not say, or says it only in an uncertain way ("the gallbladder is not
  well seen", "possible prior cholecystectomy"): such a tag is masked out of the loss.

How a report is read
--------------------
1. The text is lower-cased and split into sentences (``.``, ``!``, ``;``, line breaks, bullets) and
   clauses ("but", "however", ...). Cues never cross a clause.
2. Organ terms from :mod:`mosmoskit.reports.vocabulary` are found with one compiled regular
   expression (longest term first, so "splenic vein" is the portal/splenic vein, not the spleen).
3. Each mention gets a vote from the cues around it:

   * an after-cue on an organ noun ("... is surgically absent", "... is not visualized",
     "... has been removed", "... is outside the field of view", "... is not included at this
     level") -> absent; "... is not well seen" -> uncertain; "... is partially resected", "... is
     not fully included" -> present; an after-cue on a part of the organ ("the upper pole of the
     left kidney is not imaged") -> present;
   * a negation before it ("no", "without", "absent", "no evidence of") that reaches it through
     nothing but determiners and list links: an organ *noun* followed by the end of the clause, a
     verb of seeing or a place in the image ("no gallbladder is seen", "no spleen.", "no splenic
     tissue at this level") -> absent; an adjective or finding
     ("no splenomegaly", "no renal calculi", "no liver lesion") -> present;
   * a removal word ("splenectomy", "left nephrectomy") -> absent, unless qualified as partial
     ("partial nephrectomy", "distal pancreatectomy") or negated ("no prior cholecystectomy");
   * anything else -> present.

   An absence with a hedge next to it ("possible", "probably", "?", "cannot be excluded") becomes
   uncertain.
4. Paired organs (any label with ``left``/``right`` in its name) take their side from the words
   before the mention ("left kidney", "bilateral renal cysts", "right and left adrenal glands"),
   from a few words after it ("renal cyst on the left", "hydronephrosis bilaterally") or from the
   term itself ("kidneys" names both). A side-less singular mention ("a renal cyst", "status post
   nephrectomy") cannot be placed and tags neither side, except a *negated finding* ("no
   hydronephrosis", "no adrenal nodule"), which in reports describes the pair and tags both as
   present (:attr:`TagRules.negated_sideless_is_bilateral`). When the same clause places the organ
   on a side ("unremarkable left kidney without hydronephrosis"), a side-less mention that says it
   is there belongs to that side only (:attr:`TagRules.sideless_follows_clause_side`).
5. Votes are combined per tag: absent beats present ("Status post splenectomy. The spleen is
   normal." -> 0, :attr:`TagRules.absence_wins`), present beats uncertain, and a tag with no vote is
   ``-1``.

Labels whose structure has no vocabulary (ribs, vertebrae, muscles, ...) are always ``-1``:
:func:`untagged_names` lists them for a label map.

Example:
    >>> from mosmoskit.reports import extract_tags
    >>> tags = extract_tags("No splenomegaly. Status post cholecystectomy. Left renal cyst.", "btcv")
    >>> tags["spleen"], tags["gallbladder"], tags["kidney_left"], tags["kidney_right"]
    (1, 0, 1, -1)
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mosmoskit.labels import LabelMap, available_label_maps, canonical_name, load_label_map
from mosmoskit.reports import vocabulary as V

__all__ = [
    "TAG_ABSENT",
    "TAG_PRESENT",
    "TAG_UNKNOWN",
    "TagEvidence",
    "TagRules",
    "explain_tags",
    "extract_tags",
    "extract_tags_batch",
    "tag_names",
    "untagged_names",
]

TAG_PRESENT = 1
TAG_ABSENT = 0
TAG_UNKNOWN = -1

# Vote strengths while combining mentions of one tag; the larger wins (see TagRules.absence_wins).
_NONE, _UNCERTAIN, _PRESENT, _ABSENT = 0, 1, 2, 3
_VOTE_TO_TAG = {_NONE: TAG_UNKNOWN, _UNCERTAIN: TAG_UNKNOWN, _PRESENT: TAG_PRESENT, _ABSENT: TAG_ABSENT}
_BOTH = frozenset(("left", "right"))

LabelMapLike = LabelMap | str | Path


@dataclass(frozen=True)
class TagRules:
    """The tunable parts of the parser. The defaults are the documented behaviour.

    Args:
        side_window: characters before a mention searched for a side word ("left", "bilateral").
            The search also stops at the previous organ mention and at a colon.
        side_post_window: characters after a mention searched for a side phrase ("on the left").
        hedge_window: characters before an absence statement searched for a hedge ("possible").
        continuation_window: characters after a negated organ noun inspected to decide whether the
            organ itself ("no spleen is seen") or a finding of it ("no spleen lesion") is negated.
        negated_sideless_is_bilateral: a negated finding without a side ("no hydronephrosis")
            tags both sides of a paired organ as present.
        sideless_follows_clause_side: a side-less mention that says the organ is there takes the
            side of the nearest mention of the same organ in its clause that is placed and there
            ("unremarkable left kidney without hydronephrosis": the left only), before
            ``negated_sideless_is_bilateral`` is considered. Placed mentions that say the organ is
            absent ("left nephrectomy, no hydronephrosis") lend no side: a finding cannot be about
            a removed organ.
        absence_wins: when one sentence says absent and another present, the tag is absent. If
            false, present wins.

    Raises:
        ValueError: a window that is negative.
    """

    side_window: int = 30
    side_post_window: int = 30
    hedge_window: int = 40
    continuation_window: int = 40
    negated_sideless_is_bilateral: bool = True
    sideless_follows_clause_side: bool = True
    absence_wins: bool = True

    def __post_init__(self) -> None:
        for name in ("side_window", "side_post_window", "hedge_window", "continuation_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TagRules.{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class TagEvidence:
    """One mention's contribution to one tag (see :func:`explain_tags`).

    Attributes:
        tag: the label-map name the vote counts for.
        value: ``1`` present, ``0`` absent, ``-1`` uncertain.
        term: the words of the report that were matched.
        reason: which rule decided the value.
        clause: the clause the mention sits in (lower-cased).
    """

    tag: str
    value: int
    term: str
    reason: str
    clause: str


# ---------------------------------------------------------------------------------------------------
# Compiled grammar (built once per process)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Term:
    effects: tuple[tuple[str, str], ...]  # (vocabulary concept, kind)
    side: frozenset[str] | None  # side carried by the term itself ("lul", "kidneys")


@dataclass(frozen=True)
class _Grammar:
    terms: re.Pattern[str]
    term_info: Mapping[str, _Term]
    cues: re.Pattern[str]
    cue_kind: Mapping[str, str]  # cue group name -> "negation" | "removal"
    pre_filler: re.Pattern[str]
    connector: re.Pattern[str]
    continuation: re.Pattern[str]
    post: re.Pattern[str]
    partial_before: re.Pattern[str]
    part_of: re.Pattern[str]
    hedge: re.Pattern[str]
    hedge_trailing: re.Pattern[str]
    side_word: re.Pattern[str]
    side_post: tuple[re.Pattern[str], ...]
    side_anaphora: re.Pattern[str]
    solitary: tuple[tuple[re.Pattern[str], str], ...]
    empty: re.Pattern[str]
    sentence_split: re.Pattern[str]
    clause_split: re.Pattern[str]


def _bounded(pattern: str) -> str:
    """Wrap a fragment in word boundaries when it starts with a letter (``\\?`` needs none)."""
    if pattern[:1].isalpha() or pattern.startswith(("(", "[")):
        return rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])"
    return f"(?:{pattern})"


def _alternation(patterns: Iterable[str]) -> str:
    return "|".join(_bounded(p) for p in patterns)


def _words(words: Iterable[str]) -> str:
    return r"\b(?:" + "|".join(words) + r")\b"


def _is_open_ended(pattern: str) -> bool:
    return "[a-z]*" in pattern


def _literal_at(pattern: str, depth: int) -> bool:
    """Whether character ``depth`` of a term is a plain letter that no quantifier applies to."""
    return len(pattern) > depth and pattern[depth].isalpha() and pattern[depth + 1 : depth + 2] not in ("?", "*", "+", "{")


def _prefix_tree(items: list[tuple[str, str]], depth: int, max_depth: int = 3, min_split: int = 4) -> str:
    """Alternation of named terms sharing their first ``depth`` letters, factored on the next one.

    Order is kept inside every branch; two branches can never match at the same place (they start
    with different letters), so the result matches exactly what the flat alternation matches. A
    group is left flat when one of its terms has no plain letter at ``depth`` or it is small.
    """
    if depth >= max_depth or len(items) < min_split or not all(_literal_at(p, depth) for _, p in items):
        return "|".join(f"(?P<{n}>{p[depth:]})" for n, p in items)
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, pattern in items:
        groups.setdefault(pattern[depth], []).append((name, pattern))
    return "|".join(f"{c}(?:{_prefix_tree(sub, depth + 1, max_depth, min_split)})" for c, sub in groups.items())


@lru_cache(maxsize=1)
def _grammar() -> _Grammar:
    """Compile the vocabulary into the regular expressions the parser runs."""
    merged: dict[str, list[tuple[str, str]]] = {}
    sides: dict[str, frozenset[str]] = {}
    for concept, entry in V.ORGANS.items():
        for kind in ("noun", "plural", "finding", "removed", "partial", "fossa"):
            for pattern in entry.get(kind, ()):  # type: ignore[union-attr]
                merged.setdefault(pattern, []).append((concept, kind))
                if kind == "plural":
                    sides[pattern] = _BOTH
        for pattern, side in dict(entry.get("sided", {})).items():  # type: ignore[arg-type]
            if pattern not in merged:
                merged[pattern] = [(concept, "noun")]
            sides[pattern] = frozenset((side,))
    for pattern, effects in V.MULTI_ORGAN_PROCEDURES.items():
        merged.setdefault(pattern, []).extend((organ, kind) for organ, kind in effects.items())
    for pattern in V.IGNORED_TERMS:
        merged.setdefault(pattern, []).append(("", "ignored"))

    # Python tries alternatives in order: specific phrases first, open-ended catch-alls last.
    ordered = sorted(merged, key=lambda p: (_is_open_ended(p), -len(p), p))
    info: dict[str, _Term] = {}
    named: list[tuple[str, str]] = []
    for i, pattern in enumerate(ordered):
        if re.compile(pattern).groups:
            raise ValueError(f"vocabulary term {pattern!r} has a capturing group; use (?:...) instead")
        info[f"t{i}"] = _Term(tuple(dict.fromkeys(merged[pattern])), sides.get(pattern))
        named.append((f"t{i}", pattern))
    # Terms that start with plain letters are factored into a tree on those letters, so at each
    # word the engine only tries the few terms that share its first letters (about 4x faster than a
    # flat alternation). Terms that start with a class or group are tried after them; only the
    # open-ended catch-alls are in that position, and they must come last anyway.
    factored = [(n, p) for n, p in named if _literal_at(p, 0)]
    for _, pattern in named:
        if not _literal_at(pattern, 0) and not _is_open_ended(pattern):
            raise ValueError(
                f"vocabulary term {pattern!r} must start with a plain letter (only open-ended "
                f"catch-alls such as '[a-z]*nephr[a-z]*' may start with a class); spell out its variants"
            )
    others = [f"(?P<{n}>{p})" for n, p in named if not _literal_at(p, 0)]
    branches = [_prefix_tree(factored, 0)] + others
    terms = re.compile(r"(?<![a-z0-9])(?:" + "|".join(b for b in branches if b) + r")(?![a-z0-9])")

    cue_kinds = {**{p: "negation" for p in V.NEGATION_CUES}, **{p: "removal" for p in V.REMOVAL_CUES}}
    cue_named = [(f"c{i}", p) for i, p in enumerate(sorted(cue_kinds, key=lambda p: (-len(p), p)))]
    cues = re.compile(r"(?<![a-z0-9])(?:" + _prefix_tree(cue_named, 0) + r")(?![a-z0-9])")
    hedge_words = _alternation(V.HEDGE_WORDS)
    post = re.compile(
        r"(?:[\s,:()\-]|" + _words(V.POST_FILLERS) + "|" + hedge_words + ")*?"
        + f"(?:(?P<partial>{_alternation(V.POST_PARTIAL)})|(?P<uncertain>{_alternation(V.POST_UNCERTAIN)})"
        + f"|(?P<absent>{_alternation(V.POST_ABSENT)}))"
    )
    return _Grammar(
        terms=terms,
        term_info=info,
        cues=cues,
        cue_kind={n: cue_kinds[p] for n, p in cue_named},
        pre_filler=re.compile(r"(?:[\s\-]|" + _words(V.PRE_FILLERS) + ")*"),
        connector=re.compile(r"(?:[\s,/&]|" + _words(V.LIST_CONNECTORS) + ")*"),
        continuation=re.compile(r"\s*(?:" + "|".join(V.CONTINUATION_ABSENCE) + ")"),
        post=post,
        partial_before=re.compile(_alternation(V.PARTIAL_QUALIFIERS)),
        # "the upper pole of the (left) ..." right before an organ word
        part_of=re.compile(
            "(?:" + _alternation(V.PART_OF_ORGAN) + r")\s+of\s+(?:(?:the|this|both|either|" + "|".join(V.SIDE_WORDS)
            + r")[\s-]+|(?:left|right)-sided\s+)*$"
        ),
        hedge=re.compile(hedge_words),
        hedge_trailing=re.compile(r"[\s,:\-]*(?:" + _alternation(V.HEDGE_TRAILING) + ")"),
        side_word=re.compile(_words(re.escape(w) for w in V.SIDE_WORDS)),
        side_post=tuple(re.compile(p) for p in V.SIDE_POST_PATTERNS),
        side_anaphora=re.compile(V.SIDE_ANAPHORA),
        solitary=tuple((re.compile(p), concept) for p, concept in V.SOLITARY_PATTERNS.items()),
        empty=re.compile(_words(V.EMPTY_WORDS)),
        sentence_split=re.compile(r"[;\n\r\u2022]+|[.!](?!\d)"),
        clause_split=re.compile(r",?\s*" + _words(V.CLAUSE_BREAKS)),
    )


# ---------------------------------------------------------------------------------------------------
# Label maps -> tag plan (cached per label map)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    names: tuple[str, ...]
    # vocabulary concept -> ((tag index, side or None), ...)
    listeners: Mapping[str, tuple[tuple[int, str | None], ...]]


def _split_side(canonical: str) -> tuple[str, str | None]:
    """``kidney_left`` -> (``kidney``, ``left``); ``left_atrium`` -> (``atrium``, ``left``)."""
    parts = canonical.split("_")
    for side in ("left", "right"):
        if side in parts:
            rest = [p for p in parts if p != side]
            return "_".join(rest), side
    return canonical, None


def _concepts_for(name: str) -> tuple[tuple[str, ...], str | None]:
    base, side = _split_side(canonical_name(name))
    base = V.LABEL_ALIASES.get(base, base)
    if base in V.LABEL_CONCEPTS:
        return V.LABEL_CONCEPTS[base], side
    if base in V.ORGANS:
        return (base,), side
    return (), side


@lru_cache(maxsize=64)
def _plan(names: tuple[str, ...]) -> _Plan:
    listeners: dict[str, list[tuple[int, str | None]]] = {}
    for index, name in enumerate(names):
        concepts, side = _concepts_for(name)
        for concept in concepts:
            listeners.setdefault(concept, []).append((index, side))
    return _Plan(names, {c: tuple(v) for c, v in listeners.items()})


@lru_cache(maxsize=16)
def _shipped_names(name: str) -> tuple[str, ...]:
    return load_label_map(name).foreground_names


def tag_names(label_map: LabelMapLike) -> tuple[str, ...]:
    """The tag keys for ``label_map``: its foreground names, in label-map (id) order.

    Args:
        label_map: a :class:`~mosmoskit.labels.LabelMap`, a shipped name (``"btcv"``, ``"amos"``,
            ``"totalseg_ct"``, ...) or the path of a label-map JSON file.

    Raises:
        ValueError / FileNotFoundError: from :func:`mosmoskit.labels.load_label_map`.
    """
    if isinstance(label_map, LabelMap):
        return label_map.foreground_names
    if isinstance(label_map, str) and label_map in available_label_maps():
        return _shipped_names(label_map)  # shipped maps never change: parse the JSON once
    return load_label_map(label_map).foreground_names


def untagged_names(label_map: LabelMapLike) -> tuple[str, ...]:
    """Names of ``label_map`` that the vocabulary does not cover: their tag is always ``-1``."""
    return tuple(n for n in tag_names(label_map) if not _concepts_for(n)[0])


# ---------------------------------------------------------------------------------------------------
# Reading one report
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Mention:
    start: int
    end: int
    term: _Term
    cue: re.Match[str] | None = None  # the pre-cue whose scope reaches this mention
    cue_kind: str | None = None  # "negation" or "removal"
    cue_absence: bool = False  # that cue negates the organ itself, not a finding of it
    chain_start: int = 0  # start of the list this mention belongs to (for hedges)


@dataclass(frozen=True)
class _Vote:
    concept: str
    strength: int
    sides: frozenset[str] | None
    negated: bool
    term: str
    reason: str
    clause: str


def _clauses(text: str, g: _Grammar) -> Iterable[str]:
    for sentence in g.sentence_split.split(text):
        for clause in g.clause_split.split(sentence):
            if clause and not clause.isspace():
                yield clause


def _sides(clause: str, mentions: list[_Mention], i: int, g: _Grammar, rules: TagRules) -> frozenset[str] | None:
    m = mentions[i]
    if m.term.side is not None and len(m.term.side) == 1:
        return m.term.side  # "lul", "middle lobe": the term names its side
    lo = max(mentions[i - 1].end if i else 0, m.start - rules.side_window)
    colon = clause.rfind(":", lo, m.start)
    found: set[str] = set()
    for word in g.side_word.findall(clause, colon + 1 if colon >= 0 else lo, m.start):
        found.update(V.SIDE_WORDS[word])
    if found:
        return frozenset(found)
    hi = min(mentions[i + 1].start if i + 1 < len(mentions) else len(clause), m.end + rules.side_post_window)
    for pattern in g.side_post:
        hit = pattern.search(clause, m.end, hi)
        if hit:
            return frozenset(V.SIDE_WORDS[hit.group(1)])
    return m.term.side  # plural nouns name both sides; otherwise None (cannot be placed)


def _hedged(clause: str, lo: int, hi: int, g: _Grammar, rules: TagRules, floor: int) -> bool:
    """A hedge in [lo - hedge_window, hi) (not before ``floor``) or right after ``hi``."""
    if g.hedge.search(clause, max(floor, lo - rules.hedge_window), hi):
        return True
    return g.hedge_trailing.match(clause, hi, min(len(clause), hi + rules.hedge_window)) is not None


def _chain_ends(clause: str, mentions: list[_Mention], g: _Grammar) -> list[int]:
    """For each mention, the index of the last mention of the list it starts ("liver, spleen and
    pancreas"): mentions joined by nothing but list connectors. Built backwards in one pass."""
    ends = list(range(len(mentions)))
    for j in range(len(mentions) - 2, -1, -1):
        if g.connector.fullmatch(clause, mentions[j].end, mentions[j + 1].start):
            ends[j] = ends[j + 1]
    return ends


def _assign_cues(clause: str, mentions: list[_Mention], ends: list[int], g: _Grammar, rules: TagRules) -> None:
    """Attach each negation/removal cue to the list of mentions it reaches.

    Cues are visited last to first and a mention keeps the nearest cue before it, so every mention
    is assigned once (linear in the clause length, however long its lists are).
    """
    n = len(mentions)
    starts = [m.start for m in mentions]
    for cue in reversed(list(g.cues.finditer(clause))):
        i = bisect.bisect_left(starts, cue.end())  # first mention after the cue
        if i == n or not g.pre_filler.fullmatch(clause, cue.end(), mentions[i].start):
            continue
        if i and mentions[i - 1].end > cue.end():
            continue  # the cue word lies inside a matched term
        kind = g.cue_kind[cue.lastgroup]  # type: ignore[index]
        end = mentions[ends[i]].end
        absence = g.continuation.match(clause, end, min(len(clause), end + rules.continuation_window)) is not None
        for k in range(i, ends[i] + 1):
            if mentions[k].cue is not None:
                break  # a nearer cue already covers the rest of this list
            mentions[k].cue = cue
            mentions[k].cue_kind = kind
            mentions[k].cue_absence = absence
            mentions[k].chain_start = cue.start()


def _post_cue(clause: str, mentions: list[_Mention], ends: list[int], i: int, g: _Grammar) -> re.Match[str] | None:
    """The after-cue of mention i's list ("the gallbladder and spleen *are absent*"), if any."""
    j = ends[i]
    hit = g.post.match(clause, mentions[j].end)
    if hit is None:
        return None
    if hit.group("absent") is not None:
        # "liver, spleen, absent gallbladder": "absent" opens the next mention, it does not close this one.
        nxt = j + 1
        if nxt < len(mentions) and g.pre_filler.fullmatch(clause, hit.end(), mentions[nxt].start):
            return None
    return hit


def _votes_in_clause(clause: str, g: _Grammar, rules: TagRules) -> list[_Vote]:
    mentions = [
        _Mention(hit.start(), hit.end(), g.term_info[hit.lastgroup])  # type: ignore[index]
        for hit in g.terms.finditer(clause)
    ]
    if not mentions:
        return []
    for m in mentions:
        m.chain_start = m.start
    ends = _chain_ends(clause, mentions, g)
    _assign_cues(clause, mentions, ends, g, rules)
    votes: list[_Vote] = []
    owners: list[int] = []  # the mention each vote comes from
    for i, m in enumerate(mentions):
        kinds = {kind for _, kind in m.term.effects}
        if kinds == {"ignored"}:
            continue
        floor = mentions[i - 1].end if i else 0
        sides = _sides(clause, mentions, i, g, rules)
        word = clause[m.start : m.end]
        post = _post_cue(clause, mentions, ends, i, g) if kinds & {"noun", "plural", "fossa"} else None
        for concept, kind in m.term.effects:
            strength, negated, reason = _decide(clause, m, kind, post, g, rules, floor)
            if strength != _NONE:
                votes.append(_Vote(concept, strength, sides, negated, word, reason, clause))
                owners.append(i)
    if rules.sideless_follows_clause_side:
        votes = _sides_from_clause(votes, owners)
    if any(m.term.side == _BOTH for m in mentions):
        votes.extend(_anaphora_votes(clause, mentions, g, rules))
    if "solitary" in clause:
        for pattern, concept in g.solitary:
            for hit in pattern.finditer(clause):
                # "solitary right kidney": the right one is there (its mention votes), the left is not.
                other = "left" if hit.group(1) == "right" else "right"
                votes.append(_Vote(concept, _ABSENT, frozenset((other,)), False, hit.group(0), "solitary organ", clause))
    return votes


def _sides_from_clause(votes: list[_Vote], owners: list[int]) -> list[_Vote]:
    """Give a side-less *present* vote the side of the nearest placed present vote of its organ.

    "Unremarkable left kidney without hydronephrosis": "hydronephrosis" has no side of its own, but
    the clause is about the left kidney, so it must not tag the right one. The nearest placed
    mention before it wins, else the nearest one after it ("without hydronephrosis, the left kidney
    is normal"). Only present votes lend or take a side: an absent organ has no findings.
    """
    placed: dict[str, list[tuple[int, frozenset[str], str]]] = {}
    for vote, owner in zip(votes, owners):
        if vote.sides is not None and vote.strength == _PRESENT:
            placed.setdefault(vote.concept, []).append((owner, vote.sides, vote.term))
    if not placed:
        return votes
    out = []
    for vote, owner in zip(votes, owners):
        sources = placed.get(vote.concept)
        if vote.sides is None and vote.strength == _PRESENT and sources:
            before = [s for s in sources if s[0] < owner]
            after = [s for s in sources if s[0] > owner]
            if before or after:
                _, sides, term = before[-1] if before else after[0]  # sources are in reading order
                vote = replace(vote, sides=sides, reason=f"{vote.reason}, side of {term!r} in the clause")
        out.append(vote)
    return out


def _anaphora_votes(clause: str, mentions: list[_Mention], g: _Grammar, rules: TagRules) -> list[_Vote]:
    """ "Kidneys: the left is absent": the side word stands for the plural organ named before it."""
    votes = []
    starts = [m.start for m in mentions]
    for hit in g.side_anaphora.finditer(clause):
        i = bisect.bisect_right(starts, hit.start()) - 1  # the mention before the side word
        if i < 0 or mentions[i].term.side != _BOTH or mentions[i].end > hit.start():
            continue
        post = g.post.match(clause, hit.end())
        if post is None or (i + 1 < len(mentions) and mentions[i + 1].start < post.end()):
            continue
        word = clause[hit.start() : hit.end()]
        if post.group("partial") is not None:
            strength, reason = _PRESENT, "partial after-cue on a side word"
        elif post.group("uncertain") is not None:
            strength, reason = _UNCERTAIN, "uncertain after-cue on a side word"
        else:
            strength, _, reason = _absent_or_hedged(clause, hit.start(), post.end(), g, rules, mentions[i].end, "after-cue on a side word")
        for concept, kind in mentions[i].term.effects:
            if kind == "plural":
                votes.append(_Vote(concept, strength, frozenset((hit.group(1),)), False, word, reason, clause))
    return votes


def _decide(
    clause: str,
    m: _Mention,
    kind: str,
    post: re.Match[str] | None,
    g: _Grammar,
    rules: TagRules,
    floor: int,
) -> tuple[int, bool, str]:
    """Strength, negated?, reason for one (mention, effect)."""
    cue_kind = m.cue_kind
    if kind == "ignored":
        return _NONE, False, "ignored phrase"
    if kind == "partial":
        return _PRESENT, False, "partial removal"
    if kind == "fossa":
        before = g.empty.search(clause, max(floor, m.start - rules.side_window), m.start)
        after = post is None and g.empty.search(clause, m.end, min(len(clause), m.end + rules.side_window))
        if before or after:
            return _absent_or_hedged(clause, m.start, m.end, g, rules, floor, "empty fossa")
        return _NONE, False, "fossa"
    if kind == "finding":
        return _PRESENT, cue_kind == "negation", "negated finding" if cue_kind == "negation" else "finding"
    if kind == "removed":
        if cue_kind == "negation":
            return _PRESENT, True, "negated removal"
        if g.partial_before.search(clause, max(floor, m.start - rules.side_window), m.start):
            return _PRESENT, False, "partial removal"
        return _absent_or_hedged(clause, m.chain_start, m.end, g, rules, floor, "removal")
    # organ nouns
    if post is not None:
        part = g.part_of.search(clause, max(0, m.start - rules.side_window), m.start)
        if part is not None:
            # "the upper pole of the left kidney is not imaged": the rest of the kidney is there
            return _PRESENT, False, f"after-cue on a part ({part.group(0).strip()!r})"
        if post.group("partial") is not None:
            return _PRESENT, False, f"after-cue {post.group('partial')!r}"
        if post.group("uncertain") is not None:
            return _UNCERTAIN, False, f"after-cue {post.group('uncertain')!r}"
        return _absent_or_hedged(clause, m.chain_start, post.end(), g, rules, floor, f"after-cue {post.group('absent').strip()!r}")
    if m.cue is not None and m.cue_absence:
        if cue_kind == "removal" and g.partial_before.search(clause, max(floor, m.cue.start() - rules.side_window), m.cue.start()):
            return _PRESENT, False, "partial removal"
        return _absent_or_hedged(clause, m.cue.start(), m.end, g, rules, floor, f"{cue_kind} {m.cue.group(0)!r}")
    if m.cue is not None:
        return _PRESENT, True, f"{cue_kind} of a finding"
    return _PRESENT, False, "mention"


def _absent_or_hedged(clause: str, lo: int, hi: int, g: _Grammar, rules: TagRules, floor: int, reason: str) -> tuple[int, bool, str]:
    if _hedged(clause, lo, hi, g, rules, min(floor, lo)):
        return _UNCERTAIN, False, f"hedged {reason}"
    return _ABSENT, False, reason


def _check_report(text: Any, allow_empty: bool, where: str = "report") -> bool:
    """Validate one report; returns False for an allowed empty report."""
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str, got {type(text).__name__}")
    if not text.strip():
        if allow_empty:
            return False
        raise ValueError(f"{where}: empty report (only whitespace); pass allow_empty=True to tag it all -1")
    return True


def _collect_votes(text: str, rules: TagRules) -> list[_Vote]:
    g = _grammar()
    # Lower-case once; fold typographic dashes so "left–sided" reads like "left-sided".
    lowered = text.lower().translate(_DASHES)
    votes: list[_Vote] = []
    for clause in _clauses(lowered, g):
        votes.extend(_votes_in_clause(clause, g, rules))
    return votes


_DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-"})


def _counts(vote: _Vote, side: str | None, rules: TagRules) -> bool:
    """Whether a vote about a concept speaks for the tag of one side (None: unpaired label)."""
    if side is None:
        return True
    if vote.sides is not None:
        return side in vote.sides
    return vote.negated and vote.strength == _PRESENT and rules.negated_sideless_is_bilateral


def _rank(strength: int, rules: TagRules) -> int:
    if not rules.absence_wins and strength in (_PRESENT, _ABSENT):
        return _ABSENT if strength == _PRESENT else _PRESENT
    return strength


def _tag_row(text: str, plan: _Plan, rules: TagRules) -> list[int]:
    best = [_NONE] * len(plan.names)
    for vote in _collect_votes(text, rules):
        for index, side in plan.listeners.get(vote.concept, ()):
            if _counts(vote, side, rules) and _rank(vote.strength, rules) > _rank(best[index], rules):
                best[index] = vote.strength
    return [_VOTE_TO_TAG[s] for s in best]


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------
def extract_tags(
    text: str,
    label_map: LabelMapLike,
    *,
    allow_empty: bool = False,
    rules: TagRules | None = None,
) -> dict[str, int]:
    """Organ tags of one report, keyed by the label map's foreground names.

    Args:
        text: the report (any length, any characters).
        label_map: a :class:`~mosmoskit.labels.LabelMap`, a shipped name (``"btcv"``, ``"amos"``,
            ``"totalseg_ct"``, ...) or a label-map JSON path. AMOS (``postcava``, ``right_kidney``)
            and TotalSegmentator names are matched through :func:`mosmoskit.labels.canonical_name`.
        allow_empty: return all ``-1`` for an empty or whitespace-only report instead of raising.
        rules: the tunable windows and conflict rule (:class:`TagRules`); defaults when ``None``.

    Returns:
        ``{name: tag}`` for every foreground name in label-map order, tag in ``{1, 0, -1}``:
        present, absent, not stated or uncertain.

    Raises:
        TypeError: ``text`` is not a ``str`` (the message names its type).
        ValueError: ``text`` is empty or whitespace only ("empty report") and ``allow_empty`` is false.
    """
    names = tag_names(label_map)
    rules = rules or TagRules()
    if not _check_report(text, allow_empty):
        return dict.fromkeys(names, TAG_UNKNOWN)
    return dict(zip(names, _tag_row(text, _plan(names), rules)))


def extract_tags_batch(
    texts: Iterable[str],
    label_map: LabelMapLike,
    *,
    allow_empty: bool = False,
    rules: TagRules | None = None,
) -> np.ndarray:
    """Tags of many reports as a matrix, columns in :func:`tag_names` order.

    Args:
        texts: the reports (a list, tuple or any iterable of ``str``; not a single ``str``).
        label_map: as in :func:`extract_tags`.
        allow_empty: as in :func:`extract_tags`.
        rules: as in :func:`extract_tags`.

    Returns:
        int8 array of shape (N, K): N reports, K foreground names; values in ``{1, 0, -1}``.

    Raises:
        TypeError: ``texts`` is a single string, or one report is not a string (the message gives
            its index and type).
        ValueError: an empty report when ``allow_empty`` is false (the message gives its index).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("extract_tags_batch expects a sequence of reports, got a single string; use extract_tags")
    names = tag_names(label_map)
    plan = _plan(names)
    rules = rules or TagRules()
    rows = []
    for index, text in enumerate(texts):
        if _check_report(text, allow_empty, where=f"report {index}"):
            rows.append(_tag_row(text, plan, rules))
        else:
            rows.append([TAG_UNKNOWN] * len(names))
    return np.asarray(rows, dtype=np.int8).reshape(len(rows), len(names))


def explain_tags(text: str, label_map: LabelMapLike, *, rules: TagRules | None = None) -> list[TagEvidence]:
    """Every vote behind :func:`extract_tags`, for debugging a report or the vocabulary.

    Args:
        text: the report.
        label_map: as in :func:`extract_tags`.
        rules: as in :func:`extract_tags`.

    Returns:
        One :class:`TagEvidence` per (mention, tag) vote, in reading order. Side-less mentions of a
        paired organ that could not be placed do not appear.

    Raises:
        TypeError, ValueError: as in :func:`extract_tags` (an empty report raises).
    """
    names = tag_names(label_map)
    rules = rules or TagRules()
    _check_report(text, allow_empty=False)
    plan = _plan(names)
    out = []
    for vote in _collect_votes(text, rules):
        for index, side in plan.listeners.get(vote.concept, ()):
            if _counts(vote, side, rules):
                value = {_PRESENT: TAG_PRESENT, _ABSENT: TAG_ABSENT, _UNCERTAIN: TAG_UNKNOWN}[vote.strength]
                out.append(TagEvidence(names[index], value, vote.term, vote.reason, vote.clause.strip()))
    return out

