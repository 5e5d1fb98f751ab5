"""Benchmarks of MOSMOS against plain MONAI, measured in one run on the same machine.

::

    python -m benchmarks.run [--device auto|cpu|cuda] [--size small|full] [--repeats N] [--out results.json]
                             [--warmup N] [--threads N] [--only PATTERN ...]

Each *case* is one workload, timed as the median of ``--repeats`` repetitions after ``--warmup``
untimed ones, with its peak memory:

- ``finetune/*``: one training step (forward, Dice + cross-entropy, backward, AdamW) of MONAI's
  UNETR, of MOSMOS with ``decoder`` fusion (the pre-trained ViT is the segmenter's encoder and also
  feeds the frozen tag head) and with ``input`` fusion (a second, frozen ViT makes the maps, and the
  UNETR takes 1 + K channels), on the same input;
- ``inference/*``: MONAI ``sliding_window_inference`` over a whole volume, windows computed on the
  device and logits accumulated on the CPU (``device="cpu"``), plain UNETR vs the MOSMOS variants,
  which make their maps per window inside ``forward``;
- ``pretrain/*``: one report-supervised pre-training step (``build_pretrain_model`` +
  ``PretrainTask``: ViT, text encoder, tag head, InfoNCE + tag loss) vs a supervised UNETR step with
  the same ViT, image size and batch;
- ``data/*``: the data pipeline on NIfTI phantoms written by ``generate_cohort``: training crops per
  second read from disk (MONAI ``Dataset``) and from an in-memory cache (MONAI ``CacheDataset``), and
  the share of a training step spent waiting for the next batch.

How (the JSON and the table header repeat it):

- The cases of a group are *timed together*, in one process, repetitions interleaved round-robin
  with the order rotated each round: a change in machine load hits every variant alike and cancels
  out of the ratios (on a shared 2-core machine, consecutive timing gave ratios off by 2-7x).
- Each case's *memory* is probed alone, as the peak of a steady-state repetition (after one that
  allocates the optimiser state and lets cuDNN try its algorithms). CUDA:
  ``torch.cuda.max_memory_allocated`` minus the allocation when the case started. CPU: the
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
  resident set when the case started and minus the shared-library code pages the case touched
  (growth of ``RssFile``), in a fresh process per case, forked from a clean server
  process (``multiprocessing`` "forkserver": no case sees another's high-water mark; forking a
  process that has run torch operations can hang in OpenMP). ``tracemalloc`` does not see torch's
  allocations; without ``/proc`` (macOS) ``resource.getrusage().ru_maxrss`` is used.
- On CUDA everything runs in this process under bf16 autocast; on the CPU in float32.

The command prints a table and writes everything (machine, versions, settings, every repetition)
as JSON; ``run_benchmarks`` returns the same dict.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "CASES",
    "DATA_WAIT_TARGET",
    "FUSION_RATIO_TARGET",
    "SIZES",
    "BenchCase",
    "BenchConfig",
    "CaseContext",
    "CudaMemoryMeter",
    "HostMemoryMeter",
    "Workload",
    "build_benchmark_segmenter",
    "format_table",
    "machine_info",
    "main",
    "run_benchmarks",
    "select_cases",
]

# ----------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchConfig:
    """The workload sizes of one benchmark run.

    Attributes:
        name: ``"small"`` (CI on a laptop CPU) or ``"full"`` (real UNETR scale, for a GPU).
        roi_size: UNETR input / sliding-window patch (H, W, D), multiples of 16.
        volume_size: the volume that sliding-window inference covers.
        batch_size: images per training step (crops per loaded volume in the data cases).
        hidden_size, mlp_dim, num_heads: the fine-tuning UNETR's ViT (768, 3072, 12 is MONAI's UNETR).
        feature_size: UNETR's decoder width.
        tag_head_dim, tag_head_heads: the organ-tag head (as ``PretrainConfig``).
        pretrain_width: ``PretrainConfig.encoder_width`` of the pre-training ViT (its MLP is
            2 x width and it has 4 heads: ``build_image_encoder`` fixes both).
        text_encoder: ``"tiny"`` or ``"minilm"`` (``PretrainConfig.text_encoder``).
        sw_batch_size, sw_overlap: ``sliding_window_inference`` arguments.
        phantom_cases, phantom_shape, phantom_spacing: the cohort the data cases read (voxels, mm).
        data_steps: loader batches (one volume, ``batch_size`` crops each) per data measurement.
        num_workers: DataLoader worker processes in the data cases.
        label_map: K = its foreground organs (tags and map channels), classes = its num_classes.
        lr: AdamW learning rate of every training step.

    Raises:
        ValueError: a size that UNETR cannot take or a non-positive count (the message names it).
    """

    name: str
    roi_size: tuple[int, int, int]
    volume_size: tuple[int, int, int]
    batch_size: int
    hidden_size: int
    mlp_dim: int
    num_heads: int
    feature_size: int
    tag_head_dim: int
    tag_head_heads: int
    pretrain_width: int
    text_encoder: str
    sw_batch_size: int
    sw_overlap: float
    phantom_cases: int
    phantom_shape: tuple[int, int, int]
    phantom_spacing: tuple[float, float, float]
    data_steps: int
    num_workers: int
    label_map: str = "btcv"
    lr: float = 1e-4

    def __post_init__(self) -> None:
        where = f"BenchConfig {self.name!r}"
        for name in ("roi_size", "volume_size", "phantom_shape", "phantom_spacing"):
            value = getattr(self, name)
            if len(value) != 3 or any(v <= 0 for v in value):
                raise ValueError(f"{where}: {name} must be 3 positive sizes, got {value!r}")
        if any(s % 16 for s in self.roi_size):
            raise ValueError(f"{where}: roi_size {self.roi_size} must be multiples of 16 (ViT patches)")
        if any(v < r for v, r in zip(self.volume_size, self.roi_size)):
            raise ValueError(f"{where}: volume_size {self.volume_size} is smaller than roi_size {self.roi_size}")
        for name in ("batch_size", "hidden_size", "mlp_dim", "num_heads", "feature_size", "tag_head_dim",
                     "tag_head_heads", "pretrain_width", "sw_batch_size", "phantom_cases"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{where}: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ValueError(f"{where}: batch_size must be >= 2 (InfoNCE takes its negatives from the batch)")
        if self.data_steps < 3:
            raise ValueError(f"{where}: data_steps must be >= 3 (the first batch is not timed), got {self.data_steps}")
        if self.num_workers < 0:
            raise ValueError(f"{where}: num_workers must be >= 0, got {self.num_workers}")
        if self.hidden_size % self.num_heads or self.tag_head_dim % self.tag_head_heads:
            raise ValueError(f"{where}: num_heads must divide hidden_size and tag_head_heads tag_head_dim")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"{where}: sw_overlap must be in [0, 1), got {self.sw_overlap}")


SIZES: dict[str, BenchConfig] = {
    # About a minute on a 2-core CPU: a tiny 12-block ViT and 32^3 windows. The decoder keeps MONAI's
    # width (feature_size 16): the fusion overhead is K = 13 map channels next to those decoder
    # channels, and a narrower decoder would exaggerate it (feature_size 8 gave 1.16 instead of 1.07
    # for decoder-fusion inference).
    "small": BenchConfig(
        name="small", roi_size=(32, 32, 32), volume_size=(96, 96, 48), batch_size=2,
        hidden_size=48, mlp_dim=96, num_heads=4, feature_size=16, tag_head_dim=32, tag_head_heads=4,
        pretrain_width=48, text_encoder="tiny", sw_batch_size=4, sw_overlap=0.25,
        phantom_cases=4, phantom_shape=(96, 96, 48), phantom_spacing=(4.0, 4.0, 6.0), data_steps=12, num_workers=0,
    ),
    # MONAI's UNETR as published (ViT-B: 768/3072/12, feature_size 16, 96^3), a 512x512x128 CT volume;
    # phantoms at 1.5 x 1.5 x 2 mm, the grid BTCV is usually resampled to.
    "full": BenchConfig(
        name="full", roi_size=(96, 96, 96), volume_size=(512, 512, 128), batch_size=2,
        hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16, tag_head_dim=128, tag_head_heads=4,
        pretrain_width=768, text_encoder="minilm", sw_batch_size=4, sw_overlap=0.25,
        phantom_cases=3, phantom_shape=(256, 256, 128), phantom_spacing=(1.5, 1.5, 2.0), data_steps=12, num_workers=4,
    ),
}

#: the largest share of a training step that may go to waiting for data (issue target, with a cache)
DATA_WAIT_TARGET = 0.10
#: the largest MOSMOS / plain MONAI time ratio aimed at for decoder fusion
FUSION_RATIO_TARGET = 1.15
# Seed of the synthetic inputs and of every model's initialisation.
_SEED = 0
# How long the parent waits for a case's process before declaring it hung.
_CASE_TIMEOUT_S = 3600.0
# Modules the case server imports once, so that each case process starts in milliseconds.
# (Not benchmarks.run itself: multiprocessing re-runs the main module in each child, and runpy
# warns when that module was imported already.)
_PRELOAD = ("torch", "monai.networks.nets", "monai.inferers", "monai.data", "monai.transforms", "transformers",
            "mosmoskit.models", "mosmoskit.pretraining.model", "mosmoskit.pretraining.task")
_MB = 2.0**20
# Loader passes timed per data case (each pass covers data_steps volumes).
_DATA_PASSES = 3


# ------------------------------------------------------------------------------------------ memory


def _proc_status() -> dict[str, int] | None:
    """``VmRSS``, ``VmHWM`` and ``RssFile`` of this process in bytes, or None without ``/proc``."""
    try:
        with open("/proc/self/status") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values if len(values) == 3 else None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024  # macOS: bytes, Linux: kB


class HostMemoryMeter:
    """Peak memory of this process's data during a block, above its level at the start.

    ``start()`` records the resident set and resets the kernel's high-water mark. ``peak_mb()`` is
    the high-water mark since then, minus that start level, minus the growth of *file-backed*
    resident pages (``RssFile``): the shared-library code a case touches for the first time (parts
    of libtorch, MKL) is resident too, varies by tens of MB from run to run, and is not memory the
    workload allocates. Where ``/proc`` is missing the ``ru_maxrss`` high-water mark of the process
    is used instead (code pages included; exact only in a fresh process).
    """

    def __init__(self) -> None:
        self.method = "unavailable"
        self._base: int | None = None
        self._file_base = 0
        self.file_growth_mb: float | None = None

    def start(self) -> None:
        status = _proc_status()
        if status is not None:
            self._base, self._file_base = status["VmRSS"], status["RssFile"]
            self.method = "VmHWM" if _reset_peak_rss() else "VmHWM (not reset: peak may predate the case)"
            return
        self._base = _ru_maxrss_bytes()
        self.method = "ru_maxrss" if self._base is not None else "unavailable"

    def reset_peak(self) -> None:
        """Forget the peak so far (the start level stays): the next peak is a steady-state one."""
        if _proc_status() is not None:
            _reset_peak_rss()

    def peak_mb(self) -> float | None:
        if self._base is None:
            return None
        status = _proc_status()
        if status is None:
            peak = _ru_maxrss_bytes()
            return None if peak is None else max(0.0, (peak - self._base) / _MB)
        file_growth = max(0, status["RssFile"] - self._file_base)
        self.file_growth_mb = file_growth / _MB
        return max(0.0, (status["VmHWM"] - self._base - file_growth) / _MB)

    def current_mb(self) -> float | None:
        status = _proc_status()
        return None if status is None else status["VmRSS"] / _MB


class CudaMemoryMeter:
    """Peak CUDA memory allocated by torch during a block, above what was allocated at its start."""

    method = "torch.cuda.max_memory_allocated"

    def __init__(self, device: Any) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        """Forget the peak so far (the start level stays): the next peak is a steady-state one."""
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        import torch

        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self._base) / _MB



# ------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class CaseContext:
    """What a case receives (picklable: it crosses into the case's process)."""

    config: BenchConfig
    device: str
    amp: str | None  # "bfloat16", "float16" or None (float32)
    repeats: int
    warmup: int
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    cohort: str | None = None  # the phantom folder (data cases only)


@dataclass(frozen=True)
class Workload:
    """One repeatable unit of work, built inside the process that runs it.

    Attributes:
        run: one repetition (a training step, one whole-volume inference); its result is dropped
            before the next call.
        info: facts for the JSON once it has run (last loss, shapes, parameter counts).
    """

    run: Callable[[], Any]
    info: Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class BenchCase:
    """One row of the table.

    Exactly one of ``build`` and ``measure`` is set:

    - ``build(ctx) -> Workload``: a workload compared with others of its group. Its memory is
      measured alone (a process of its own on the CPU) and its time in one process with the rest
      of its group, repetitions interleaved, so that a change of machine load hits every variant
      alike and cancels out of the ratios;
    - ``measure(ctx) -> dict``: a case that times itself (the data pipeline); the dict has
      ``times_s``.

    Attributes:
        name: ``group/variant``.
        what: one line on the workload.
        baseline: the case this one is compared with (ratios), or None.
        target: the time ratio aimed at (issue targets), or None.
        note: why the ratio is what it is (printed under the table).
    """

    name: str
    what: str
    build: Callable[[CaseContext], Workload] | None = None
    measure: Callable[[CaseContext], dict[str, Any]] | None = None
    baseline: str | None = None
    target: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if (self.build is None) == (self.measure is None):
            raise ValueError(f"benchmark case {self.name!r}: set exactly one of build and measure")

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


def _torch_device(ctx: CaseContext) -> Any:
    import torch

    return torch.device(ctx.device)


def _amp_dtype(ctx: CaseContext) -> Any:
    import torch

    return None if ctx.amp is None else getattr(torch, ctx.amp)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _label_map(cfg: BenchConfig):
    from mosmoskit.labels import load_label_map

    return load_label_map(cfg.label_map)


def _segmentation_batch(cfg: BenchConfig, num_classes: int, device: Any):
    """A seeded image batch (B, 1, *roi) in [0, 1] and labels (B, 1, *roi) of random class ids."""
    import torch

    generator = torch.Generator().manual_seed(_SEED)
    image = torch.rand((cfg.batch_size, 1, *cfg.roi_size), generator=generator)
    labels = torch.randint(0, num_classes, (cfg.batch_size, 1, *cfg.roi_size), generator=generator)
    return image.to(device), labels.to(device)


def _unetr(cfg: BenchConfig, in_channels: int, out_channels: int):
    from mosmoskit.models import create_model

    return create_model(
        "unetr3d", in_channels=in_channels, out_channels=out_channels, img_size=cfg.roi_size,
        feature_size=cfg.feature_size, hidden_size=cfg.hidden_size, mlp_dim=cfg.mlp_dim, num_heads=cfg.num_heads,
    )


def build_benchmark_segmenter(cfg: BenchConfig, fusion: str):
    """The network a fine-tuning/inference case runs; random weights (speed does not depend on them).

    Args:
        cfg: the sizes.
        fusion: ``"none"`` (plain MONAI ``UNETR``, not wrapped), ``"decoder-shared"``
            (``MosmosSegmenter`` sharing the UNETR's ViT with a frozen tag head: ``share_encoder=True``),
            ``"decoder"`` (the default: a separate frozen copy of the pre-trained ViT feeds the tag head)
            or ``"input"`` (a separate frozen ViT and tag head make the maps, the UNETR takes 1 + K
            channels): the modules ``build_segmenter`` builds from a checkpoint, without needing one.

    Returns:
        An ``nn.Module`` mapping (B, 1, *roi_size) to logits (B, num_classes, *roi_size).

    Raises:
        ValueError: an unknown ``fusion``.
    """
    from mosmoskit.models import MosmosSegmenter, TagHead, UNETRViTEncoder

    label_map = _label_map(cfg)
    k, classes = len(label_map.foreground_names), label_map.num_classes
    if fusion == "none":
        return _unetr(cfg, 1, classes)
    if fusion not in ("decoder-shared", "decoder", "input"):
        raise ValueError(f"fusion must be 'none', 'decoder-shared', 'decoder' or 'input', got {fusion!r}")
    tag_head = TagHead(num_tags=k, feature_dim=cfg.hidden_size, embed_dim=cfg.tag_head_dim,
                       num_heads=cfg.tag_head_heads, readout="evidence")
    if fusion == "decoder-shared":
        return MosmosSegmenter(_unetr(cfg, 1, classes), fusion="decoder", tag_head=tag_head)
    map_encoder = UNETRViTEncoder(img_size=cfg.roi_size, hidden_size=cfg.hidden_size, mlp_dim=cfg.mlp_dim,
                                  num_heads=cfg.num_heads)
    if fusion == "decoder":
        return MosmosSegmenter(_unetr(cfg, 1, classes), fusion="decoder", tag_head=tag_head, map_encoder=map_encoder)
    return MosmosSegmenter(_unetr(cfg, 1 + k, classes), fusion="input", tag_head=tag_head, map_encoder=map_encoder)


def _segmentation_step(model: Any, num_classes: int, ctx: CaseContext) -> Callable[[Any, Any], Any]:
    """One fine-tuning step: forward under autocast, Dice + CE in float32, backward, AdamW."""
    import torch

    from mosmoskit.device import autocast
    from mosmoskit.losses import SegmentationLoss

    device, amp = _torch_device(ctx), _amp_dtype(ctx)
    loss_fn = SegmentationLoss(num_classes=num_classes)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ctx.config.lr)

    def step(image: Any, labels: Any) -> Any:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(image)
        loss = sum(loss_fn(logits.float(), labels).values())
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _parameter_counts(model: Any) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _training_workload(model: Any, num_classes: int, ctx: CaseContext, extra: dict[str, Any]) -> Workload:
    from mosmoskit.device import seed_everything

    seed_everything(_SEED)
    device = _torch_device(ctx)
    model = model.to(device).train()
    image, labels = _segmentation_batch(ctx.config, num_classes, device)
    step = _segmentation_step(model, num_classes, ctx)
    last: dict[str, float] = {}

    def run() -> None:
        last["loss"] = step(image, labels)

    def info() -> dict[str, Any]:
        return {"loss": float(last["loss"]), "input_shape": list(image.shape), **_parameter_counts(model), **extra}

    return Workload(run, info)


