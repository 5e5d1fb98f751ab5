"""The numbered notebooks as one pipeline, and YAML sweeps over their parameters.

A *pipeline run* executes ``01_data_exploration -> 02_report_pretraining -> 03_finetuning ->
04_mask_inspection`` (or a chosen subset, in that order) with papermill into one run folder::

    RUN_DIR/
      pipeline.json                 settings, and per notebook: parameters, status, seconds
      notebooks/NN_name.ipynb       the executed notebooks (outputs kept) and NN_name.html
      01_explore/ 02_pretrain/ 03_finetune/ 04_inspect/    each notebook's output_dir
      results.md                    timings and the fine-tuning table, also printed at the end

Outputs flow downstream unless a parameter says otherwise: 03's ``pretrained_checkpoint`` is 02's
``last.pt`` when 02 is part of the run, and 04's ``checkpoint`` is 03's ``last.pt``. Parameters are
addressed as ``"03.max_steps"`` (one notebook) or ``"device"`` (every notebook that declares it);
a name that no selected notebook declares is refused before anything runs, and each notebook
validates the types of its own parameters in its first cells.

Re-running into the same RUN_DIR resumes: a notebook that finished with the same parameters is not
run again. Different parameters in a folder that holds results are refused unless
``overwrite=True`` (which also lets each notebook replace its own results).

A *sweep* (:func:`run_sweep`) reads a YAML file::

    stages: ["02", "03"]             # optional; default: all four
    parameters:                      # fixed for every run
      02.max_steps: 200
    grid:                            # every combination is one run
      03.label_fraction: [0.25, 1.0]
      03.fusion: ["none", "decoder"]

Each combination runs as a pipeline in ``SWEEP_DIR/runs/<name>/``; a notebook whose parameters
(its own and those of everything upstream) are the same in several runs runs once and is shared
(one pre-training per pre-training setting). ``SWEEP_DIR/summary.csv`` and ``summary.md`` hold one
row per run: the grid values, the status and the test-set Dice of the fine-tuning notebook.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mosmoskit.io import atomic_write_text

__all__ = [
    "NOTEBOOKS",
    "NotebookStage",
    "PlannedRun",
    "SweepPoint",
    "expand_sweep",
    "notebooks_dir",
    "parse_assignments",
    "plan_sweep",
    "read_sweep_spec",
    "run_pipeline",
    "run_sweep",
    "sweep_rows",
]

STATE_FILE = "pipeline.json"


@dataclass(frozen=True)
class NotebookStage:
    """One numbered notebook of the pipeline.

    Attributes:
        key: its number, ``"01"`` .. ``"04"`` (how parameters address it).
        filename: the notebook file in ``notebooks/``.
        folder: the name of its ``output_dir`` inside a run folder.
    """

    key: str
    filename: str
    folder: str

    @property
    def stem(self) -> str:
        return Path(self.filename).stem


NOTEBOOKS: tuple[NotebookStage, ...] = (
    NotebookStage("01", "01_data_exploration.ipynb", "01_explore"),
    NotebookStage("02", "02_report_pretraining.ipynb", "02_pretrain"),
    NotebookStage("03", "03_finetuning.ipynb", "03_finetune"),
    NotebookStage("04", "04_mask_inspection.ipynb", "04_inspect"),
)
_BY_KEY = {s.key: s for s in NOTEBOOKS}
# Parameters that may name a file or folder (a relative one is read from where the runner started).
_PATH_PARAMETERS = ("dataset", "label_map", "pretrained_checkpoint", "checkpoint", "scan", "output_dir")
# Which parameter of a notebook receives which upstream notebook's checkpoint.
_LINKS = {"03": ("pretrained_checkpoint", "02"), "04": ("checkpoint", "03")}


def notebooks_dir() -> Path:
    """The folder of the numbered notebooks (``notebooks/`` next to the package in a clone).

    Raises:
        FileNotFoundError: the notebooks are not there (an installed wheel carries no notebooks:
            run from a clone of the repository).
    """
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    if not any((folder / s.filename).is_file() for s in NOTEBOOKS):
        raise FileNotFoundError(
            f"the numbered notebooks are not in {folder}: run the pipeline from a clone of the repository "
            f"(an installed package carries no notebooks)"
        )
    return folder


# ------------------------------------------------------------------------------------ parameters
def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["03.max_steps=100", "device=cpu"]`` -> ``{"03.max_steps": 100, "device": "cpu"}``.

    Values are read as YAML scalars or lists (``100`` int, ``0.5`` float, ``true`` bool,
    ``[96, 96]`` list, anything else a string).

    Raises:
        ValueError: an item without ``=`` or with an empty name.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = str(item).partition("=")
        if not sep or not name.strip():
            raise ValueError(f"parameter assignment {item!r} must look like NAME=VALUE or NN.NAME=VALUE")
        out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _select(stages: Sequence[str] | None) -> list[NotebookStage]:
    if not stages:
        return list(NOTEBOOKS)
    keys = [str(s).zfill(2) for s in stages]
    unknown = [k for k in keys if k not in _BY_KEY]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}: choose from {[s.key for s in NOTEBOOKS]}")
    return [s for s in NOTEBOOKS if s.key in keys]


def _declared(folder: Path, selected: Sequence[NotebookStage]) -> dict[str, dict[str, Any]]:
    from mosmoskit.notebooks import notebook_parameters

    missing = [s.filename for s in selected if not (folder / s.filename).is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {missing} not found in {folder}")
    return {s.key: notebook_parameters(folder / s.filename) for s in selected}


def _resolve_parameters(
    parameters: Mapping[str, Any], selected: Sequence[NotebookStage], declared: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Split ``{"03.x": 1, "y": 2}`` into per-notebook dicts, refusing names nobody declares."""
    per: dict[str, dict[str, Any]] = {s.key: {} for s in selected}
    keys = {s.key for s in selected}
    for name, value in parameters.items():
        prefix, dot, field = name.partition(".")
        if dot and re.fullmatch(r"\d{1,2}", prefix):
            key = prefix.zfill(2)
            if key not in _BY_KEY:
                raise ValueError(f"parameter {name!r}: there is no notebook {key}")
            if key not in keys:
                raise ValueError(f"parameter {name!r} is for notebook {key}, which this run does not execute")
            if field not in declared[key]:
                raise ValueError(
                    f"parameter {name!r}: {_BY_KEY[key].filename} has no parameter {field!r}; it declares "
                    f"{sorted(declared[key])}"
                )
            per[key][field] = value
        else:
            owners = [k for k in per if name in declared[k]]
            if not owners:
                raise ValueError(
                    f"parameter {name!r} is declared by none of the notebooks run ({sorted(per)}); address one "
                    f"notebook as NN.{name} or check the spelling"
                )
            for key in owners:
                per[key].setdefault(name, value)
    return per


