"""One command that checks the kit on a CUDA GPU in under five minutes, and reports peak memory.

Usage (from the repository root):
    python scripts/gpu_check.py                # CUDA: full-size benchmark table (bf16 autocast),
                                               # short pre-training and fine-tuning on phantoms
    python scripts/gpu_check.py --tiny         # the same steps at tiny sizes on the CPU (CI)

Three parts, each with its wall time and peak memory (GPU: ``torch.cuda.max_memory_allocated``;
CPU: the growth of this process's resident set, ``VmHWM``):

1. the benchmark table of ``benchmarks/run.py`` (``--size full`` on CUDA, ``small`` with ``--tiny``);
2. a short report-supervised pre-training run (``mosmoskit.pretraining.run.run_pretraining``) on a
   phantom cohort, 3D ViT;
3. a short fine-tuning run (``mosmoskit.finetuning.run.run_finetuning``, decoder fusion, from the
   checkpoint of part 2). If the kit has no fine-tuning module, this part is skipped with a message.

Everything is written to ``--out`` (default ``runs/gpu_check``): ``gpu_check.json`` and the run
folders. The exit status is 0 when every part ran (or was skipped for a missing module), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

# Run as a file (python scripts/gpu_check.py): make the repository root importable for `benchmarks`
# (and for the benchmark's case processes, which inherit sys.path).
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """Sizes of the pre-training and fine-tuning parts.

    Attributes:
        benchmark_size: ``benchmarks.run.SIZES`` key.
        benchmark_repeats, benchmark_warmup: timed and untimed repetitions per benchmark case.
        threads: torch threads, in this process and in each benchmark case (0: torch's default).
        image_size: pre-training image size = fine-tuning ROI (UNETR needs them equal); the phantoms
            are 96 x 96 x 64 voxels.
        encoder_width: the ViT's hidden size (MLP 2x, 4 heads: ``build_image_encoder``).
        text_encoder: ``"minilm"`` or ``"tiny"``.
        phantom_cases: phantom patients generated for each run.
        finetune_phantom_shape, finetune_phantom_spacing: the fine-tuning cohort's grid (voxels, mm;
            empty: the generator's 96 x 96 x 64 at 4 x 4 x 5 mm).
        pretrain_steps, finetune_steps: optimiser steps.
        batch_size: images per pre-training step; volumes per fine-tuning step.
        num_workers: DataLoader workers.
    """

    benchmark_size: str
    benchmark_repeats: int
    benchmark_warmup: int
    threads: int
    image_size: tuple[int, int, int]
    encoder_width: int
    text_encoder: str
    phantom_cases: int
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    num_workers: int
    finetune_phantom_shape: tuple[int, ...] = ()
    finetune_phantom_spacing: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("benchmark_repeats", "encoder_width", "phantom_cases", "pretrain_steps", "finetune_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (InfoNCE needs negatives in the batch), got {self.batch_size}")
        if any(s % 16 for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be multiples of 16 (ViT patches)")


GPU_SETTINGS = CheckSettings(
    benchmark_size="full", benchmark_repeats=3, benchmark_warmup=1, threads=0,
    image_size=(96, 96, 64), encoder_width=768, text_encoder="minilm", phantom_cases=10,
    pretrain_steps=30, finetune_steps=30, batch_size=4, num_workers=4,
)
# CI machines are small and shared: one torch thread per benchmark case keeps OpenMP from
# spin-waiting on a busy core (see benchmarks/README.md).
TINY_SETTINGS = CheckSettings(
    benchmark_size="small", benchmark_repeats=1, benchmark_warmup=0, threads=1,
    image_size=(32, 32, 32), encoder_width=32, text_encoder="tiny", phantom_cases=4,
    pretrain_steps=2, finetune_steps=2, batch_size=2, num_workers=0,
    finetune_phantom_shape=(64, 64, 32), finetune_phantom_spacing=(6.0, 6.0, 10.0),
)


class PeakMemory:
    """Peak memory of a block: CUDA allocations on a GPU, resident-set growth on the CPU."""

    def __init__(self, device: Any) -> None:
        from benchmarks.run import CudaMemoryMeter, HostMemoryMeter

        self.device = device
        self.host = HostMemoryMeter()
        self.gpu = CudaMemoryMeter(device) if device.type == "cuda" else None

    def __enter__(self) -> "PeakMemory":
        if self.gpu is not None:
            self.gpu.start()
        self.host.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host_peak_mb": self.host.peak_mb()}
        if self.gpu is not None:
            out["gpu_peak_mb"] = self.gpu.peak_mb()
        return out


def _part(name: str, fn: Callable[[], dict[str, Any]], device: Any) -> dict[str, Any]:
    """Run one part; its status, seconds, peak memory and results (or the error's traceback)."""
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    meter = PeakMemory(device)
    try:
        with meter:
            details = fn()
        record = {"status": details.pop("status", "ok"), **details}
    except Exception:  # noqa: BLE001 - reported in the summary and the exit status
        record = {"status": "error", "error": traceback.format_exc()}
    record["seconds"] = time.perf_counter() - start
    record.update(meter.read())
    print(f"[gpu_check] {name}: {record['status']} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return record


def pretrain_part(settings: CheckSettings, device: Any, out: Path) -> dict[str, Any]:
    """A short 3D pre-training run on phantoms; its checkpoint feeds the fine-tuning part."""
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.pretraining.run import run_pretraining

    config = PretrainConfig(
        dataset="phantom", spatial_dims=3, image_encoder="vit3d", image_size=settings.image_size,
        encoder_width=settings.encoder_width, text_encoder=settings.text_encoder,
        phantom_cases=settings.phantom_cases, max_steps=settings.pretrain_steps, batch_size=settings.batch_size,
        warmup_steps=min(5, settings.pretrain_steps), val_every=settings.pretrain_steps,
        checkpoint_every=settings.pretrain_steps, num_workers=settings.num_workers, max_shift=4,
        device=str(device), output_dir=str(out / "pretrain"), overwrite=True,
    )
    result = run_pretraining(config, progress=False)
    losses = [row["loss"] for row in result.history if row.get("split") == "train" and "loss" in row]
    return {"checkpoint": str(result.checkpoint), "train_seconds": result.seconds, "steps": len(losses),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "metrics": {k: v for k, v in result.metrics.items() if not isinstance(v, (list, dict))}}


def finetune_part(settings: CheckSettings, device: Any, out: Path, checkpoint: str | None) -> dict[str, Any]:
    """A short 3D fine-tuning run with decoder fusion from the pre-training checkpoint, if the kit
    has ``mosmoskit.finetuning``."""
    try:
        from mosmoskit.finetuning.config import FinetuneConfig
        from mosmoskit.finetuning.run import run_finetuning
    except ImportError as err:
        return {"status": "skipped", "reason": f"mosmoskit.finetuning is not available ({err})"}
    if not checkpoint:
        raise ValueError("fine-tuning needs the pre-training checkpoint, but the pre-training part failed")
    wanted = dict(
        dataset="phantom", phantom_cases=settings.phantom_cases, phantom_shape=settings.finetune_phantom_shape,
        phantom_spacing=settings.finetune_phantom_spacing, spatial_dims=3, roi_size=settings.image_size,
        pretrained_checkpoint=checkpoint, fusion="decoder", init_encoder=True, max_steps=settings.finetune_steps,
        batch_size=max(1, settings.batch_size // 2), warmup_steps=min(5, settings.finetune_steps), val_every=0,
        checkpoint_every=settings.finetune_steps, val_max_cases=1, num_workers=settings.num_workers,
        save_predictions=False, device=str(device), output_dir=str(out / "finetune"), overwrite=True,
    )
    # Pass only the fields this version of FinetuneConfig has; its own validation judges the rest.
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in wanted.items() if k in known})
    result = run_finetuning(config, progress=False)
    return {"checkpoint": str(result.checkpoint), "train_seconds": result.seconds,
            "mean_dice": result.metrics.get("mean_dice"), "test_cases": result.metrics.get("n_cases"),
            "ignored_settings": sorted(set(wanted) - known)}


def benchmark_part(
    settings: CheckSettings, device: Any, out: Path, only: Sequence[str] | None = None,
    text_encoder: str | None = None,
) -> dict[str, Any]:
    """The benchmark table (all cases, or those matching ``only``), also written as benchmark.json."""
    from benchmarks.run import format_table, run_benchmarks
    from mosmoskit.io import atomic_write_text

    result = run_benchmarks(size=settings.benchmark_size, device=str(device), repeats=settings.benchmark_repeats,
                            warmup=settings.benchmark_warmup, threads=settings.threads, only=only,
                            text_encoder=text_encoder)
    result["command"] = "python scripts/gpu_check.py (benchmark part)"
    atomic_write_text(out / "benchmark.json", json.dumps(result, indent=1) + "\n")
    table = format_table(result)
    print(table, flush=True)
    missed = [row["case"] for row in result["rows"] if row.get("meets_target") is False]
    return {"table": table, "json": str(out / "benchmark.json"), "missed_targets": missed,
            "seconds_total": result["seconds_total"]}


def format_summary(report: dict[str, Any]) -> str:
    """Per part: status, wall time, peak memory."""
    lines = [f"gpu_check on {report['device']} ({report['device_name']}), {report['mode']}", ""]
    for name, part in report["parts"].items():
        peak = part.get("gpu_peak_mb", part.get("host_peak_mb"))
        kind = "GPU" if "gpu_peak_mb" in part else "host"
        memory = "n/a" if peak is None else f"{peak / 1024:.2f} GB {kind}"
        line = f"{name:<10} {part['status']:<8} {part['seconds']:7.1f} s   peak {memory}"
        if part["status"] == "skipped":
            line += f"   ({part['reason']})"
        if part.get("missed_targets"):
            line += f"   targets missed: {', '.join(part['missed_targets'])}"
        if part.get("last_loss") is not None:
            line += f"   loss {part['first_loss']:.3f} -> {part['last_loss']:.3f}"
        if part.get("mean_dice") is not None:
            line += f"   test mean Dice {part['mean_dice']:.3f}"
        lines.append(line)
    errors = [(name, part["error"]) for name, part in report["parts"].items() if part["status"] == "error"]
    for name, error in errors:
        lines += ["", f"{name} failed:", error.rstrip()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU is fine): checks that the script works")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                        help="default: cuda, or cpu with --tiny")
    parser.add_argument("--out", default="runs/gpu_check", help="output folder (default runs/gpu_check)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("benchmark", "pretrain", "finetune"),
                        help="parts to leave out")
    parser.add_argument("--text-encoder", default=None, choices=("minilm", "tiny"),
                        help="text encoder of the pre-training part (default: minilm on a GPU, tiny with --tiny); "
                             "'tiny' needs no installed model")
    parser.add_argument("--bench-only", nargs="+", default=None, metavar="PATTERN",
                        help="benchmark only the cases matching these patterns (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts, print the summary, write ``gpu_check.json``; 0 when nothing failed."""
    import torch

    from mosmoskit.device import resolve_device
    from mosmoskit.io import atomic_write_text

    args = build_parser().parse_args(argv)
    settings = TINY_SETTINGS if args.tiny else GPU_SETTINGS
    if args.text_encoder:
        settings = dataclasses.replace(settings, text_encoder=args.text_encoder)
    device = resolve_device(args.device or ("cpu" if args.tiny else "cuda"))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "mode": "tiny" if args.tiny else "full",
        "settings": dataclasses.asdict(settings),
        "parts": {},
    }
    start = time.perf_counter()
    parts = report["parts"]
    if "benchmark" not in args.skip:
        parts["benchmark"] = _part("benchmark", lambda: benchmark_part(settings, device, out, args.bench_only,
                                                                         args.text_encoder), device)
    checkpoint = None
    if "pretrain" not in args.skip:
        parts["pretrain"] = _part("pretrain", lambda: pretrain_part(settings, device, out), device)
        checkpoint = parts["pretrain"].get("checkpoint")
    if "finetune" not in args.skip:
        parts["finetune"] = _part("finetune", lambda: finetune_part(settings, device, out, checkpoint), device)
    report["seconds_total"] = time.perf_counter() - start
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    print(format_summary(report))
    print(f"\ntotal {report['seconds_total']:.0f} s; written: {out / 'gpu_check.json'}")
    return 1 if any(part["status"] == "error" for part in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
