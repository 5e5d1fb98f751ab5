"""Objective A: global image-report contrastive learning (symmetric InfoNCE, CLIP style).

Within a batch of B image-report pairs, image i and report i are a positive pair and every other
combination is a negative. With L2-normalised embeddings u_i (image) and v_j (report) and a logit
scale s = 1 / temperature, the logits are ``z_ij = s * <u_i, v_j>`` and the loss is the mean of two
cross-entropies, one over each row of z (image -> report) and one over each column (report ->
image)::

    L = 1/2 * [ 1/B sum_i -log softmax_j(z_ij)[j=i]  +  1/B sum_j -log softmax_i(z_ij)[i=j] ]

The negatives come from the batch, so their number matters: under multi-process training each
process gathers the embeddings of all processes (see :class:`ContrastiveLoss` for the math).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mosmoskit import distributed

__all__ = ["ContrastiveLoss"]


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between image and report embeddings with a learnable temperature.

    The loss L2-normalises both inputs itself (normalising an already normalised vector changes
    nothing, so projection heads may or may not normalise). The logits are computed in float32,
    whatever autocast does to the embeddings, because the scale multiplies rounding errors.

    Temperature. The scale is stored as ``log_logit_scale`` (initialised to ``log(1 /
    init_temperature)``, i.e. log(1/0.07) by default) so that the optimiser moves it
    multiplicatively and it stays positive. In ``forward`` the stored value is clamped to
    ``[log(min_logit_scale), log(max_logit_scale)]`` before use. Why in forward and not after the
    optimiser step (as CLIP does): the bound then holds whatever the training loop does (custom
    loops, resumed checkpoints, evaluation), and without it the scale grows until the softmax
    saturates and training becomes unstable (the upper bound 100 = temperature 0.01); the lower
    bound 1 keeps the logits from collapsing to a near-uniform softmax that carries no signal.
    Side effect: while the stored value lies beyond a bound the clamp passes no gradient to it, so
    the temperature stays at that bound (what CLIP reaches in practice too).

    Multi-process (``torch.distributed`` initialised, world size W > 1, local batch b, global batch
    N = W * b). Each process gathers all image and report embeddings *with* their autograd history
    (:func:`mosmoskit.distributed.gather_with_grad`) and computes only its own b rows against all
    N columns, labels offset by ``rank * b`` (open_clip's ``local_loss=True``). Its loss is

        L_r = 1/2 * [ 1/b sum_{i in r} l^img_i  +  1/b sum_{j in r} l^txt_j ]

    where l^img_i (l^txt_j) is the cross-entropy of image row i (report row j) over all N
    candidates: exactly the terms of the single-process loss L on the N pairs, so sum_r L_r = W * L
    and the mean of the L_r equals L. Gradients: the gather's backward sums, over processes, the
    gradient each process computed for a row and returns it to the row's owner, so process r's
    embeddings receive d(sum_r' L_r')/d(emb_r) = W * dL/d(emb_r), and so do the parameters that
    produced them. DDP then averages parameter gradients over the W processes, which cancels the
    factor W: the update equals the single-process gradient of L on the combined batch. The same
    averaging gives the temperature (which does not pass through the gather) (1/W) sum_r dL_r/ds =
    dL/ds. For this the loss's parameter must be averaged like the model's: keep the loss inside
    the module that DDP wraps (or all-reduce its gradient yourself). Computing local rows only costs
    O(b * N) memory instead of O(N^2).

    Args:
        init_temperature: starting temperature (0.07 as in CLIP); must lie within the clamp range.
        learnable_temperature: if False the scale is a buffer (saved in checkpoints, not trained).
        min_logit_scale: lower bound of the scale, i.e. upper bound 1/min of the temperature.
        max_logit_scale: upper bound of the scale, i.e. lower bound 1/max of the temperature.
        gather_distributed: gather embeddings across processes when distributed (turn off only to
            study local negatives).

    Raises:
        ValueError: a non-positive temperature or bounds, ``min_logit_scale > max_logit_scale``,
            or ``init_temperature`` outside ``[1/max_logit_scale, 1/min_logit_scale]``.

    Example:
        >>> import torch
        >>> loss_fn = ContrastiveLoss()
        >>> terms = loss_fn(torch.randn(4, 16), torch.randn(4, 16))
        >>> sorted(terms), round(loss_fn.temperature, 3)
        (['contrastive'], 0.07)
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        min_logit_scale: float = 1.0,
        max_logit_scale: float = 100.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("init_temperature", init_temperature), ("min_logit_scale", min_logit_scale),
                            ("max_logit_scale", max_logit_scale)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ContrastiveLoss: {name} must be a finite number > 0, got {value!r}")
        if min_logit_scale > max_logit_scale:
            raise ValueError(
                f"ContrastiveLoss: min_logit_scale ({min_logit_scale}) must be <= max_logit_scale ({max_logit_scale})"
            )
        if not min_logit_scale <= 1.0 / init_temperature <= max_logit_scale:
            raise ValueError(
                f"ContrastiveLoss: init_temperature {init_temperature} is outside the allowed range "
                f"[{1.0 / max_logit_scale:g}, {1.0 / min_logit_scale:g}] set by max_logit_scale/min_logit_scale"
            )
        self.learnable_temperature = bool(learnable_temperature)
        self.min_log_scale = math.log(min_logit_scale)
        self.max_log_scale = math.log(max_logit_scale)
        self.gather_distributed = bool(gather_distributed)
        init = torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32)
        if self.learnable_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    def logit_scale(self) -> torch.Tensor:
        """The clamped scale s = 1/temperature as a 0-d tensor (differentiable when learnable)."""
        return self.log_logit_scale.clamp(self.min_log_scale, self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        """The temperature in use now (1 / clamped scale), as a Python float for logging."""
        return float(1.0 / self.logit_scale().detach())

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE of paired rows.

        Args:
            image_emb: (B, d) image embeddings; row i is paired with ``text_emb[i]``.
            text_emb: (B, d) report embeddings.

        Returns:
            ``{"contrastive": loss}``, a 0-d float32 tensor. Under multi-process training this is
            this process's share L_r (mean over processes = the loss on the global batch).

        Raises:
            ValueError: inputs not 2-D, different shapes, not floating point, or a global batch
                (over all processes) of fewer than 2 pairs.
        """
        if image_emb.dim() != 2 or text_emb.dim() != 2:
            raise ValueError(
                f"ContrastiveLoss expects image_emb and text_emb of shape (B, d), got {tuple(image_emb.shape)} "
                f"and {tuple(text_emb.shape)}"
            )
        if image_emb.shape != text_emb.shape:
            raise ValueError(
                f"ContrastiveLoss: image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must "
                "have the same shape (B pairs, same width d)"
            )
        if not (image_emb.is_floating_point() and text_emb.is_floating_point()):
            raise ValueError(
                f"ContrastiveLoss expects floating-point embeddings, got {image_emb.dtype} and {text_emb.dtype}"
            )
        local_batch = image_emb.shape[0]
        image = F.normalize(image_emb.float(), dim=-1)
        text = F.normalize(text_emb.float(), dim=-1)
        if self.gather_distributed and distributed.is_distributed():
            # Every process checks the shapes of all (inside the gather), so an uneven batch raises
            # on every process instead of leaving the others waiting in a collective.
            all_image = distributed.gather_with_grad(image)
            all_text = distributed.gather_with_grad(text)
            offset = distributed.rank() * local_batch
        else:
            all_image, all_text, offset = image, text, 0
        global_batch = all_image.shape[0]
        if global_batch < 2:
            raise ValueError(
                f"ContrastiveLoss needs at least 2 image-report pairs per (global) batch, got {global_batch} "
                f"in total ({local_batch} on this process): the negatives come from the other pairs"
            )

        # Autocast would run the matmuls in half precision again; a scale of up to 100 multiplies
        # their rounding errors, so the logits are computed in float32.
        with torch.autocast(device_type=image.device.type, enabled=False):
            scale = self.logit_scale().float()
            logits_image = scale * image @ all_text.T  # (b, N): local images against every report
            logits_text = scale * text @ all_image.T  # (b, N): local reports against every image
            labels = torch.arange(local_batch, device=image.device) + offset
            loss = 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))
        return {"contrastive": loss}

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:.4g}, learnable_temperature={self.learnable_temperature}, "
            f"logit_scale_range=[{math.exp(self.min_log_scale):g}, {math.exp(self.max_log_scale):g}]"
        )