# ------------------------------------------------------------------------------------ one pipeline
def _absolute_paths(per: Mapping[str, dict[str, Any]], cwd: Path | None = None) -> None:
    """Make relative paths in the parameters absolute against ``cwd`` (default: the current folder).

    The notebooks run with ``notebooks/`` as their working directory, so ``data/btcv`` given on the
    command line would be looked for there. A value is taken for a path when the parameter can hold
    one and it exists relative to ``cwd`` (``"phantom"`` and ``"btcv"`` stay names); an
    ``output_dir`` is always a path.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    for values in per.values():
        for name in _PATH_PARAMETERS:
            value = values.get(name)
            if not isinstance(value, str) or not value or Path(value).is_absolute():
                continue
            if name == "output_dir" or (base / value).exists():
                values[name] = str((base / value).resolve())



def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away or pass overwrite") from err


def _fine_tuning_rows(metrics_json: Path) -> dict[str, Any] | None:
    if not metrics_json.is_file():
        return None
    # finetuning.report pulls in torch and MONAI; this module stays light for the command line
    from mosmoskit.finetuning.report import weak_points

    record = json.loads(metrics_json.read_text(encoding="utf-8"))
    test = record.get("test") or {}
    try:
        weak = weak_points(record)
    except ValueError:  # no per-organ summary to read
        weak = None
    return {
        "weak_points": weak,
        "mean_dice": test.get("mean_dice"), "mean_hd95": test.get("mean_hd95"), "n_cases": test.get("n_cases"),
        "unit": record.get("test_unit", "image"), "variant": (record.get("protocol") or {}).get("variant"),
        "organs": {o: s.get("dice_mean") for o, s in (test.get("organs") or {}).items()},
        "organs_ci95": {o: s.get("dice_ci95") for o, s in (test.get("organs") or {}).items()},
        "mean_dice_ci95": test.get("mean_dice_ci95"),
        "organs_hd95": {o: s.get("hd95_mean") for o, s in (test.get("organs") or {}).items()},
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _fmt_interval(bounds: Any) -> str:
    if not bounds or any(b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds):
        return "-"
    return f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def _results_markdown(state: Mapping[str, Any], run_dir: Path) -> str:
    lines = [f"# Pipeline run `{run_dir.name}`", "", "| notebook | status | seconds | executed notebook |",
             "|---|---|---|---|"]
    for key, entry in state["notebooks"].items():
        lines.append(f"| {key} | {entry['status']} | {_fmt(entry.get('seconds'))} | {entry.get('executed', '-')} |")
    ft = state.get("finetune_results")
    if ft:
        lines += ["", f"## Fine-tuning test set ({ft['n_cases']} test cases, unit: {ft['unit']}; variant {ft['variant']})", "",
                  "| organ | Dice | 95% CI (bootstrap over test cases) |", "|---|---|---|"]
        intervals = ft.get("organs_ci95") or {}
        lines += [f"| {o} | {_fmt(d)} | {_fmt_interval(intervals.get(o))} |" for o, d in ft["organs"].items()]
        lines += [f"| **mean** | **{_fmt(ft['mean_dice'])}** | {_fmt_interval(ft.get('mean_dice_ci95'))} |"]
        if ft.get("weak_points"):
            lines += ["", ft["weak_points"]]
    return "\n".join(lines) + "\n"


def run_pipeline(
    run_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    stages: Sequence[str] | None = None,
    overwrite: bool = False,
    html: bool = True,
    stage_dirs: Mapping[str, Path] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Execute the numbered notebooks in order into ``run_dir``, passing checkpoints downstream.

    Args:
        run_dir: the run folder (created).
        parameters: ``{"NN.name": value}`` for one notebook, ``{"name": value}`` for every selected
            notebook that declares ``name``.
        stages: notebook numbers to run (``["02", "03"]``); default all four.
        overwrite: run again into a folder that holds results of other parameters (and let each
            notebook replace its results).
        html: also write an HTML rendering of each executed notebook.
        stage_dirs: notebook number -> its output folder, instead of ``run_dir/NN_name`` (sweeps
            share upstream notebooks this way).
        log: where progress lines go (``print``; ``None`` for silence).

    Returns:
        The state written to ``run_dir/pipeline.json``: ``settings``, ``notebooks`` (per number:
        ``parameters``, ``status``, ``seconds``, ``executed``, ``html``, ``output_dir``) and
        ``finetune_results`` (the test-set Dice of notebook 03, if it ran).

    Raises:
        ValueError: an unknown notebook or parameter name (before anything runs); a folder holding
            another run without ``overwrite``.
        papermill.PapermillExecutionError: a notebook failed; its executed copy (with the
            traceback) is in ``run_dir/notebooks`` and ``pipeline.json`` records the failure.
    """
    from mosmoskit.notebooks import run_notebook

    say = log or (lambda *a, **k: None)
    run_dir = Path(run_dir).resolve()
    folder = notebooks_dir()
    selected = _select(stages)
    declared = _declared(folder, selected)
    per = _resolve_parameters(dict(parameters or {}), selected, declared)

    _absolute_paths(per)
    # Wire each notebook's output folder and the checkpoints downstream (unless set explicitly).
    dirs = {s.key: Path(stage_dirs[s.key]) if stage_dirs and s.key in stage_dirs else run_dir / s.folder
            for s in selected}
    for s in selected:
        if "output_dir" in declared[s.key]:
            per[s.key].setdefault("output_dir", str(dirs[s.key]))
        link = _LINKS.get(s.key)
        if link and link[1] in dirs and link[0] in declared[s.key]:
            per[s.key].setdefault(link[0], str(dirs[link[1]] / "last.pt"))
        if overwrite and "overwrite" in declared[s.key]:
            per[s.key]["overwrite"] = True

    settings = {"stages": [s.key for s in selected], "parameters": per}
    previous = _read_state(run_dir)
    if previous is None and run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ValueError(f"{run_dir} is not empty and holds no {STATE_FILE}: choose a new folder or pass overwrite")
    finished_before = previous is not None and any(
        e.get("status") == "ok" for e in previous.get("notebooks", {}).values())
    # A folder whose earlier run finished nothing holds nothing to lose: it is run again with the new settings.
    if previous is not None and previous.get("settings") != settings and not overwrite and finished_before:
        changed = sorted(k for k in set(per) | set(previous.get("settings", {}).get("parameters", {}))
                         if per.get(k) != previous.get("settings", {}).get("parameters", {}).get(k))
        raise ValueError(
            f"{run_dir} holds a pipeline run with other settings (notebooks {changed} differ): choose a new "
            f"folder, or pass overwrite to run again into it"
        )
    state: dict[str, Any] = {"settings": settings, "notebooks": {}}
    if previous is not None and previous.get("settings") == settings:
        state["notebooks"] = dict(previous.get("notebooks", {}))
    run_dir.mkdir(parents=True, exist_ok=True)
    out_nb = run_dir / "notebooks"

    upstream_ran = False
    for s in selected:
        done = state["notebooks"].get(s.key, {})
        executed = out_nb / s.filename
        if done.get("status") == "ok" and executed.is_file() and not upstream_ran:
            say(f"[{s.key}] {s.stem}: done before ({_fmt(done.get('seconds'))} s), reused")
            continue
        shared_marker = dirs[s.key] / ".pipeline_stage.json"
        if stage_dirs and s.key in stage_dirs and shared_marker.is_file():
            marker = json.loads(shared_marker.read_text(encoding="utf-8"))
            if marker.get("parameters") == per[s.key] and marker.get("status") == "ok":
                say(f"[{s.key}] {s.stem}: shared with an earlier run, reused ({dirs[s.key]})")
                state["notebooks"][s.key] = {**marker, "shared": True}
                continue
        say(f"[{s.key}] {s.stem}: running -> {executed}")
        entry: dict[str, Any] = {"parameters": per[s.key], "status": "running", "output_dir": str(dirs[s.key])}
        state["notebooks"][s.key] = entry
        atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")
        start = time.perf_counter()
        try:
            run_notebook(folder / s.filename, executed, per[s.key], cwd=folder, html=html)
        except Exception as err:  # noqa: BLE001 - recorded, then raised again
            entry.update(status="failed", seconds=round(time.perf_counter() - start, 1), executed=str(executed),
                         error=f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")
            say(f"[{s.key}] {s.stem}: FAILED after {entry['seconds']} s; see {executed}")
            raise
        entry.update(status="ok", seconds=round(time.perf_counter() - start, 1), executed=str(executed))
        if html:
            entry["html"] = str(executed.with_suffix(".html"))
        upstream_ran = True
        if stage_dirs and s.key in stage_dirs:
            atomic_write_text(shared_marker, json.dumps(entry, indent=1, default=str) + "\n")
        atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")
        say(f"[{s.key}] {s.stem}: ok in {entry['seconds']} s")

    if "03" in dirs:
        state["finetune_results"] = _fine_tuning_rows(dirs["03"] / "metrics.json")
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=1, default=str) + "\n")
    atomic_write_text(run_dir / "results.md", _results_markdown(state, run_dir))
    return state


