"""The README's main job, end to end on the phantom cohort, with no download.

Stages, in order (each is timed):

  data3d     generate a 3D phantom cohort            -> RUN_DIR/data3d
  data2d     generate a 2D axial-slice cohort        -> RUN_DIR/data2d
  summary3d  summarise the 3D cohort                 -> RUN_DIR/summary3d
  summary2d  summarise the 2D cohort                 -> RUN_DIR/summary2d
  pretrain2d report-supervised pre-training on the   -> RUN_DIR/pretrain2d
             2D slices (about 5 min on 2 CPU cores)

RUN_DIR/demo.json records the settings and the stages that finished (with their timings).

Re-running into the same RUN_DIR:
  * empty or absent RUN_DIR: everything runs;
  * same settings as recorded in demo.json: the run resumes; a finished stage whose outputs are
    still complete is reused (a cohort counts as complete when its dataset.json records the same
    seed, case count and grid, and every file it lists exists), anything after a stage that ran
    again runs again;
  * different settings, or files but no demo.json: refused (exit code 2) unless --overwrite,
    which runs every stage again into the folder.

Examples:
  python -m mosmoskit demo --out runs/demo
  python -m mosmoskit demo --out runs/tiny --n 2 --slices-per-case 2 --shape3d 48 48 32 --spacing3d 8 8 10
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

HELP = "the main job on phantoms: data, summaries, report-supervised pre-training"

#: The file in RUN_DIR that records settings and finished stages.
STATE_FILE = "demo.json"
#: Cases per cohort when --n is not given.
DEFAULT_N = 20
DEFAULT_SLICES_PER_CASE = 8
#: Cases shown in each summary's cohort_overview.png.
FIGURE_CASES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (must be empty unless resuming or --overwrite)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"cases per cohort (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--slices-per-case", type=int, default=DEFAULT_SLICES_PER_CASE,
                        help=f"2D cohort: axial slices per case (default {DEFAULT_SLICES_PER_CASE})")
    parser.add_argument("--shape3d", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="3D voxels per axis (default: the generator's, 96 96 64)")
    parser.add_argument("--spacing3d", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="3D mm per voxel (default: the generator's, 4 4 5)")
    parser.add_argument("--shape2d", type=int, nargs=2, default=None, metavar=("X", "Y"),
                        help="2D pixels per axis (default: the generator's, 128 128)")
    parser.add_argument("--spacing2d", type=float, nargs=2, default=None, metavar=("X", "Y"),
                        help="2D mm per pixel (default: the generator's, 3 3)")
    parser.add_argument("--pretrain-steps", type=int, default=DEMO_PRETRAIN_STEPS,
                        help=f"2D pre-training steps (default {DEMO_PRETRAIN_STEPS}, about 5 minutes on 2 CPU cores)")
    parser.add_argument("--text-encoder", default="minilm",
                        help="text encoder for pre-training: minilm (packaged, default), tiny, or a local folder")
    parser.add_argument("--overwrite", action="store_true", help="run every stage again into a non-empty RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# =============================================================================================
# settings and stages
# =============================================================================================
@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's outputs (recorded in ``demo.json``; a resume needs equal ones).

    Args:
        n: cases per cohort (3D volumes; 2D: patients, each giving ``slices_per_case`` slices).
        seed: cohort seed (both cohorts use it).
        slices_per_case: axial slices per case in the 2D cohort.
        shape3d, spacing3d: grid of the 3D volumes (voxels, mm).
        shape2d, spacing2d: grid of the 2D slices (pixels, mm).
        pretrain_steps: optimiser steps of the 2D pre-training stage.
        text_encoder: its text encoder.

    Raises:
        ValueError: ``n``/``slices_per_case`` < 1, a negative seed, or a grid of the wrong length.
    """

    n: int
    seed: int
    slices_per_case: int
    shape3d: tuple[int, ...]
    spacing3d: tuple[float, ...]
    shape2d: tuple[int, ...]
    spacing2d: tuple[float, ...]
    pretrain_steps: int = 200
    text_encoder: str = "minilm"

    def __post_init__(self) -> None:
        for name in ("n", "slices_per_case", "pretrain_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"demo: {name} must be an integer >= 1, got {value!r}")
        if self.seed < 0:
            raise ValueError(f"demo: seed must be >= 0, got {self.seed!r}")
        for name, length in (("shape3d", 3), ("spacing3d", 3), ("shape2d", 2), ("spacing2d", 2)):
            value = tuple(getattr(self, name))
            if len(value) != length:
                raise ValueError(f"demo: {name} must have {length} values, got {value!r}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSettings:
        """Settings from the command line, with the generator's default grids filled in."""
        from mosmoskit.data import phantom

        return cls(
            n=args.n, seed=args.seed, slices_per_case=args.slices_per_case,
            shape3d=tuple(int(v) for v in (args.shape3d or phantom.DEFAULT_SHAPE_3D)),
            spacing3d=tuple(float(v) for v in (args.spacing3d or phantom.DEFAULT_SPACING_3D)),
            shape2d=tuple(int(v) for v in (args.shape2d or phantom.DEFAULT_SHAPE_2D)),
            spacing2d=tuple(float(v) for v in (args.spacing2d or phantom.DEFAULT_SPACING_2D)),
            pretrain_steps=args.pretrain_steps, text_encoder=args.text_encoder,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DemoRun:
    """One demo run: where it writes and with which settings."""

    run_dir: Path
    settings: DemoSettings
    progress: bool = True


@dataclass(frozen=True)
class Stage:
    """One step of the demo.

    Attributes:
        name: key in ``demo.json`` and the name printed.
        output: the folder the stage writes, relative to RUN_DIR.
        run: does the work; returns one line describing the result.
        complete: whether the outputs of an earlier run are all there and belong to these settings.
        describe: the result line for a reused stage (read back from its outputs).
    """

    name: str
    output: str
    run: Callable[[DemoRun], str]
    complete: Callable[[DemoRun], bool]
    describe: Callable[[DemoRun], str]


def _cohort_grid(run: DemoRun, dims: int) -> dict[str, Any]:
    s = run.settings
    if dims == 3:
        return dict(shape=s.shape3d, spacing=s.spacing3d, spatial_dims=3)
    return dict(shape=s.shape2d, spacing=s.spacing2d, spatial_dims=2, slices_per_case=s.slices_per_case)


def _cohort_line(folder: Path) -> str:
    dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    gen = dataset["generator"]
    grid = "x".join(str(v) for v in gen["shape"])
    mm = "x".join(f"{v:g}" for v in gen["spacing"])
    if dataset.get("spatial_dims") == 2:
        return f"{gen['n_cases']} cases x {gen['slices_per_case']} = {dataset['numTraining']} slices of {grid} at {mm} mm"
    return f"{dataset['numTraining']} volumes of {grid} at {mm} mm"


def _data_stage(name: str, dims: int) -> Stage:
    def run(r: DemoRun) -> str:
        from mosmoskit.data.phantom import generate_cohort

        # overwrite=True is safe here: the folder is empty, ours from an interrupted run with the
        # same settings, or the user asked for --overwrite (see _plan).
        folder = generate_cohort(r.run_dir / name, n=r.settings.n, seed=r.settings.seed, overwrite=True,
                                 progress=r.progress, **_cohort_grid(r, dims))
        return _cohort_line(folder)

    def complete(r: DemoRun) -> bool:
        folder = r.run_dir / name
        try:
            dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
            gen = dataset["generator"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        grid = _cohort_grid(r, dims)
        same = (
            dataset.get("spatial_dims") == dims and gen.get("seed") == r.settings.seed
            and gen.get("n_cases") == r.settings.n and tuple(gen.get("shape", ())) == tuple(grid["shape"])
            and tuple(float(v) for v in gen.get("spacing", ())) == tuple(grid["spacing"])
            and (dims == 3 or gen.get("slices_per_case") == r.settings.slices_per_case)
        )
        files = [folder / "reports.jsonl", folder / "label_map.json"]
        files += [folder / e[k] for e in dataset.get("training", []) for k in ("image", "label")]
        return same and all(f.is_file() for f in files)

    return Stage(name, name, run, complete, lambda r: _cohort_line(r.run_dir / name))


def _summary_line(folder: Path) -> str:
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    audit = "label audit ok" if s["audit"]["ok"] else f"label audit FAILED for {len(s['audit']['failures'])} case(s)"
    parts = [f"{s['n_cases']} cases, {audit}"]
    reports = s.get("reports") or {}
    gen, mask = reports.get("generator"), reports.get("mask")
    if gen:
        parts.append(f"parser vs generator tags {gen['accuracy']:.3f} ({gen['n_correct']}/{gen['n_pairs']})")
    if mask and mask["present_agreement"] is not None:
        parts.append(f"'present' tags in mask {mask['present_agreement']:.3f}")
    if mask and mask["absent_agreement"] is not None:
        parts.append(f"'absent' tags empty in mask {mask['absent_agreement']:.3f}")
    return "; ".join(parts)


def _summary_stage(name: str, data_name: str) -> Stage:
    files = ("summary.json", "summary.md", "cohort_overview.png")

    def run(r: DemoRun) -> str:
        from mosmoskit.data.summary import summarize_cohort, write_summary

        summary = summarize_cohort(r.run_dir / data_name, progress=r.progress)
        write_summary(summary, r.run_dir / name, figure_cases=FIGURE_CASES)
        return _summary_line(r.run_dir / name)

    def complete(r: DemoRun) -> bool:
        return all((r.run_dir / name / f).is_file() for f in files)

    return Stage(name, name, run, complete, lambda r: _summary_line(r.run_dir / name))


DEMO_PRETRAIN_STEPS = 200
#: Pre-training in the demo: 2D slices, sized for a 2-core CPU (about 5 minutes). Slice reports
#: mention most organs that are in the slice, so an unmentioned organ is taken as absent there.
DEMO_PRETRAIN = dict(unmentioned="negative")
DEMO_PRETRAIN_BATCH = 16


def _pretrain_line(folder: Path) -> str:
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))

    def f(key: str) -> str:
        value = m.get(key)
        return "n/a" if value is None else f"{value:.2f}"

    return (
        f"{m.get('train/steps')} steps in {m.get('train/seconds')} s; image->report recall@1 "
        f"{f('retrieval/image_to_report_recall@1')} (chance {f('retrieval/chance_recall@1')}), tag AUROC vs masks "
        f"{f('tag_auroc_vs_mask/mean')}, pointing game on large organs {f('pointing/mean_large_organs')} "
        f"(fixed-position baseline {f('pointing_baseline/mean_large_organs')})"
    )


def _pretrain_stage(name: str, data_name: str) -> Stage:
    def run(r: DemoRun) -> str:
        from mosmoskit.pretraining.config import PretrainConfig
        from mosmoskit.pretraining.run import run_pretraining

        steps = r.settings.pretrain_steps
        # A tiny cohort (tests) cannot fill a batch of 16 from its training share: 80 % of the
        # patients (at least one is held out), all slices of each.
        n_train = (r.settings.n - max(1, round(0.2 * r.settings.n))) * r.settings.slices_per_case
        batch = max(2, min(DEMO_PRETRAIN_BATCH, n_train))
        config = PretrainConfig(
            dataset=str(r.run_dir / data_name), output_dir=str(r.run_dir / name), seed=r.settings.seed,
            overwrite=True, max_steps=steps, val_every=steps, checkpoint_every=max(1, steps // 2),
            warmup_steps=min(20, steps // 10), text_encoder=r.settings.text_encoder,
            image_size=tuple(r.settings.shape2d), batch_size=batch, **DEMO_PRETRAIN,
        )
        run_pretraining(config, progress=r.progress)
        return _pretrain_line(r.run_dir / name)

    def complete(r: DemoRun) -> bool:
        return (r.run_dir / name / "metrics.json").is_file() and (r.run_dir / name / "last.pt").is_file()

    return Stage(name, name, run, complete, lambda r: _pretrain_line(r.run_dir / name))


def default_stages() -> list[Stage]:
    """The demo's stages in order. New stages (fine-tuning, notebooks) go here."""
    return [
        _data_stage("data3d", 3),
        _data_stage("data2d", 2),
        _summary_stage("summary3d", "data3d"),
        _summary_stage("summary2d", "data2d"),
        _pretrain_stage("pretrain2d", "data2d"),
    ]


# =============================================================================================
# running
# =============================================================================================
@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "reused"
    seconds: float
    output: Path
    line: str = field(default="")


def _plan(run_dir: Path, settings: DemoSettings, overwrite: bool) -> dict[str, Any]:
    """The state to start from: ``{"settings": ..., "stages": {name: {"seconds": s}}}``.

    Raises:
        FileExistsError: RUN_DIR holds files, no --overwrite, and it is not a demo run with the
            same settings (the message says which settings differ).
        ValueError: demo.json is not valid JSON.
    """
    fresh = {"settings": settings.to_dict(), "stages": {}}
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a folder")
    if not run_dir.exists() or not any(run_dir.iterdir()) or overwrite:
        return fresh
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        raise FileExistsError(
            f"{run_dir} holds files but no {STATE_FILE}, so it is not a demo run folder; choose another "
            f"--out or pass --overwrite"
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{state_path}: not valid JSON ({err}); pass --overwrite to start again") from None
    recorded = state.get("settings", {}) if isinstance(state, dict) else {}
    wanted = settings.to_dict()
    if recorded != wanted:
        diff = ", ".join(f"{k}: {recorded.get(k)!r} recorded, {wanted.get(k)!r} now"
                         for k in sorted(set(recorded) | set(wanted)) if recorded.get(k) != wanted.get(k))
        raise FileExistsError(
            f"{run_dir} holds a demo run with other settings ({diff}); use the same settings to resume, "
            f"another --out, or --overwrite"
        )
    state.setdefault("stages", {})
    return state


def run_demo(run: DemoRun, stages: Sequence[Stage], overwrite: bool = False) -> list[StageResult]:
    """Run ``stages`` into ``run.run_dir``, resuming a run with the same settings (see the module doc).

    Returns:
        One :class:`StageResult` per stage, in order.

    Raises:
        FileExistsError, ValueError: see :func:`_plan`; errors of the stages themselves.
    """
    from mosmoskit import __version__
    from mosmoskit.io import atomic_write_text

    state = _plan(run.run_dir, run.settings, overwrite)
    state["kit_version"] = __version__
    run.run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    rerun_rest = False  # once a stage runs again, everything after it depends on new outputs
    for stage in stages:
        recorded = state["stages"].get(stage.name)
        if recorded is not None and not rerun_rest and stage.complete(run):
            results.append(StageResult(stage.name, "reused", float(recorded.get("seconds", 0.0)),
                                       run.run_dir / stage.output, stage.describe(run)))
            continue
        rerun_rest = True
        state["stages"].pop(stage.name, None)
        start = time.perf_counter()
        line = stage.run(run)
        seconds = time.perf_counter() - start
        state["stages"][stage.name] = {"seconds": round(seconds, 3), "output": stage.output}
        # written after every stage, so an interrupted run resumes after the last finished stage
        atomic_write_text(run.run_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")
        results.append(StageResult(stage.name, "ran", seconds, run.run_dir / stage.output, line))
    return results


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings.from_args(args)
    demo = DemoRun(Path(args.out).expanduser(), settings, progress=not args.no_progress)
    start = time.perf_counter()
    results = run_demo(demo, default_stages(), overwrite=args.overwrite)
    total = time.perf_counter() - start
    print(f"demo run in {demo.run_dir} (seed {settings.seed}, {settings.n} cases per cohort)")
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"  {r.name:<{width}}  {r.status:<6}  {r.seconds:7.1f} s  {r.output}")
        print(f"  {'':<{width}}  {r.line}")
    print(f"  total {total:.1f} s (reused stages show the time they took when they ran)")
    print(f"  state: {demo.run_dir / STATE_FILE}; tables: summary*/summary.md; figures: summary*/cohort_overview.png")
    return 0