def _finetune_workload(fusion: str) -> Callable[[CaseContext], Workload]:
    def build(ctx: CaseContext) -> Workload:
        from mosmoskit.device import seed_everything

        seed_everything(_SEED)
        classes = _label_map(ctx.config).num_classes
        return _training_workload(build_benchmark_segmenter(ctx.config, fusion), classes, ctx, {"fusion": fusion})

    return build


def _inference_workload(fusion: str) -> Callable[[CaseContext], Workload]:
    def build(ctx: CaseContext) -> Workload:
        import torch
        from monai.inferers import sliding_window_inference

        from mosmoskit.device import autocast, seed_everything

        seed_everything(_SEED)
        cfg, device, amp = ctx.config, _torch_device(ctx), _amp_dtype(ctx)
        model = build_benchmark_segmenter(cfg, fusion).to(device).eval()
        # The whole volume stays on the CPU: only windows travel to the device, and the logits come
        # back to be accumulated there (a 512x512x128 volume of 14 classes is 1.9 GB of float32).
        volume = torch.rand((1, 1, *cfg.volume_size), generator=torch.Generator().manual_seed(_SEED))
        facts: dict[str, Any] = {}

        def predictor(x: Any) -> Any:
            facts["windows"] = facts.get("windows", 0) + int(x.shape[0])
            return model(x)

        def run() -> None:
            facts["windows"] = 0
            with torch.inference_mode(), autocast(device, amp):
                out = sliding_window_inference(
                    volume, cfg.roi_size, cfg.sw_batch_size, predictor, overlap=cfg.sw_overlap, mode="gaussian",
                    sw_device=device, device=torch.device("cpu"),
                )
            facts.update(output_shape=list(out.shape), output_device=str(out.device),
                         output_mb=out.numel() * out.element_size() / _MB,
                         # NaN or inf anywhere makes the sum non-finite
                         output_sum_finite=math.isfinite(float(out.float().sum())))

        def info() -> dict[str, Any]:
            return {**facts, "volume_shape": list(volume.shape), "fusion": fusion, **_parameter_counts(model)}

        return Workload(run, info)

    return build