# ------------------------------------------------------------------------------------ sweeps
SPEC_KEYS = ("parameters", "grid", "stages", "description", "protocol", "study")  # "study": see mosmoskit.study
_BUNDLE_KEYS = ("stages",)  # keys of a named bundle that are not parameters


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a point of its grid.

    Attributes:
        name: the run's folder name (``"network-unet2d_setting-random_seed-0"``).
        parameters: every parameter of the run (fixed ones, bundles and grid values).
        labels: axis -> the value or the bundle name at this point (the summary's columns).
        stages: the notebooks this run executes (a bundle may narrow the sweep's stages: random
            initialisation needs no pre-training); ``None``: the sweep's.
    """

    name: str
    parameters: dict[str, Any]
    labels: dict[str, Any]
    stages: tuple[str, ...] | None = None


def expand_sweep(spec: Mapping[str, Any], source: str = "sweep") -> list[SweepPoint]:
    """A sweep spec -> one :class:`SweepPoint` per combination of the grid.

    A grid axis is either a list of values of one parameter (``03.seed: [0, 1, 2]``) or a mapping
    of *named bundles*, each a mapping of parameters that change together::

        grid:
          setting:
            random: {stages: ["03"], 03.init_encoder: false}    # no pre-training at all
            mosmos: {03.fusion: decoder}
          03.seed: [0, 1, 2]

    A bundle may carry ``stages`` (the notebooks its runs execute, a subset of the sweep's).

    Args:
        spec: ``{"parameters": {...}, "grid": {...}, "stages": [...], "description": str,
            "protocol": str}``; ``grid`` may be empty (one run).
        source: the sweep file's name, for error messages.

    Raises:
        ValueError: unknown top-level keys, a grid entry that is neither a non-empty list nor a
            mapping of bundles, a parameter set twice (fixed and by an axis, or by two axes), or
            duplicate run names.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: a sweep file must be a mapping with 'parameters' and/or 'grid'")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {', '.join(SPEC_KEYS)}")
    fixed = dict(spec.get("parameters") or {})
    grid = dict(spec.get("grid") or {})
    axes: list[tuple[str, list[tuple[Any, dict[str, Any], tuple[str, ...] | None]]]] = []
    for axis, values in grid.items():
        if isinstance(values, Mapping) and values:
            options = []
            for bundle_name, bundle in values.items():
                if not isinstance(bundle, Mapping):
                    raise ValueError(f"{source}: bundle {axis}.{bundle_name} must be a mapping of parameters, "
                                     f"got {bundle!r}")
                bundle = dict(bundle)
                stages = bundle.pop("stages", None)
                if stages is not None and (not isinstance(stages, list) or not stages):
                    raise ValueError(f"{source}: {axis}.{bundle_name}.stages must be a non-empty list, got {stages!r}")
                options.append((str(bundle_name), bundle, None if stages is None else
                                tuple(str(k).zfill(2) for k in stages)))
            axes.append((axis, options))
        elif isinstance(values, list) and values:
            if axis in fixed:
                raise ValueError(f"{source}: {axis!r} is both a fixed parameter and a grid axis")
            axes.append((axis, [(v, {axis: v}, None) for v in values]))
        else:
            raise ValueError(f"{source}: grid entry {axis!r} must be a non-empty list of values or a mapping of "
                             f"named bundles, got {values!r}")
    runs: list[SweepPoint] = []
    for combo in itertools.product(*(options for _, options in axes)) if axes else [()]:
        params, labels, stages = dict(fixed), {}, None
        for (axis, _), (label, bundle, bundle_stages) in zip(axes, combo):
            for name, value in bundle.items():
                if name in params and name != axis:
                    raise ValueError(f"{source}: parameter {name!r} is set twice (by {axis}={label} and by the fixed "
                                     f"parameters or another axis); set it in one place")
                params[name] = value
            labels[axis] = label
            if bundle_stages is not None:
                if stages is not None and set(stages) != set(bundle_stages):
                    raise ValueError(f"{source}: two bundles of one run give different stages {stages} and "
                                     f"{bundle_stages}")
                stages = bundle_stages
        name = "_".join(f"{axis.split('.')[-1]}-{_slug(label)}" for axis, label in labels.items()) or "run"
        runs.append(SweepPoint(name, params, labels, stages))
    seen = [r.name for r in runs]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{source}: two grid points give the same run name; use distinct values")
    return runs


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value or "none"
    text = Path(text).stem if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9.+-]+", "", text)[:40] or "x"


