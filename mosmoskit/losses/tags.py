"""Objective B: multi-label recognition of the organ tags read from each report.

Each report gives, for each of the K organ tags, a target in {1, 0, -1}: the organ is present (1),
reported absent (0: "status post splenectomy", "no gallbladder"), or not mentioned / uncertain
(-1). The tag head outputs one raw logit per tag. Two losses are offered:

* ``"bce"``: binary cross-entropy with logits, ``-[w y log p + (1 - y) log(1 - p)]`` with
  p = sigmoid(logit) and w the optional per-tag ``pos_weight``.
* ``"asl"``: the asymmetric loss of Ridnik et al. (ICCV 2021), made for label sets in which most
  tags are negative for most images: it down-weights easy negatives (focusing exponent) and drops
  very easy ones altogether (probability margin). That is the situation with large vocabularies
  (TotalSegmentator's 117 structures) or with ``unmentioned="negative"``::

      L+ = (1 - p)^gamma_pos * log(p)
      L- = p_m^gamma_neg * log(1 - p_m),   p_m = max(p - clip, 0)
      loss = -[w y L+ + (1 - y) L-]

  computed from the logits with ``logsigmoid`` so that logits of +-100 stay finite.

Unmentioned tags (-1) are either left out of the loss (``unmentioned="mask"``) or treated as absent
(``"negative"``). The loss is the mean over the entries that count.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TagLoss", "TAG_PRESENT", "TAG_ABSENT", "TAG_UNMENTIONED"]

TAG_PRESENT = 1
TAG_ABSENT = 0
TAG_UNMENTIONED = -1
_ALLOWED = (TAG_UNMENTIONED, TAG_ABSENT, TAG_PRESENT)
# How many offending values an error message lists before it stops.
_MAX_LISTED = 10


class TagLoss(nn.Module):
    """Multi-label organ-tag loss (BCE or asymmetric), masking unmentioned tags.

    Args:
        kind: ``"bce"`` or ``"asl"``.
        unmentioned: ``"mask"`` (targets -1 do not count) or ``"negative"`` (they count as 0).
        pos_weight: optional (K,) weights (> 0) of the positive term per tag, as in
            ``torch.nn.BCEWithLogitsLoss``; used by both kinds.
        gamma_pos: ASL focusing exponent of positives (paper default 0).
        gamma_neg: ASL focusing exponent of negatives (paper default 4).
        clip: ASL probability margin m in [0, 1) shifting negatives' probabilities (paper 0.05).
            With ``gamma_pos = gamma_neg = clip = 0`` ASL is exactly BCE.

    Raises:
        ValueError: an unknown ``kind``/``unmentioned``, negative gammas, ``clip`` outside [0, 1), or a
            ``pos_weight`` that is not a 1-D tensor of finite positive values.

    Example:
        >>> import torch
        >>> loss_fn = TagLoss(kind="asl", unmentioned="mask")
        >>> logits = torch.tensor([[3.0, -2.0, 0.5]])
        >>> targets = torch.tensor([[1, 0, -1]])         # present, absent, not mentioned
        >>> terms = loss_fn(logits, targets)
        >>> sorted(terms)
        ['tags']
    """

    def __init__(
        self,
        kind: str = "bce",
        unmentioned: str = "mask",
        pos_weight: torch.Tensor | Sequence[float] | None = None,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
    ) -> None:
        super().__init__()
        if kind not in ("bce", "asl"):
            raise ValueError(f"TagLoss: kind must be 'bce' or 'asl', got {kind!r}")
        if unmentioned not in ("mask", "negative"):
            raise ValueError(f"TagLoss: unmentioned must be 'mask' or 'negative', got {unmentioned!r}")
        for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TagLoss: {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"TagLoss: clip (ASL probability margin) must be in [0, 1), got {clip!r}")
        self.kind = kind
        self.unmentioned = unmentioned
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = float(clip)
        if pos_weight is not None:
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32)
            if pos_weight.dim() != 1 or not bool(torch.isfinite(pos_weight).all()) or bool((pos_weight <= 0).any()):
                raise ValueError(
                    f"TagLoss: pos_weight must be a 1-D tensor (K,) of finite values > 0, got shape "
                    f"{tuple(pos_weight.shape)} and values {pos_weight.tolist()}"
                )
        # A buffer follows .to(device) and is saved with the module; None is allowed.
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean tag loss over the entries that count.

        Args:
            logits: (B, K) raw logits of the tag head. Never probabilities: the loss applies the
                sigmoid itself (in log space, which is what keeps it finite).
            targets: (B, K) with values 1 (present), 0 (absent), -1 (not mentioned / uncertain);
                any integer or floating dtype.

        Returns:
            ``{"tags": loss}``, a 0-d tensor: the mean over valid entries. When no entry is valid
            (everything masked, or B = 0) it is a zero that is still connected to ``logits``, so
            ``backward()`` works and gives zero gradients.

        Raises:
            ValueError: shapes differ or are not 2-D, ``pos_weight`` does not have K entries, or
                targets hold values outside {-1, 0, 1} (the message lists them).
        """
        if logits.dim() != 2 or targets.shape != logits.shape:
            raise ValueError(
                f"TagLoss expects logits and targets of the same shape (B, K), got logits "
                f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        if not logits.is_floating_point():
            raise ValueError(f"TagLoss expects floating-point logits, got {logits.dtype}")
        if self.pos_weight is not None and self.pos_weight.shape[0] != logits.shape[1]:
            raise ValueError(
                f"TagLoss: pos_weight has {self.pos_weight.shape[0]} entries but logits have K = "
                f"{logits.shape[1]} tags (shape {tuple(logits.shape)})"
            )
        _check_target_values(targets)

        valid = targets != TAG_UNMENTIONED if self.unmentioned == "mask" else torch.ones_like(targets, dtype=torch.bool)
        y = (targets == TAG_PRESENT).to(logits.dtype)  # "negative" mode: -1 falls in with 0 here
        x = logits
        if self.kind == "bce":
            positive, negative = F.logsigmoid(x), F.logsigmoid(-x)  # log p, log(1 - p)
        else:
            positive, negative = self._asl_terms(x)
        if self.pos_weight is not None:
            positive = positive * self.pos_weight.to(dtype=x.dtype)
        per_entry = -(y * positive + (1.0 - y) * negative)
        # torch.where, not multiplication by the mask: a masked entry then contributes exactly 0 and
        # passes no gradient, even if its logit is extreme.
        per_entry = torch.where(valid, per_entry, torch.zeros_like(per_entry))
        n_valid = valid.sum().clamp(min=1).to(per_entry.dtype)
        return {"tags": per_entry.sum() / n_valid}

    def _asl_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ASL positive term L+ and negative term L- per entry, from logits (B, K)."""
        # Positive: (1 - p)^g+ log p, with 1 - p = sigmoid(-x) raised in log space.
        log_p = F.logsigmoid(x)
        positive = log_p if self.gamma_pos == 0 else torch.exp(self.gamma_pos * F.logsigmoid(-x)) * log_p
        # Negative: p_m^g- log(1 - p_m), p_m = max(p - m, 0), i.e. 1 - p_m = min(1 - p + m, 1).
        if self.clip > 0:
            # 1 - p + m >= m > 0, so the log is bounded below by log(m): no -inf at large logits.
            log_not_pm = torch.log(torch.clamp(torch.sigmoid(-x) + self.clip, max=1.0))
            p_m = torch.clamp(torch.sigmoid(x) - self.clip, min=0.0)
        else:
            log_not_pm = F.logsigmoid(-x)
            p_m = torch.sigmoid(x)
        if self.gamma_neg == 0:
            negative = log_not_pm
        else:
            # Where p_m == 0 the term is 0 anyway (log(1 - 0) = 0); the floor only keeps pow's
            # gradient finite there for gammas below 1.
            weight = torch.clamp(p_m, min=torch.finfo(p_m.dtype).tiny) ** self.gamma_neg
            negative = weight * log_not_pm
        return positive, negative

    def extra_repr(self) -> str:
        text = f"kind={self.kind!r}, unmentioned={self.unmentioned!r}"
        if self.kind == "asl":
            text += f", gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}"
        return text


def _check_target_values(targets: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the values of ``targets`` outside {-1, 0, 1}."""
    allowed = torch.tensor(_ALLOWED, dtype=targets.dtype, device=targets.device)
    bad = ~torch.isin(targets, allowed)
    if bool(bad.any()):
        values = torch.unique(targets[bad]).tolist()
        listed = ", ".join(repr(v) for v in values[:_MAX_LISTED]) + (" ..." if len(values) > _MAX_LISTED else "")
        raise ValueError(
            f"TagLoss: targets must be 1 (present), 0 (absent) or -1 (not mentioned), found {listed} "
            f"in {int(bad.sum())} of {targets.numel()} entries"
        )