def _pretrain_config(ctx: CaseContext, text_freeze: str):
    from mosmoskit.pretraining.config import PretrainConfig

    cfg = ctx.config
    return PretrainConfig(
        spatial_dims=3, image_encoder="vit3d", image_size=cfg.roi_size, encoder_width=cfg.pretrain_width,
        text_encoder=cfg.text_encoder, text_freeze=text_freeze, tag_head_dim=cfg.tag_head_dim,
        tag_head_heads=cfg.tag_head_heads, batch_size=cfg.batch_size, label_map=cfg.label_map, lr=cfg.lr,
        device=ctx.device,
    )


def _reports_and_tags(cfg: BenchConfig, label_map: Any) -> tuple[list[str], Any]:
    """B phantom reports and their tag targets (1 / 0 / -1), in the label map's organ order."""
    import torch

    from mosmoskit.data.phantom import make_case

    # A coarse grid is enough: only the report text and its tags are used.
    cases = [make_case(_SEED, i, shape=(32, 32, 16), spacing=(12.0, 12.0, 20.0)) for i in range(cfg.batch_size)]
    tags = torch.tensor([[c.tags.get(name, -1) for name in label_map.foreground_names] for c in cases])
    return [c.report for c in cases], tags


def _pretrain_workload(text_freeze: str) -> Callable[[CaseContext], Workload]:
    def build(ctx: CaseContext) -> Workload:
        import torch

        from mosmoskit.device import autocast, seed_everything
        from mosmoskit.pretraining.model import build_pretrain_model
        from mosmoskit.pretraining.task import PretrainTask

        seed_everything(_SEED)
        cfg, device, amp = ctx.config, _torch_device(ctx), _amp_dtype(ctx)
        pcfg = _pretrain_config(ctx, text_freeze)
        label_map = _label_map(cfg)
        model = build_pretrain_model(pcfg, label_map)
        task = PretrainTask(model, pcfg, label_map)  # registers the temperature: move to the device after
        model.to(device).train()
        reports, tags = _reports_and_tags(cfg, label_map)
        image, _ = _segmentation_batch(cfg, label_map.num_classes, device)
        batch = {"image": image, "report": reports, "tags": tags.to(device)}
        optimizer = torch.optim.AdamW(task.parameters_for_optimizer(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
        last: dict[str, Any] = {}

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                terms = task.step(batch)
            loss = sum(t.float() for t in terms.values())
            loss.backward()
            optimizer.step()
            last.update(loss=loss.detach(), terms={k: v.detach() for k, v in terms.items()})

        def info() -> dict[str, Any]:
            return {"loss": float(last["loss"]), "terms": {k: float(v) for k, v in last["terms"].items()},
                    "input_shape": list(image.shape), "text_encoder": pcfg.text_encoder, "text_freeze": text_freeze,
                    **_parameter_counts(model)}

        return Workload(run, info)

    return build


def _supervised_workload(ctx: CaseContext) -> Workload:
    """A supervised UNETR step whose ViT is exactly the pre-training encoder (same size, batch)."""
    from mosmoskit.device import seed_everything
    from mosmoskit.models import create_model, segmenter_kwargs_for_encoder
    from mosmoskit.pretraining.model import build_image_encoder

    seed_everything(_SEED)
    classes = _label_map(ctx.config).num_classes
    name, kwargs = segmenter_kwargs_for_encoder(build_image_encoder(_pretrain_config(ctx, "all")))
    model = create_model(name, **kwargs, out_channels=classes, feature_size=ctx.config.feature_size)
    vit = {k: kwargs[k] for k in ("hidden_size", "mlp_dim", "num_heads")}
    return _training_workload(model, classes, ctx, {"vit": vit})


# ------------------------------------------------------------------------------------ data cases


def _cohort_datalist(cohort: str) -> list[dict[str, str]]:
    root = Path(cohort)
    data = json.loads((root / "dataset.json").read_text())
    return [{key: str((root / item[key]).resolve()) for key in ("image", "label")} for item in data["training"]]


def _data_transform(cfg: BenchConfig):
    """The fine-tuning chain: load, check labels, window (deterministic: cacheable), then crops and
    augmentation (random). Flattened, so that ``CacheDataset`` sees where the random part starts
    (a nested ``Compose`` counts as random and would leave nothing cached)."""
    from monai.transforms import Compose

    from mosmoskit.data.augment import segmentation_train_transforms
    from mosmoskit.data.transforms import CheckLabelsd, ct_intensity_transform, load_transforms

    label_map = _label_map(cfg)
    return Compose([
        load_transforms(("image", "label")),
        CheckLabelsd(("label",), label_map),
        ct_intensity_transform(),
        segmentation_train_transforms(cfg.roi_size, label_map, num_samples=cfg.batch_size),
    ]).flatten()


def _loader(dataset: Any, cfg: BenchConfig, device: Any):
    import torch
    from monai.data import DataLoader, list_data_collate

    # One stream of data_steps volumes drawn with replacement: no epoch boundary at which the
    # workers would stop prefetching.
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=cfg.data_steps, generator=torch.Generator().manual_seed(_SEED)
    )
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=list_data_collate, pin_memory=device.type == "cuda")