@dataclass(frozen=True)
class PlannedRun:
    """A sweep point with its notebooks resolved: what :func:`run_sweep` executes.

    Attributes:
        point: the grid point.
        stages: the notebooks it runs, in order.
        stage_dirs: notebook number -> output folder, keyed by the notebook's parameters and
            those of everything upstream (identical upstream notebooks share one folder).
        per_notebook: notebook number -> its resolved parameters.
    """

    point: SweepPoint
    stages: tuple[NotebookStage, ...]
    stage_dirs: dict[str, Path]
    per_notebook: dict[str, dict[str, Any]]


def read_sweep_spec(sweep_file: str | Path) -> dict[str, Any]:
    """Read a sweep YAML file.

    Raises:
        FileNotFoundError: no such file. ValueError: not valid YAML, or not a mapping.
    """
    import yaml

    path = Path(sweep_file)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep file must be a mapping with 'parameters' and/or 'grid'")
    return spec


def plan_sweep(
    sweep_file: str | Path, sweep_dir: str | Path, overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[NotebookStage], list[PlannedRun]]:
    """Read and check a sweep file without running anything.

    Args:
        sweep_file: the YAML file.
        sweep_dir: the sweep folder.
        overrides: parameters applied on top of every run (a notebook's parameters are dropped
            for runs that do not execute it).

    Returns:
        ``(spec, the sweep's notebooks, one PlannedRun per grid point)``.

    Raises:
        FileNotFoundError: no sweep file or notebook. ValueError: malformed YAML, grid, or a
            parameter name no notebook declares (naming the file).
    """
    path = Path(sweep_file)
    spec = read_sweep_spec(path)
    points = expand_sweep(spec, source=str(path))
    selected = _select(spec.get("stages"))
    declared = _declared(notebooks_dir(), selected)
    sweep_dir = Path(sweep_dir).resolve()
    plans = []
    for point in points:
        params = {**point.parameters, **dict(overrides or {})}
        try:
            per = _resolve_parameters(params, selected, declared)  # checks every name once
        except ValueError as err:
            raise ValueError(f"{path}: run {point.name}: {err}") from err
        stages = selected
        if point.stages is not None:
            outside = sorted(set(point.stages) - {s.key for s in selected})
            if outside:
                raise ValueError(f"{path}: run {point.name} asks for notebook(s) {outside}, which the sweep's "
                                 f"stages {[s.key for s in selected]} do not include")
            stages = [s for s in selected if s.key in point.stages]
            # names meant for every notebook ("device") stay; those of skipped notebooks go
            per = _resolve_parameters({k: v for k, v in params.items() if _addressed(k) in (None, *point.stages)},
                                      stages, declared)
        stage_dirs, upstream = {}, []
        for s in stages:
            upstream.append([s.key, per[s.key]])
            stage_dirs[s.key] = sweep_dir / "stages" / f"{s.folder}_{_digest(upstream)}"
        plans.append(PlannedRun(point, tuple(stages), stage_dirs, per))
    return spec, selected, plans


