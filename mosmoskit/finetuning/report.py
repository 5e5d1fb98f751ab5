"""Plain-text tables and ready-to-plot examples of a fine-tuning run, for notebook 03 and the CLI.

Everything returns a string (or arrays) and prints nothing, so a notebook cell is
``print(format_organ_metrics(result.metrics))`` and a command line can print the same tables.

* :func:`format_split` / :func:`describe_finetuning_data`: the label-scarce split (training pool,
  labelled subset, validation, fixed held-out test) in patients and cases;
* :func:`format_protocol`: the one line that must stand next to every number (variant, label
  fraction, seeds, test set);
* :func:`format_organ_metrics`: per-organ test Dice and HD95 with their spread and failure counts;
* :func:`prediction_examples`: images, ground truth and saved predictions of a few test cases, in
  the form :func:`mosmoskit.viz.metrics.plot_prediction_grid` takes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mosmoskit.pretraining.report import format_table

__all__ = [
    "SPLIT_PARTS",
    "describe_finetuning_data",
    "format_organ_metrics",
    "format_protocol",
    "format_split",
    "prediction_examples",
    "weak_points",
]

#: The parts of a split, in the order they are shown, with what each one is for.
SPLIT_PARTS: dict[str, str] = {
    "train_pool": "training patients (the label fraction is a share of these)",
    "labelled": "labelled subset: the only masks the model learns from",
    "val": "validated during training (from the training pool)",
    "test": "fixed held-out test set: the reported metrics",
}
#: How many case ids of the test set are listed under the split table.
_LISTED_TEST_IDS = 8


def _number(value: Any) -> float:
    """A metric as a float; ``None`` (how metrics.json stores NaN) becomes NaN."""
    return float("nan") if value is None else float(value)


def _summary(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """The test summary, from ``FinetuneResult.metrics`` or from a whole metrics.json record."""
    if "organs" not in metrics and isinstance(metrics.get("test"), Mapping):
        metrics = metrics["test"]
    if not isinstance(metrics.get("organs"), Mapping) or not metrics["organs"]:
        raise ValueError(
            f"expected a fine-tuning test summary with per-organ 'organs' (FinetuneResult.metrics or metrics.json), "
            f"got keys {sorted(metrics)}"
        )
    return metrics


# ------------------------------------------------------------------------------------------ split
def format_split(split: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> str:
    """The label-scarce split as a table of patients and cases per part.

    Args:
        split: :meth:`FinetuneSplit.summary` (``FinetuneResult.split``, metrics.json's
            ``split``): part -> ``{"cases", "patients", "case_ids"}``.
        protocol: optionally ``FinetuneResult.protocol``, for a line saying how the labelled
            subset was chosen.

    Returns:
        The table, then the test case ids (the first few).

    Raises:
        ValueError: a part of :data:`SPLIT_PARTS` is missing from ``split``.
    """
    missing = [p for p in SPLIT_PARTS if not isinstance(split.get(p), Mapping)]
    if missing:
        raise ValueError(f"split has no part(s) {missing}; expected FinetuneSplit.summary() with {list(SPLIT_PARTS)}")
    rows = [[name, int(split[name]["patients"]), int(split[name]["cases"]), what] for name, what in SPLIT_PARTS.items()]
    parts = [format_table(rows, ["part", "patients", "cases", "what it is"], title="Split (by patient)")]
    pool = int(split["train_pool"]["patients"])
    labelled = int(split["labelled"]["patients"])
    if pool:
        parts.append(f"{labelled} of {pool} training patients labelled ({labelled / pool:.0%}).")
    if protocol is not None:
        parts.append(format_protocol(protocol))
    test_ids = list(split["test"].get("case_ids", []))
    if test_ids:
        more = f" ... (+{len(test_ids) - _LISTED_TEST_IDS})" if len(test_ids) > _LISTED_TEST_IDS else ""
        parts.append("test cases: " + ", ".join(test_ids[:_LISTED_TEST_IDS]) + more)
    return "\n".join(parts)


def describe_finetuning_data(config: Any, progress: bool = True) -> str:
    """:func:`format_split` of the split a :class:`FinetuneConfig` will train and test on.

    It finds (or, for ``dataset="phantom"``, generates into ``output_dir/data``) the cohort exactly
    as :func:`~mosmoskit.finetuning.run.run_finetuning` does, so the split shown is the split used
    (the run then reuses the generated cohort).

    Args:
        config: a :class:`~mosmoskit.finetuning.config.FinetuneConfig`.
        progress: progress bar while a phantom cohort is generated.

    Raises:
        As :func:`~mosmoskit.finetuning.data.prepare_finetuning_data`.
    """
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.finetuning.data import prepare_finetuning_data

    data = prepare_finetuning_data(config, progress=progress)
    amount = f"n_labelled={config.n_labelled}" if config.n_labelled else f"label_fraction={config.label_fraction}"
    header = (f"{data.source}: {len(data.cases)} labelled cases, label map {data.label_map.name!r} "
              f"({len(data.label_map.foreground_names)} organs); variant {variant_name(config)}, {amount}, "
              f"seed {config.seed}, split seed {config.split_seed}")
    return header + "\n\n" + format_split(data.split.summary())


def format_protocol(protocol: Mapping[str, Any]) -> str:
    """The protocol of a run in one line, to be written next to its numbers.

    Args:
        protocol: ``FinetuneResult.protocol`` or metrics.json's ``protocol``.

    Raises:
        ValueError: a key of the protocol record is missing (the message names it).
    """
    needed = ("variant", "labelled_patients", "labelled_cases", "train_pool_patients", "test_patients",
              "test_cases", "seed", "split_seed")
    missing = [k for k in needed if k not in protocol]
    if missing:
        raise ValueError(
            f"protocol record lacks {missing}; expected FinetuneResult.protocol or metrics.json['protocol']"
        )
    if protocol.get("n_labelled"):
        amount = f"n_labelled={protocol['n_labelled']}"
    else:
        amount = f"label_fraction={_number(protocol.get('label_fraction')):g}"
    return (f"{protocol['variant']}, {amount}: {protocol['labelled_patients']} of {protocol['train_pool_patients']} "
            f"training patients labelled ({protocol['labelled_cases']} cases), seed {protocol['seed']}; "
            f"test {protocol['test_patients']} patients ({protocol['test_cases']} cases), split seed "
            f"{protocol['split_seed']}")


# ---------------------------------------------------------------------------------------- metrics
def format_organ_metrics(metrics: Mapping[str, Any], digits: int = 3, hd_digits: int = 1) -> str:
    """Per-organ test Dice and HD95 (mm), in label-map order, with spread and failure counts.

    Columns: Dice mean, its 95% bootstrap interval over the test cases and the standard
    deviation, over the test cases where the organ is scored,
    HD95 mean (mm; missed organs have no HD95 and are counted instead), the number of cases with
    a Dice value, the cases where the organ was ``missed`` and where it was "never learned"
    (present in the ground truth but Dice below ``never_learned_dice``).

    Args:
        metrics: ``FinetuneResult.metrics`` (from
            :func:`~mosmoskit.evaluation.segmentation.summarize_metrics`) or a whole metrics.json
            record (its ``test`` entry is used). ``None`` values are NaN and shown as ``n/a``.
        digits: decimals of Dice.
        hd_digits: decimals of HD95.

    Returns:
        The table, a ``mean`` row (mean over organs of the per-organ means) and the number of test
        cases.

    Raises:
        ValueError: no per-organ summary in ``metrics``.
    """
    summary = _summary(metrics)
    headers = ["organ", "Dice", "95% CI", "Dice std", "HD95 mm", "cases", "missed", "never learned"]
    rows = []
    for organ, s in summary["organs"].items():
        rows.append([organ, _number(s["dice_mean"]), _interval(s.get("dice_ci95"), digits), _number(s["dice_std"]),
                     _number(s["hd95_mean"]), int(s["n_dice"]), int(s["n_missed"]), int(s["n_never_learned"])])
    rows.append(["mean", _number(summary["mean_dice"]), _interval(summary.get("mean_dice_ci95"), digits), None,
                 _number(summary["mean_hd95"]), None, None, int(summary["never_learned"])])
    # format_table has one precision for all floats: HD95 (mm) gets its own, written as right-aligned text.
    hd = ["n/a" if math.isnan(r[4]) else f"{r[4]:.{hd_digits}f}" for r in rows]
    width = max(len(headers[4]), *(len(h) for h in hd))
    for row, text in zip(rows, hd):
        row[4] = text.rjust(width)
    table = format_table(rows, headers, digits=digits)
    threshold = _number(summary.get("never_learned_dice"))
    note = (f"{summary['n_cases']} test case(s); 95% CI: bootstrap over the test cases; never learned = in the "
            f"ground truth but Dice < {threshold:g}; HD95 leaves out missed organs")
    return f"Held-out test set, per organ\n{table}\n{note}"


def weak_points(metrics: Mapping[str, Any], worst: int = 3) -> str:
    """One sentence of what the network still gets wrong, read from the test summary.

    Names the ``worst`` organs by mean Dice with their test cases that went wrong: missed (in the
    ground truth, nothing predicted), false positive (predicted in a case that does not have the
    organ: Dice 0 for that case) and found but below the never-learned Dice.

    Args:
        metrics: ``FinetuneResult.metrics`` or a whole metrics.json record.
        worst: how many organs to name.

    Returns:
        The sentence (it says so when no organ has a failed case).
    """
    summary = _summary(metrics)
    scored = [(organ, _number(s["dice_mean"]), s) for organ, s in summary["organs"].items()
              if not math.isnan(_number(s["dice_mean"]))]
    if not scored:
        return "No organ could be scored on the test set."
    parts = []
    for organ, dice, s in sorted(scored, key=lambda row: row[1])[: max(1, int(worst))]:
        missed, false_positive = int(s.get("n_missed") or 0), int(s.get("n_false_positive") or 0)
        barely = int(s.get("n_never_learned") or 0) - missed  # present, found, but Dice below the threshold
        threshold = _number(summary.get("never_learned_dice"))
        failures = [text for count, text in ((missed, f"{missed} missed"),
                                             (false_positive, f"{false_positive} false positive"),
                                             (barely, f"{barely} with Dice < {threshold:g}")) if count > 0]
        parts.append(f"{organ} {dice:.2f}" + (f" ({', '.join(failures)})" if failures else ""))
    failed = sum(int(s.get("n_missed") or 0) + int(s.get("n_false_positive") or 0) for _, _, s in scored)
    tail = ("; a false positive is an organ predicted in a test case that does not have it, which scores Dice 0 "
            "for that case" if any(int(s.get("n_false_positive") or 0) for _, _, s in scored) else "")
    return (f"Weakest organs: {'; '.join(parts)}. Cases with an organ missed or predicted where there is none: "
            f"{failed}{tail}.")


def _interval(bounds: Any, digits: int) -> str:
    """``[low, high]`` as ``"low-high"`` text (``"n/a"`` when missing or NaN)."""
    if not bounds or any(b is None or math.isnan(float(b)) for b in bounds):
        return "n/a"
    return f"{float(bounds[0]):.{digits}f}-{float(bounds[1]):.{digits}f}"


# ---------------------------------------------------------------------------------------- examples
def _case_mean_dice(organs: Mapping[str, Mapping[str, Any]]) -> float:
    values = [_number(m["dice"]) for m in organs.values()]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def prediction_examples(
    config: Any,
    per_case: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    n: int = 3,
) -> dict[str, Any]:
    """Images, ground truth and the run's saved predictions of ``n`` held-out test cases.

    With ``per_case`` the cases are spread over the range of per-case mean Dice (worst, ...,
    best), so the examples show failures as well as successes; otherwise the first ``n`` test
    cases are taken.

    Args:
        config: the run's :class:`~mosmoskit.finetuning.config.FinetuneConfig` (its
            ``output_dir/predictions`` holds ``<case>.nii.gz`` when ``save_predictions``).
        per_case: ``FinetuneResult.per_case`` (case -> organ -> metrics).
        n: how many cases.

    Returns:
        A dict for :func:`mosmoskit.viz.metrics.plot_prediction_grid` (``**examples``):
        ``images`` (N arrays in HU, RAS), ``labels`` and ``predictions`` (N id arrays of the same
        shapes), ``label_map``, ``case_ids``, ``spacings`` (N voxel sizes in mm) and
        ``mean_dice`` (N floats, NaN without ``per_case``).

    Raises:
        ValueError: ``n < 1``.
        FileNotFoundError: a prediction file is missing (the run had ``save_predictions=False``
            or has not finished); the message names the file.
    """
    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.finetuning.data import prepare_finetuning_data
    from mosmoskit.finetuning.run import PREDICTIONS_DIR

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    data = prepare_finetuning_data(config, progress=False)
    test = list(data.split.test)
    if per_case:
        scores = {c: _case_mean_dice(per_case[c]) for c in test if c in per_case}
        # Cases without any Dice value (nothing to score) go last, never in place of a real example.
        ranked = sorted(scores, key=lambda c: (math.isnan(scores[c]), scores[c]))
        scored = sum(not math.isnan(v) for v in scores.values())
        # Spread over the scored cases only; unscored ones fill in only when there are too few scored.
        span = max(min(n, len(ranked)), scored)
        picks = np.unique(np.linspace(0, span - 1, min(n, span)).round().astype(int))
        chosen = [ranked[i] for i in picks]
    else:
        chosen = test[:n]
    folder = Path(config.output_dir) / PREDICTIONS_DIR
    out: dict[str, Any] = {"images": [], "labels": [], "predictions": [], "label_map": data.label_map,
                           "case_ids": chosen, "spacings": [], "mean_dice": []}
    for case_id in chosen:
        path = folder / f"{case_id}.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"no prediction {path} for test case {case_id!r}: run_finetuning writes them with "
                f"save_predictions=True once the run has finished"
            )
        case = data.cases[case_id]
        volume = load_image(case["image"])
        out["images"].append(volume.array)
        out["labels"].append(load_label(case["label"], data.label_map, reference=volume).array)
        out["predictions"].append(load_label(path, data.label_map, reference=volume).array)
        out["spacings"].append(tuple(volume.spacing))
        has_score = bool(per_case) and case_id in per_case
        out["mean_dice"].append(_case_mean_dice(per_case[case_id]) if has_score else float("nan"))
    return out
