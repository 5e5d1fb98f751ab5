"""Reports -> organ tags and finding tags: the weak labels that report-supervised pre-training learns from.

:func:`extract_tags` reads a free-text radiology report and answers, for every structure of a label
map, whether the report says it is there (``1``), says it is not (``0``: removed, absent, not
visualized) or does not say (``-1``, also used for uncertain statements and masked out of the tag
loss). It is rule-based (a vocabulary of organ words and a few cue tables, no model, no network), so
the same reports always give the same tags. See ``docs/report_tags.md`` for the rules and their
limits, :mod:`mosmoskit.reports.vocabulary` for the words.

Example:
    >>> from mosmoskit.reports import extract_tags_batch, tag_names
    >>> reports = ["The kidneys are unremarkable. Status post splenectomy.", "Left nephrectomy."]
    >>> extract_tags_batch(reports, "btcv")[:, :3]        # spleen, kidney_right, kidney_left
    array([[ 0,  1,  1],
           [-1, -1,  0]], dtype=int8)
    >>> tag_names("btcv")[:3]
    ('spleen', 'kidney_right', 'kidney_left')

:func:`extract_findings` reads *finding tags* (:mod:`mosmoskit.reports.findings`): whether the
report states a finding of an organ (``1``, "hepatomegaly"), denies it (``0``, "no hepatomegaly",
"the liver is normal in size") or does not say (``-1``). Unlike organ presence, a finding can only
be checked by looking at the organ.

    >>> from mosmoskit.reports import extract_findings
    >>> found = extract_findings("No hepatomegaly. Small left renal cyst.", "btcv")
    >>> found["hepatomegaly"], found["renal_lesion_left"], found["renal_lesion_right"]
    (0, 1, -1)
"""

from mosmoskit.reports.findings import (
    FINDING_KINDS,
    FINDING_TAGS,
    FindingEvidence,
    explain_findings,
    extract_findings,
    extract_findings_batch,
    finding_names,
)
from mosmoskit.reports.tags import (
    TAG_ABSENT,
    TAG_PRESENT,
    TAG_UNKNOWN,
    TagEvidence,
    TagRules,
    explain_tags,
    extract_tags,
    extract_tags_batch,
    tag_names,
    untagged_names,
)

__all__ = [
    "FINDING_KINDS",
    "FINDING_TAGS",
    "FindingEvidence",
    "TAG_ABSENT",
    "TAG_PRESENT",
    "TAG_UNKNOWN",
    "TagEvidence",
    "TagRules",
    "explain_findings",
    "explain_tags",
    "extract_findings",
    "extract_findings_batch",
    "extract_tags",
    "extract_tags_batch",
    "finding_names",
    "tag_names",
    "untagged_names",
]
