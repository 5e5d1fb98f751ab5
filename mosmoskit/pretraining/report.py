"""Plain-text tables and ready-to-plot examples of a pre-training run, for notebook 02 and the CLI.

Everything returns a string (or arrays) and prints nothing, so a notebook cell is
``print(format_metrics(result.metrics))`` and the command line prints the same tables.

* :func:`describe_pretraining_data`: how many image-report pairs, how the split looks, and a few
  reports with the organ tags the parser reads from them;
* :func:`format_metrics`: retrieval recall next to chance, tag AUROC per organ;
* :func:`format_pointing`: the pointing game per organ next to the fixed-position baseline;
* :func:`attention_examples`: images, labels, maps and tag probabilities of a few held-out cases,
  in the form :func:`mosmoskit.viz.attention.plot_attention_grid` takes.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "attention_examples",
    "describe_pretraining_data",
    "format_data_summary",
    "format_metrics",
    "format_pointing",
    "format_table",
]

#: how a parsed tag value is written in the data summary
TAG_WORDS = {1: "present", 0: "absent", -1: "not mentioned"}
#: the retrieval ranks reported (the evaluation computes recall at these k)
RETRIEVAL_KS = (1, 5)
#: metrics about the run itself, shown under "run"
RUN_PREFIXES = ("train/", "data/")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float:
    """A metric as a float; ``None`` (how metrics.json stores NaN) becomes NaN."""
    return float("nan") if value is None else float(value)


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], digits: int = 3, title: str | None = None) -> str:
    """A fixed-width text table: text left-aligned, numbers right-aligned, NaN as ``n/a``.

    Args:
        rows: the rows; each has ``len(headers)`` cells (str, int, float or None).
        headers: column titles.
        digits: decimals of float cells.
        title: a line above the table.

    Returns:
        The table as lines joined by newlines (no trailing newline).

    Raises:
        ValueError: a row with another number of cells than ``headers``.
    """
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers: {list(row)}")
    text = [[_cell(v, digits) for v in row] for row in rows]
    numeric = [bool(rows) and all(row[c] is None or _is_number(row[c]) for row in rows) for c in range(len(headers))]
    widths = [max([len(h)] + [len(r[c]) for r in text]) for c, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if num else cell.ljust(w)
                         for cell, w, num in zip(cells, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in text]
    return "\n".join(out)


def format_metrics(metrics: Mapping[str, Any], digits: int = 3) -> str:
    """Retrieval and organ-tag tables of a run's held-out metrics.

    Args:
        metrics: the flat dict of :func:`~mosmoskit.pretraining.evaluate.evaluate_pretraining`
            (``retrieval/...``, ``tag_auroc/<organ>``...) as in ``metrics.json``.
        digits: decimals.

    Returns:
        Up to three tables: retrieval (recall@k of both directions next to chance, i.e. what random
        embeddings would score), tag AUROC per organ with the mean (``n/a`` when the held-out
        reports give an organ only one class; next to it the AUROC against organ presence in the
        masks when the evaluation had them), and the run's size and duration.

    Raises:
        ValueError: no retrieval or tag metric in ``metrics``.
    """
    parts = []
    retrieval = [
        [direction] + [metrics.get(f"retrieval/{key}_recall@{k}") for k in RETRIEVAL_KS]
        for direction, key in (("image -> report", "image_to_report"), ("report -> image", "report_to_image"))
        if any(f"retrieval/{key}_recall@{k}" in metrics for k in RETRIEVAL_KS)
    ]
    if retrieval:
        retrieval.append(["chance"] + [metrics.get(f"retrieval/chance_recall@{k}") for k in RETRIEVAL_KS])
        n = metrics.get("n_pairs")
        parts.append(format_table(retrieval, ["retrieval"] + [f"recall@{k}" for k in RETRIEVAL_KS], digits,
                                  title=f"Held-out retrieval ({n} pairs)" if n else "Held-out retrieval"))
    organs = [k.split("/", 1)[1] for k in metrics if k.startswith("tag_auroc/") and k != "tag_auroc/mean"]
    if organs:
        # Against the masks too when the evaluation had them: what the image shows, not only what
        # its report happened to mention.
        vs_mask = any(k.startswith("tag_auroc_vs_mask/") for k in metrics)
        sources = ["tag_auroc"] + (["tag_auroc_vs_mask"] if vs_mask else [])
        rows = [[o] + [_number(metrics.get(f"{src}/{o}")) for src in sources] for o in organs + ["mean"]]
        if "tag_auroc/mean" not in metrics:
            rows.pop()
        headers = ["organ tag", "AUROC vs report"] + (["AUROC vs mask"] if vs_mask else [])
        parts.append(format_table(rows, headers, digits, title="Organ-tag recognition (held out)"))
    if not parts:
        raise ValueError(f"no retrieval/ or tag_auroc/ metrics to format; got keys {sorted(metrics)[:10]}")
    run = [[k, metrics[k]] for k in metrics if k.startswith(RUN_PREFIXES)]
    if run:
        parts.append(format_table(run, ["run", "value"], digits=1))
    return "\n\n".join(parts)


def format_pointing(metrics: Mapping[str, Any], organs: Sequence[str] | None = None, digits: int = 2) -> str:
    """The pointing game per organ: how often the map's peak lies inside the organ, vs the baseline.

    The baseline always points at the place where the organ is most often found in the training
    masks. A map is only useful where it beats that: on well-aligned images the baseline alone is
    strong, and only shifted images separate a map that follows the organ from a fixed guess.

    Args:
        metrics: the flat metrics dict (``pointing/<organ>``, ``pointing_baseline/<organ>``).
        organs: the rows (default: every organ with a ``pointing/`` value).
        digits: decimals.

    Returns:
        A table organ | maps | baseline | maps - baseline, then the means the evaluation reports
        (``n/a`` where an organ never appeared; empty cells where there is no value). When the
        metrics hold ``pointing_within_cell/<organ>``, another column gives the hit rate of a peak
        within one feature cell of the organ (a coarse map's near misses), and one more the
        baseline's at the same tolerance when the metrics have it
        (``pointing_baseline_within_cell/<organ>``): at a 16-voxel cell a fixed guess is also
        "near" most organs, so the within-cell rate means little without it.

    Raises:
        ValueError: no ``pointing/`` metric (the validation cases had no labels), or an organ in
            ``organs`` without one.
    """
    available = [k.split("/", 1)[1] for k in metrics
                 if k.startswith("pointing/") and not k.split("/", 1)[1].startswith("mean")]
    if not available:
        raise ValueError("no pointing/ metrics: the pointing game needs held-out cases with label masks")
    rows_for = available if organs is None else list(organs)
    missing = [o for o in rows_for if o not in available]
    if missing:
        raise ValueError(f"no pointing metric for {missing}; available: {available}")
    rows = []
    means = [m for m in ("mean", "mean_large_organs") if f"pointing/{m}" in metrics]
    near = any(k.startswith("pointing_within_cell/") for k in metrics)
    near_base = near and any(k.startswith("pointing_baseline_within_cell/") for k in metrics)

    def value(prefix: str, key: str) -> float | None:
        # A missing value (no training masks for a baseline) leaves its cell empty; NaN reads n/a.
        return _number(metrics[f"{prefix}/{key}"]) if f"{prefix}/{key}" in metrics else None

    for key, name in [(o, o) for o in rows_for] + [(m, m.replace("_", " ")) for m in means]:
        model = _number(metrics[f"pointing/{key}"])
        base = value("pointing_baseline", key)
        row = [name, model, base, None if base is None else model - base]
        rows.append(row + ([value("pointing_within_cell", key)] if near else [])
                    + ([value("pointing_baseline_within_cell", key)] if near_base else []))
    headers = (["organ", "maps", "baseline", "maps - baseline"] + (["maps within 1 cell"] if near else [])
               + (["baseline within 1 cell"] if near_base else []))
    return format_table(rows, headers, digits, title="Pointing game (held out): peak of the map inside the organ")


def format_data_summary(
    train_cases: Sequence[Mapping[str, Any]],
    val_cases: Sequence[Mapping[str, Any]],
    label_map: LabelMap | str,
    n_reports: int = 3,
    width: int = 96,
) -> str:
    """Counts of the split, per-organ tag counts of the training reports, and a few parsed reports.

    The tags are what the rule-based parser reads from each report text (the same call the
    training data uses), so this shows exactly the supervision the tag head gets.

    Args:
        train_cases, val_cases: case dicts with ``case_id`` and ``report``.
        label_map: its foreground names are the tags.
        n_reports: how many training reports to print with their tags.
        width: wrap reports to this many characters.

    Returns:
        The summary text.

    Raises:
        ValueError: a case without a report, or ``n_reports < 0``.
    """
    from mosmoskit.pretraining.data import patient_of
    from mosmoskit.reports import extract_tags

    if n_reports < 0:
        raise ValueError(f"n_reports must be >= 0, got {n_reports}")
    lm = load_label_map(label_map)
    for case in list(train_cases) + list(val_cases):
        if not isinstance(case.get("report"), str):
            raise ValueError(f"case {case.get('case_id', '?')} has no report text")
    split_rows = [
        [name, len(cases), len({patient_of(dict(c)) for c in cases})]
        for name, cases in (("train", train_cases), ("val", val_cases))
    ]
    parts = [format_table(split_rows, ["split", "image-report pairs", "patients"], title="Data")]
    parsed = [extract_tags(c["report"], lm) for c in train_cases]
    counts = [[organ] + [sum(1 for p in parsed if p[organ] == v) for v in TAG_WORDS] for organ in lm.foreground_names]
    parts.append(format_table(counts, ["organ tag"] + list(TAG_WORDS.values()),
                              title="Tags the parser reads from the training reports"))
    for case, tags in list(zip(train_cases, parsed))[:n_reports]:
        text = textwrap.fill(" ".join(case["report"].split()), width=width)
        said = {word: [o for o in lm.foreground_names if tags[o] == v] for v, word in TAG_WORDS.items() if v != -1}
        lines = [f"--- {case['case_id']}", text]
        lines += [textwrap.fill(f"{word}: {', '.join(names) or '-'}", width=width, subsequent_indent="  ")
                  for word, names in said.items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def describe_pretraining_data(config: Any, n_reports: int = 3, progress: bool = True) -> str:
    """:func:`format_data_summary` of the pairs and split a :class:`PretrainConfig` will train on.

    It finds (or, for ``dataset="phantom"``, generates into ``output_dir/data``) the data exactly
    as :func:`~mosmoskit.pretraining.run.run_pretraining` does, so the split shown is the split used.

    Args:
        config: a :class:`~mosmoskit.pretraining.config.PretrainConfig`.
        n_reports: reports to print with their tags.
        progress: progress bar while a phantom cohort is generated.
    """
    from mosmoskit.pretraining.data import prepare_pretraining_data

    label_map = load_label_map(config.label_map)
    _, split = prepare_pretraining_data(
        config.dataset, config.output_dir, label_map, config.spatial_dims, config.val_fraction, config.seed,
        progress=progress, **config.phantom_settings(),
    )
    return format_data_summary(split["train"], split["val"], label_map, n_reports=n_reports)


def attention_examples(
    checkpoint: str | Path,
    cases: Sequence[Mapping[str, Any]],
    n: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images, labels, attention maps and tag probabilities of the first ``n`` cases.

    Args:
        checkpoint: a pre-training checkpoint (``PretrainResult.checkpoint``).
        cases: case dicts with ``image`` and optionally ``label`` paths (e.g. ``result.val_cases``).
        n: how many cases.
        device: where the model runs.

    Returns:
        A dict for :func:`mosmoskit.viz.attention.plot_attention_grid` (``**examples``):
        ``images`` (N arrays in HU, RAS), ``maps`` (N arrays (K, *image shape), peak 1),
        ``names`` (K tags), ``labels`` (N masks, or ``None`` when a case has none), ``label_map``,
        ``case_ids``, ``probabilities`` (N dicts tag -> probability).

    Raises:
        ValueError: ``n < 1`` or no cases.
    """
    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.pretraining.run import attention_maps_from_checkpoint, load_pretrained

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chosen = list(cases)[:n]
    if not chosen:
        raise ValueError("no cases to take attention examples from")
    loaded = load_pretrained(checkpoint)  # once, not once per case
    label_map = loaded[2]
    images, labels, maps, probabilities = [], [], [], []
    for case in chosen:
        volume = load_image(case["image"])
        case_maps, probs = attention_maps_from_checkpoint(loaded, volume.array, device=device)
        images.append(volume.array)
        maps.append(case_maps)
        probabilities.append(probs)
        labels.append(load_label(case["label"], label_map, reference=volume).array if case.get("label") else None)
    return {
        "images": images,
        "maps": maps,
        "names": list(label_map.foreground_names),
        "labels": labels if all(lab is not None for lab in labels) else None,
        "label_map": label_map,
        "case_ids": [str(c.get("case_id", i)) for i, c in enumerate(chosen)],
        "probabilities": probabilities,
    }


#: the map-check rows: (metric, what the prior scores beside it, the row's title)
_MAP_CHECK_ROWS = (
    ("pointing", "pointing_prior", "pointing game"),
    ("dice_argmax", "dice_prior", "zero-label Dice (argmax)"),
    ("dice_half_peak", "dice_prior", "zero-label Dice (half peak)"),
)


def format_map_check(metrics: Mapping[str, Any], digits: int = 2) -> str:
    """The standing map check (``maps/...`` of ``metrics.json``) as one table per test.

    Every map number stands beside the fixed-position prior's on the same moved, held-out images,
    and the erasure test beside its control: the logit drop when the organ is erased, and when an
    equal blob elsewhere in the body is.

    Args:
        metrics: the flat metrics dict of a pre-training run.
        digits: decimals.

    Returns:
        A table per test with a row per organ and the mean; an empty string when the run has no map
        check (its held-out pairs had no masks).
    """
    keys = [k for k in metrics if k.startswith("maps/pointing/")]
    if not keys:
        return ""
    organs = [k.split("/", 2)[2] for k in keys]
    tables = []
    for metric, prior, title in _MAP_CHECK_ROWS:
        if f"maps/{metric}/mean" not in metrics:
            continue
        rows = []
        for organ in organs:
            ours, theirs = _number(metrics.get(f"maps/{metric}/{organ}")), _number(metrics.get(f"maps/{prior}/{organ}"))
            rows.append([organ.replace("_", " "), ours, theirs, ours - theirs])
        tables.append(format_table(rows, ["organ", "maps", "prior", "maps - prior"], digits=digits, title=title))
    if "maps/erase_drop/mean" in metrics:
        rows = [[organ.replace("_", " "), _number(metrics.get(f"maps/erase_drop/{organ}")),
                 _number(metrics.get(f"maps/blob_drop/{organ}"))] for organ in organs]
        tables.append(format_table(rows, ["organ", "organ erased", "blob elsewhere"], digits=digits,
                                   title="erasure: tag-logit drop"))
    n = metrics.get("maps/n_images")
    head = f"held-out images moved by shifts, rotations and zooms: {int(n)}" if n is not None else ""
    return "\n\n".join([head, *tables]).strip()