def _throughput(dataset: Any, cfg: BenchConfig, device: Any) -> float:
    """Training crops per second from the loader alone (the first batch, which includes starting
    the workers, is not timed)."""
    start, crops = None, 0
    for batch in _loader(dataset, cfg, device):
        if start is None:
            start = time.perf_counter()
            continue
        crops += int(batch["image"].shape[0])
    return crops / max(time.perf_counter() - start, 1e-9)


def _plain_tensor(value: Any) -> Any:
    """A MONAI MetaTensor as a plain tensor (a network needs no metadata, and carrying it costs)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else value


def _wait_fraction(dataset: Any, ctx: CaseContext) -> dict[str, Any]:
    """Train a plain UNETR from the loader; the share of each step spent waiting for (and moving) data."""
    import torch

    from mosmoskit.device import seed_everything

    seed_everything(_SEED)
    cfg, device = ctx.config, _torch_device(ctx)
    classes = _label_map(cfg).num_classes
    model = build_benchmark_segmenter(cfg, "none").to(device).train()
    step = _segmentation_step(model, classes, ctx)
    waits, computes = [], []
    mark = time.perf_counter()
    for index, batch in enumerate(_loader(dataset, cfg, device)):
        image = _plain_tensor(batch["image"]).to(device, non_blocking=True)
        labels = _plain_tensor(batch["label"]).to(device, non_blocking=True)
        _sync(device)
        ready = time.perf_counter()
        step(image, labels)
        _sync(device)
        done = time.perf_counter()
        if index > 0:  # the first step includes starting the workers and warming up
            waits.append(ready - mark)
            computes.append(done - ready)
        mark = done
    return {
        "wait_fraction": sum(waits) / (sum(waits) + sum(computes)),
        "wait_s_median": statistics.median(waits),
        "step_s_median": statistics.median(computes),
        "steps_timed": len(waits),
    }


def _data_measure(cached: bool) -> Callable[[CaseContext], dict[str, Any]]:
    def measure(ctx: CaseContext) -> dict[str, Any]:
        from monai.data import CacheDataset, Dataset

        if ctx.cohort is None:
            raise ValueError("the data cases need ctx.cohort, the folder generate_cohort wrote")
        cfg, device = ctx.config, _torch_device(ctx)
        datalist = _cohort_datalist(ctx.cohort)
        transform = _data_transform(cfg)
        extra: dict[str, Any] = {"volumes": len(datalist), "num_workers": cfg.num_workers,
                                 "crops_per_volume": cfg.batch_size}
        if cached:
            before = HostMemoryMeter().current_mb()
            start = time.perf_counter()
            dataset = CacheDataset(datalist, transform=transform, cache_rate=1.0,
                                   num_workers=max(1, cfg.num_workers), progress=False)
            extra["cache_fill_s"] = time.perf_counter() - start
            after = HostMemoryMeter().current_mb()
            extra["cache_mb"] = None if before is None or after is None else after - before
        else:
            dataset = Dataset(datalist, transform=transform)
        # A pass over data_steps volumes already averages many crops: a few passes suffice.
        rates = [_throughput(dataset, cfg, device) for _ in range(min(ctx.repeats, _DATA_PASSES))]
        extra.update(samples_per_s=statistics.median(rates), samples_per_s_all=rates)
        extra.update(_wait_fraction(dataset, ctx))
        # times_s: seconds per training crop, so that "median" is a time in every row.
        return {"times_s": [1.0 / r for r in rates], **extra}

    return measure


# ----------------------------------------------------------------------------------- the case list

_INPUT_NOTE = (
    "input fusion cannot share the encoder: the segmenter's ViT reads image + K maps, so a second, frozen "
    "pre-trained ViT must first make the maps (forward only, no gradient), and the first layer reads 1 + K "
    "channels: about one extra ViT forward per step, by design"
)
_DECODER_COPY_NOTE = (
    "the default decoder fusion reads the maps from a frozen copy of the pre-trained ViT (one extra forward, no "
    "gradient) because the shared ViT changes under the frozen tag head while fine-tuning (a two-seed phantom "
    "pilot scored 1.2-1.4 Dice points lower with it); share_encoder=True trades that for speed"
)
CASES: tuple[BenchCase, ...] = (
    BenchCase("finetune/unetr_plain", "training step of MONAI UNETR (Dice+CE, AdamW)",
              build=_finetune_workload("none")),
    BenchCase("finetune/mosmos_decoder_shared", "same step, MOSMOS decoder fusion, shared ViT (share_encoder=True)",
              build=_finetune_workload("decoder-shared"), baseline="finetune/unetr_plain", target=FUSION_RATIO_TARGET,
              note="decoder fusion runs the ViT once; the extra cost is the tag head on the final tokens, K maps "
                   "upsampled to the patch and K more input channels of the 1x1 output head"),
    BenchCase("finetune/mosmos_decoder", "same step, MOSMOS decoder fusion, frozen ViT copy (the default)",
              build=_finetune_workload("decoder"), baseline="finetune/unetr_plain", note=_DECODER_COPY_NOTE),
    BenchCase("finetune/mosmos_input", "same step, MOSMOS input fusion (second frozen ViT)",
              build=_finetune_workload("input"), baseline="finetune/unetr_plain", note=_INPUT_NOTE),
    BenchCase("inference/unetr_plain", "sliding_window_inference, MONAI UNETR, logits accumulated on CPU",
              build=_inference_workload("none")),
    BenchCase("inference/mosmos_decoder_shared", "same, MOSMOS decoder fusion, shared ViT (maps made per window)",
              build=_inference_workload("decoder-shared"), baseline="inference/unetr_plain",
              target=FUSION_RATIO_TARGET,
              note="per window: the tag head and the map upsampling; the CPU-side accumulation is the same"),
    BenchCase("inference/mosmos_decoder", "same, MOSMOS decoder fusion, frozen ViT copy (the default)",
              build=_inference_workload("decoder"), baseline="inference/unetr_plain", note=_DECODER_COPY_NOTE),
    BenchCase("inference/mosmos_input", "same, MOSMOS input fusion", build=_inference_workload("input"),
              baseline="inference/unetr_plain", note=_INPUT_NOTE),
    BenchCase("pretrain/unetr_supervised", "supervised UNETR step with the pre-training ViT",
              build=_supervised_workload),
    BenchCase("pretrain/mosmos_text_frozen", "pre-training step, text encoder frozen (default; vectors cached)",
              build=_pretrain_workload("all"), baseline="pretrain/unetr_supervised",
              note="no convolutional decoder at full resolution: ViT + tag head + projections; the frozen text "
                   "encoder runs once per distinct report (cached), so after the first epoch it costs nothing"),
    BenchCase("pretrain/mosmos_text_tuned", "pre-training step, text encoder trained (text_freeze='none')",
              build=_pretrain_workload("none"), baseline="pretrain/unetr_supervised",
              note="adds the text encoder's forward and backward on B reports"),
    BenchCase("data/disk", "MONAI Dataset: read NIfTI + window + crops every time", measure=_data_measure(False)),
    BenchCase("data/cache", "MONAI CacheDataset: loaded volumes in memory, crops on the fly",
              measure=_data_measure(True), baseline="data/disk"),
)
_CASES_BY_NAME = {case.name: case for case in CASES}


# ------------------------------------------------------------------------------------------ runner

# Untimed repetitions before a memory probe resets its peak, and repetitions it then measures: the
# first step allocates the optimiser state and, on CUDA, lets cuDNN try its algorithms (workspaces
# that would otherwise count); the reported peak is that of a steady-state step.
_MEMORY_SETTLE = 1
_MEMORY_MEASURED = 1


def _meters(device: Any) -> tuple[HostMemoryMeter, CudaMemoryMeter | None]:
    gc.collect()
    host = HostMemoryMeter()
    gpu = CudaMemoryMeter(device) if device.type == "cuda" else None
    if gpu is not None:
        gpu.start()
    host.start()
    return host, gpu


def _read_meters(host: HostMemoryMeter, gpu: CudaMemoryMeter | None) -> dict[str, Any]:
    out: dict[str, Any] = {"host_peak_mb": host.peak_mb(), "host_memory_method": host.method,
                           "host_code_pages_mb": host.file_growth_mb}
    if gpu is not None:
        out["gpu_peak_mb"] = gpu.peak_mb()
    return out


def _apply_threads(ctx: CaseContext) -> None:
    import torch

    if ctx.threads:
        torch.set_num_threads(ctx.threads)


def _memory_probe(name: str, ctx: CaseContext) -> dict[str, Any]:
    """Build one workload and measure the peak memory of a steady-state repetition (includes the
    model, its optimiser state and inputs, which were allocated after the meters started)."""
    _apply_threads(ctx)
    device = _torch_device(ctx)
    host, gpu = _meters(device)
    workload = _CASES_BY_NAME[name].build(ctx)
    for _ in range(_MEMORY_SETTLE):
        workload.run()
    host.reset_peak()
    if gpu is not None:
        gpu.reset_peak()
    for _ in range(_MEMORY_MEASURED):
        workload.run()
    _sync(device)
    return {**_read_meters(host, gpu), **workload.info()}


def _timing_group(names: Sequence[str], ctx: CaseContext) -> dict[str, list[float]]:
    """Time the workloads of one group in this process: each warmed up, then ``repeats`` rounds in
    which every workload runs once, the order rotated each round."""
    _apply_threads(ctx)
    device = _torch_device(ctx)
    workloads = {name: _CASES_BY_NAME[name].build(ctx) for name in names}
    for workload in workloads.values():
        for _ in range(ctx.warmup):
            workload.run()
    times: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    for round_index in range(ctx.repeats):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            _sync(device)
            start = time.perf_counter()
            workloads[name].run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _data_probe(name: str, ctx: CaseContext) -> dict[str, Any]:
    _apply_threads(ctx)
    device = _torch_device(ctx)
    host, gpu = _meters(device)
    out = _CASES_BY_NAME[name].measure(ctx)
    return {**out, **_read_meters(host, gpu)}


_TASKS: dict[str, Callable[..., Any]] = {"memory": _memory_probe, "timing": _timing_group, "data": _data_probe}


def _child_entry(task: str, args: tuple, conn: Any) -> None:
    """Body of a case process: run one task, send ("ok", result) or ("error", traceback)."""
    try:
        conn.send(("ok", _TASKS[task](*args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


_SERVER_CONTEXT: Any = None


def _case_process_context() -> Any:
    """A "forkserver" context whose server imported torch and MONAI once: every case process is a
    fork of a process that never ran a torch operation (forking one that did can hang in OpenMP),
    and starts without paying for the imports again."""
    global _SERVER_CONTEXT
    if _SERVER_CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(_PRELOAD))
        _SERVER_CONTEXT = context
    return _SERVER_CONTEXT


def _run_task(task: str, args: tuple, isolate: bool, label: str) -> Any:
    """Run ``_TASKS[task](*args)`` here, or in a fresh process when ``isolate``."""
    if not isolate:
        return _TASKS[task](*args)
    context = _case_process_context()
    receiver, sender = context.Pipe(duplex=False)
    # The target by its module path, not __main__, so it resolves alike under "python -m" and pytest.
    target = importlib.import_module("benchmarks.run")._child_entry
    process = context.Process(target=target, args=(task, args, sender), name=f"bench-{label}")
    process.start()
    sender.close()
    deadline = time.monotonic() + _CASE_TIMEOUT_S
    message = None
    while time.monotonic() < deadline:
        if receiver.poll(0.5):
            try:
                message = receiver.recv()
            except EOFError:
                message = None
            break
        if not process.is_alive():
            break
    process.join(timeout=60)
    if process.is_alive():
        process.kill()
        process.join()
    if message is None:
        raise RuntimeError(
            f"benchmark {label} ended without a result (exit code {process.exitcode}; a negative code is the "
            f"signal that killed it, e.g. -9 when the system ran out of memory)"
        )
    status, payload = message
    if status != "ok":
        raise RuntimeError(f"benchmark {label} failed in its process:\n{payload}")
    return payload


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: Any) -> dict[str, Any]:
    """CPU model, cores, library versions and the device (its name and memory on CUDA)."""
    import monai
    import numpy
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def select_cases(patterns: Sequence[str] | None) -> list[BenchCase]:
    """The cases whose names match any of ``patterns`` (shell-style, ``"finetune/*"``), in table order.

    Raises:
        ValueError: a pattern that matches no case (the message lists the case names).
    """
    if not patterns:
        return list(CASES)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatch(c.name, p) for c in CASES)]
    if unmatched:
        raise ValueError(f"patterns {unmatched} match no benchmark case; cases: {[c.name for c in CASES]}")
    return [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in patterns)]


def _row(case: BenchCase, times: Sequence[float], out: dict[str, Any], device_type: str) -> dict[str, Any]:
    times = [float(t) for t in times]
    primary = out.get("gpu_peak_mb") if device_type == "cuda" else out.get("host_peak_mb")
    return {"case": case.name, "group": case.group, "what": case.what, "median_s": statistics.median(times),
            "times_s": times, "peak_mb": primary, **{k: v for k, v in out.items() if k != "times_s"}}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by_name = {row["case"]: row for row in rows}
    for row in rows:
        case = _CASES_BY_NAME[row["case"]]
        base = by_name.get(case.baseline) if case.baseline else None
        row.update(baseline=case.baseline, target_ratio=case.target, note=case.note)
        if row["case"] == "data/cache":
            row["wait_target"] = DATA_WAIT_TARGET
            row["meets_target"] = row["wait_fraction"] < DATA_WAIT_TARGET
        if base is None:
            continue
        if row["group"] == "data":
            row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
            continue
        row["time_ratio"] = row["median_s"] / base["median_s"]
        # Each repetition's ratio to the same round's baseline: how stable the ratio is.
        pairs = [t / b for t, b in zip(row["times_s"], base["times_s"])]
        row["time_ratio_range"] = [min(pairs), max(pairs)]
        if row.get("peak_mb") and base.get("peak_mb"):
            row["memory_ratio"] = row["peak_mb"] / base["peak_mb"]
        if case.target is not None:
            row["meets_target"] = row["time_ratio"] <= case.target


def run_benchmarks(
    size: str = "small",
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 2,
    only: Sequence[str] | None = None,
    threads: int = 0,
    isolate: bool | None = None,
    progress: bool = True,
    text_encoder: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark cases and return everything as a JSON-ready dict.

    Per group (fine-tuning, inference, pre-training): each case's memory is probed alone (two
    steady-state repetitions after one that settles), then the group's cases are timed together,
    interleaved. The data cases time themselves.

    Args:
        size: a key of ``SIZES`` (``"small"``, ``"full"``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``mosmoskit.device.resolve_device``). CUDA runs
            under bf16 autocast (fp16 where bf16 is unsupported), the CPU in float32.
        repeats: timed repetitions per case (the median is reported).
        warmup: untimed repetitions per case before them.
        only: shell patterns selecting cases (``["finetune/*"]``); None runs all.
        text_encoder: the pre-training case's text encoder instead of the size's (``"tiny"``
            needs no installed model; the timing then leaves out MiniLM's cost, which the
            result's ``config`` records).
        threads: torch intra-op threads in every case (0: torch's default, one per core). On a
            machine shared with other jobs use 1: OpenMP threads that spin-wait for a descheduled
            sibling made a step 5-60x slower, and noisy, on a loaded 2-core machine.
        isolate: run each probe in a process of its own (needed for a per-case CPU memory peak).
            Default: yes on the CPU, no on CUDA (there the CUDA peak counter is reset per case).
        progress: print a line per finished step to stderr.

    Returns:
        ``{"command", "machine", "size", "config", "device", "amp", "repeats", "warmup",
        "memory_method", "timing_method", "rows": [...], "seconds_total", ...}``; each row has
        ``case``, ``median_s``, ``times_s``, ``peak_mb`` and, where compared, ``time_ratio``,
        ``memory_ratio``, ``target_ratio``, ``meets_target``.

    Raises:
        ValueError: an unknown size, device or pattern, or repeats < 1, warmup < 0, threads < 0.
        RuntimeError: a case failed (its traceback is in the message).
    """
    import torch

    from mosmoskit.device import resolve_amp, resolve_device

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: torch's default), got {threads!r}")
    cases = select_cases(only)
    cfg = SIZES[size]
    if text_encoder:
        cfg = replace(cfg, text_encoder=text_encoder)
    dev = resolve_device(device)
    amp = None
    if dev.type == "cuda":
        amp = resolve_amp("bf16" if torch.cuda.is_bf16_supported() else "fp16", dev)
        # The same shapes every step: let cuDNN pick its fastest kernels (during the warm-up).
        torch.backends.cudnn.benchmark = True
    isolate = (dev.type == "cpu") if isolate is None else bool(isolate)
    if isolate and "forkserver" not in multiprocessing.get_all_start_methods():
        isolate = False  # Windows: no forkserver; memory peaks then span several cases
    ctx = CaseContext(config=cfg, device=str(dev), amp=None if amp is None else str(amp).replace("torch.", ""),
                      repeats=repeats, warmup=warmup, threads=threads)
    result: dict[str, Any] = {
        "command": None,  # main() fills it in
        "machine": {**machine_info(dev), "torch_threads": threads or _default_threads()},
        "size": size,
        "config": asdict(cfg),
        "device": str(dev),
        "amp": ctx.amp,
        "repeats": repeats,
        "warmup": warmup,
        "isolated_processes": isolate,
        "timing_method": (
            f"median of {repeats} repetition(s) after {warmup} warm-up(s); the cases of a group are timed in one "
            f"process, interleaved (round-robin, order rotated), so load changes hit all alike; CUDA synchronised "
            f"around each; data rows: seconds per training crop"
        ),
        "memory_method": _memory_method(dev.type, isolate),
    }

    def say(text: str) -> None:
        if progress:
            print(f"[bench] {text}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    workdir = None
    try:
        groups: dict[str, list[BenchCase]] = {}
        for case in cases:
            groups.setdefault(case.group, []).append(case)
        for group, members in groups.items():
            if members[0].measure is not None:
                if ctx.cohort is None:
                    workdir = tempfile.TemporaryDirectory(prefix="mosmos-bench-")
                    ctx, result["phantom_generation_s"] = _with_cohort(ctx, Path(workdir.name))
                for case in members:
                    out = _run_task("data", (case.name, ctx), isolate, case.name)
                    rows.append(_row(case, out["times_s"], out, dev.type))
                    say(f"{case.name}: {out['samples_per_s']:.1f} crops/s, wait {100 * out['wait_fraction']:.1f}%")
                continue
            probes = {}
            for case in members:
                probes[case.name] = _run_task("memory", (case.name, ctx), isolate, f"{case.name} (memory)")
                say(f"{case.name}: peak {_fmt_mb(_primary_peak(probes[case.name], dev.type))}")
            names = [case.name for case in members]
            times = _run_task("timing", (names, ctx), isolate, f"{group} (timing)")
            for case in members:
                rows.append(_row(case, times[case.name], probes[case.name], dev.type))
                say(f"{case.name}: median {_fmt_seconds(rows[-1]['median_s'])}")
    finally:
        if workdir is not None:
            workdir.cleanup()
    _add_ratios(rows)
    result["rows"] = rows
    result["seconds_total"] = time.perf_counter() - start
    return result


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _primary_peak(out: dict[str, Any], device_type: str) -> float | None:
    return out.get("gpu_peak_mb") if device_type == "cuda" else out.get("host_peak_mb")


def _with_cohort(ctx: CaseContext, workdir: Path) -> tuple[CaseContext, float]:
    """Write the phantom cohort the data cases read; (the context naming it, seconds it took)."""
    from mosmoskit.data.phantom import generate_cohort

    cfg = ctx.config
    start = time.perf_counter()
    root = generate_cohort(workdir / "cohort", n=cfg.phantom_cases, seed=_SEED, shape=cfg.phantom_shape,
                           spacing=cfg.phantom_spacing, progress=False)
    return replace(ctx, cohort=str(root)), time.perf_counter() - start


def _memory_method(device_type: str, isolate: bool) -> str:
    where = "in a fresh process per case (forkserver)" if isolate else "in this process, one case after another"
    host = ("host: resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs) minus the resident set "
            "when the case started and minus the library code pages it touched (RssFile growth; ru_maxrss without "
            f"/proc), {where}")
    steady = (f"peak of {_MEMORY_MEASURED} steady-state repetitions after {_MEMORY_SETTLE} that allocates optimiser "
              "state; includes model, optimiser state and inputs")
    if device_type == "cuda":
        return (f"peak_mb = GPU: torch.cuda.max_memory_allocated minus the allocation when the case started; {steady}; "
                f"host_peak_mb = {host}")
    return f"peak_mb = {host}; {steady}"


# ------------------------------------------------------------------------------------------- table


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_mb(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1024:.2f} GB" if value >= 1024 else f"{value:.0f} MB"


def format_table(result: dict[str, Any]) -> str:
    """The results as a fixed-width text table, with the machine, the methods and the notes."""
    m = result["machine"]
    device = m.get("gpu", "CPU") if result["device"].startswith("cuda") else "CPU"
    precision = f"autocast {result['amp']}" if result["amp"] else "float32"
    load = m.get("load_average_1min")
    lines = [
        f"MOSMOS vs plain MONAI - size {result['size']}, device {result['device']} ({device}), {precision}",
        f"machine: {m['cpu']}, {m['cpu_cores']} cores ({m['torch_threads']} torch threads)"
        + (f", load average {load:.1f} at start" if load is not None else "")
        + f"; torch {m['torch']}, monai {m['monai']}, python {m['python']}",
        f"timing: {result['timing_method']}",
        f"memory: {result['memory_method']}",
        "",
    ]
    header = ("case", "median", "peak mem", "time x (range)", "mem x", "target")
    table = []
    for row in result["rows"]:
        if row["group"] == "data":
            median = f"{row['samples_per_s']:.1f} crops/s"
            ratio = f"{row['speedup']:.1f}x faster" if "speedup" in row else ""
            target = f"wait {100 * row['wait_fraction']:.1f}% of step"
            if "wait_target" in row:
                target += f" (< {100 * row['wait_target']:.0f}%: {'met' if row['meets_target'] else 'MISSED'})"
            table.append((row["case"], median, _fmt_mb(row["peak_mb"]), ratio, "", target))
            continue
        ratio = ""
        if "time_ratio" in row:
            low, high = row["time_ratio_range"]
            ratio = f"{row['time_ratio']:.2f} ({low:.2f}-{high:.2f})"
        mem = f"{row['memory_ratio']:.2f}" if "memory_ratio" in row else ""
        target = ""
        if row.get("target_ratio") is not None:
            target = f"<= {row['target_ratio']:.2f}: {'met' if row['meets_target'] else 'MISSED'}"
        table.append((row["case"], _fmt_seconds(row["median_s"]), _fmt_mb(row["peak_mb"]), ratio, mem, target))
    widths = [max(len(str(r[i])) for r in (header, *table)) for i in range(len(header))]
    for r in (header, *table):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    inference = [row for row in result["rows"] if row["group"] == "inference"]
    cache = [row for row in result["rows"] if row["case"] == "data/cache"]
    if inference or cache:
        lines.append("")
    if inference:
        row = inference[0]
        lines.append(f"inference: {row['windows']} windows of {tuple(result['config']['roi_size'])} over "
                     f"{tuple(row['volume_shape'][2:])}; logits ({_fmt_mb(row['output_mb'])}) accumulated on "
                     f"{row['output_device']}")
    if cache:
        row = cache[0]
        lines.append(f"data: {row['volumes']} phantom volumes {tuple(result['config']['phantom_shape'])}, "
                     f"{row['crops_per_volume']} crops each, {row['num_workers']} loader worker(s); cache filled in "
                     f"{row['cache_fill_s']:.1f} s, holds {_fmt_mb(row['cache_mb'])}")
    notes = [(row["case"], row["note"]) for row in result["rows"] if row.get("note") and "time_ratio" in row]
    if notes:
        lines.append("")
        lines.extend(f"- {name}: {note}" for name, note in notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time and measure MOSMOS fine-tuning, inference, pre-training and data loading against "
                    "plain MONAI, in one run on this machine.",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when present (bf16 autocast there), else CPU (float32)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES),
                        help="small: tiny ViT, 32^3 windows (CI, 1-2 min on 2 CPU cores); full: MONAI's UNETR "
                             "(768 hidden, 96^3) over 512x512x128, for a GPU")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per case before them")
    parser.add_argument("--text-encoder", default=None, choices=("tiny", "minilm"),
                        help="pre-training case's text encoder (default: the size's; tiny needs no installed model)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per case (default 0: torch's default); use 1 on a machine shared "
                             "with other jobs, where spin-waiting OpenMP threads make timings slow and noisy")
    parser.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                        help="run only the cases matching these shell patterns, e.g. 'finetune/*'")
    parser.add_argument("--out", default=None,
                        help="JSON file to write (default runs/benchmarks/<size>_<device>.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the table, write the JSON; 0 on success."""
    from mosmoskit.io import atomic_write_text

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    result = run_benchmarks(size=args.size, device=args.device, repeats=args.repeats, warmup=args.warmup,
                            only=args.only, threads=args.threads, text_encoder=args.text_encoder)
    result["command"] = " ".join(["python -m benchmarks.run", *argv])
    device_type = result["device"].split(":")[0]
    out = Path(args.out) if args.out else Path("runs") / "benchmarks" / f"{args.size}_{device_type}.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
