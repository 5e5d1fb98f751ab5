"""Image <-> report retrieval and multi-label tag metrics on held-out pairs."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["recall_at_k", "retrieval_metrics", "auroc", "tag_aurocs", "mean_finite"]


def recall_at_k(similarity: np.ndarray, k: int) -> float:
    """Fraction of rows whose matching column (the diagonal) is among the top ``k`` columns.

    Args:
        similarity: (N, N) scores, row i = query i, column j = candidate j; the true match of
            query i is candidate i.
        k: how many top candidates count as a hit.

    Ties are resolved pessimistically: a candidate with the same score as the true match counts as
    ranked above it, so identical reports cannot inflate recall.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square (N, N), got shape {sim.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    diag = np.diag(sim)[:, None]
    rank = (sim > diag).sum(axis=1) + (sim == diag).sum(axis=1) - 1  # 0 = best
    return float(np.mean(rank < k))


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->report and report->image recall@k from paired embeddings (N, d), plus chance levels."""
    image_emb = np.asarray(image_emb, dtype=np.float64)
    text_emb = np.asarray(text_emb, dtype=np.float64)
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"embeddings must both be (N, d); got {image_emb.shape} and {text_emb.shape}")
    image_emb = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True).clip(1e-12)
    text_emb = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True).clip(1e-12)
    sim = image_emb @ text_emb.T
    n = len(sim)
    out = {}
    for k in ks:
        out[f"image_to_report_recall@{k}"] = recall_at_k(sim, k)
        out[f"report_to_image_recall@{k}"] = recall_at_k(sim.T, k)
        out[f"chance_recall@{k}"] = min(k, n) / n
    return out


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class only."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(bool)
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[targets].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tag_aurocs(logits: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per-tag AUROC over the entries whose target is 0 or 1 (-1, "not mentioned", is ignored).

    Args:
        logits: (N, K) scores.
        targets: (N, K) in {-1, 0, 1}.
        names: K tag names.

    Returns:
        name -> AUROC (NaN where a tag has only one class among the known targets).
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.shape != targets.shape or logits.shape[1] != len(names):
        raise ValueError(f"logits {logits.shape}, targets {targets.shape} and {len(names)} names disagree")
    out = {}
    for k, name in enumerate(names):
        known = targets[:, k] >= 0
        out[name] = auroc(logits[known, k], targets[known, k] == 1)
    return out


def mean_finite(values: Mapping[str, float]) -> float:
    """Mean of the finite values (NaN if none)."""
    finite = [v for v in values.values() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