def _addressed(name: str) -> str | None:
    """The notebook a parameter name addresses (``"03.seed"`` -> ``"03"``), None for a bare name."""
    prefix, dot, _ = name.partition(".")
    return prefix.zfill(2) if dot and re.fullmatch(r"\d{1,2}", prefix) else None


def run_sweep(
    sweep_file: str | Path, sweep_dir: str | Path, overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False, html: bool = True, log: Any = print, where: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every grid point of a YAML sweep as a pipeline, sharing identical upstream notebooks.

    Args:
        sweep_file: the YAML file.
        sweep_dir: the sweep folder (``runs/<name>/`` for each point, ``stages/`` for shared
            notebooks, ``summary.csv`` and ``summary.md``).
        overrides: parameters applied on top of every run (command-line ``--set``).
        overwrite: passed to each pipeline.
        html: write HTML renderings.
        log: progress output.
        where: run only the points whose labels match (``{"network": "unet2d"}``; a list matches
            any of its values: ``{"03.seed": [0, 1]}``); the summary
            still lists every run of the sweep found finished on disk, so two processes may share
            one sweep folder by running disjoint parts.

    Returns:
        One summary row per run of the sweep: ``run``, the grid labels, ``status``, ``mean_dice``,
        ``mean_hd95``, ``variant``, ``seconds`` and the per-organ Dice (``dice_<organ>``) and HD95
        (``hd95_<organ>``); runs not executed (filtered out, not yet run) have status ``"pending"``.

    Raises:
        FileNotFoundError: no sweep file. ValueError: a malformed sweep or an unknown ``where``
            axis (before anything runs).
    """
    path = Path(sweep_file)
    sweep_dir = Path(sweep_dir).resolve()
    spec, selected, plans = plan_sweep(path, sweep_dir, overrides)
    say = log or (lambda *a, **k: None)
    chosen = _filter(plans, where, path)
    say(f"sweep {path.name}: {len(chosen)} of {len(plans)} run(s) into {sweep_dir}")
    failed: dict[str, str] = {}
    for i, plan in enumerate(chosen, 1):
        say(f"--- run {i}/{len(chosen)}: {plan.point.name}")
        params = {**plan.point.parameters, **dict(overrides or {})}
        if plan.point.stages is not None:
            params = {k: v for k, v in params.items() if _addressed(k) in (None, *plan.point.stages)}
        try:
            run_pipeline(sweep_dir / "runs" / plan.point.name, params, stages=[s.key for s in plan.stages],
                         overwrite=overwrite, html=html, stage_dirs=plan.stage_dirs, log=log)
        except Exception as err:  # noqa: BLE001 - one failed run does not stop the sweep; it is reported
            failed[plan.point.name] = f"failed: {type(err).__name__}"
            say(f"run {plan.point.name} failed: {err}")
        _write_summary(sweep_dir, sweep_rows(sweep_dir, plans, failed))
    rows = sweep_rows(sweep_dir, plans, failed)
    _write_summary(sweep_dir, rows)
    return rows


def _filter(plans: Sequence[PlannedRun], where: Mapping[str, Any] | None, source: Path) -> list[PlannedRun]:
    if not where:
        return list(plans)
    axes = set(plans[0].point.labels) if plans else set()
    unknown = sorted(set(where) - axes)
    if unknown:
        raise ValueError(f"{source}: cannot select on {unknown}: the grid's axes are {sorted(axes)}")
    def matches(label: Any, wanted: Any) -> bool:
        options = wanted if isinstance(wanted, (list, tuple)) else [wanted]
        return str(label) in {str(o) for o in options}

    return [p for p in plans if all(matches(p.point.labels[a], v) for a, v in where.items())]


def sweep_rows(sweep_dir: str | Path, plans: Sequence[PlannedRun],
               failed: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One summary row per planned run, read from the run folders on disk (see :func:`run_sweep`)."""
    rows = []
    for plan in plans:
        run_dir = Path(sweep_dir) / "runs" / plan.point.name
        row: dict[str, Any] = {"run": plan.point.name, **plan.point.labels}
        state = _read_state(run_dir)
        notebooks = (state or {}).get("notebooks", {})
        if failed and plan.point.name in failed:
            row["status"] = failed[plan.point.name]
        elif state is None or any(notebooks.get(s.key, {}).get("status") != "ok" for s in plan.stages):
            row["status"] = "pending"
        else:
            row["status"] = "ok"
        ft = (state or {}).get("finetune_results") or {}
        if row["status"] == "ok":
            own = [e.get("seconds") or 0.0 for e in notebooks.values() if not e.get("shared")]
            row.update(mean_dice=ft.get("mean_dice"), mean_hd95=ft.get("mean_hd95"), variant=ft.get("variant"),
                       seconds=round(sum(own), 1),
                       **{f"dice_{o}": d for o, d in (ft.get("organs") or {}).items()},
                       **{f"hd95_{o}": d for o, d in (ft.get("organs_hd95") or {}).items()})
        rows.append(row)
    return rows


def _write_summary(sweep_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _fmt(row.get(c)) for c in columns})
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    head = [c for c in columns if not c.startswith(("dice_", "hd95_"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in head) + " |" for r in rows]
    atomic_write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")

