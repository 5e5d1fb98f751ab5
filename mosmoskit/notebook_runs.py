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
    "expand_sweep",
    "notebooks_dir",
    "parse_assignments",
    "plan_sweep",
    "run_pipeline",
    "run_sweep",
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
    record = json.loads(metrics_json.read_text(encoding="utf-8"))
    test = record.get("test") or {}
    return {
        "mean_dice": test.get("mean_dice"), "mean_hd95": test.get("mean_hd95"), "n_cases": test.get("n_cases"),
        "unit": record.get("test_unit", "image"), "variant": (record.get("protocol") or {}).get("variant"),
        "organs": {o: s.get("dice_mean") for o, s in (test.get("organs") or {}).items()},
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _results_markdown(state: Mapping[str, Any], run_dir: Path) -> str:
    lines = [f"# Pipeline run `{run_dir.name}`", "", "| notebook | status | seconds | executed notebook |",
             "|---|---|---|---|"]
    for key, entry in state["notebooks"].items():
        lines.append(f"| {key} | {entry['status']} | {_fmt(entry.get('seconds'))} | {entry.get('executed', '-')} |")
    ft = state.get("finetune_results")
    if ft:
        lines += ["", f"## Fine-tuning test set ({ft['n_cases']} test cases, unit: {ft['unit']}; variant {ft['variant']})", "",
                  "| organ | Dice |", "|---|---|"]
        lines += [f"| {o} | {_fmt(d)} |" for o, d in ft["organs"].items()]
        lines += [f"| **mean** | **{_fmt(ft['mean_dice'])}** |"]
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
    if previous is not None and previous.get("settings") != settings and not overwrite:
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
def expand_sweep(spec: Mapping[str, Any], source: str = "sweep") -> list[tuple[str, dict[str, Any]]]:
    """A sweep spec -> ``[(run name, parameters)]``, one per combination of the grid.

    Args:
        spec: ``{"parameters": {...}, "grid": {name: [values]}, "stages": [...]}`` (see the module
            docstring); ``grid`` may be empty (one run).
        source: the sweep file's name, for error messages.

    Raises:
        ValueError: unknown top-level keys, a grid entry that is not a non-empty list, or
            duplicate run names.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: a sweep file must be a mapping with 'parameters' and/or 'grid'")
    unknown = sorted(set(spec) - {"parameters", "grid", "stages", "description"})
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: parameters, grid, stages, description")
    fixed = dict(spec.get("parameters") or {})
    grid = dict(spec.get("grid") or {})
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: grid entry {name!r} must be a non-empty list of values, got {values!r}")
        if name in fixed:
            raise ValueError(f"{source}: {name!r} is both a fixed parameter and a grid axis")
    names = list(grid)
    runs: list[tuple[str, dict[str, Any]]] = []
    for combo in itertools.product(*(grid[n] for n in names)) if names else [()]:
        point = dict(zip(names, combo))
        label = "_".join(f"{n.split('.')[-1]}-{_slug(v)}" for n, v in point.items()) or "run"
        runs.append((label, {**fixed, **point}))
    seen = [r[0] for r in runs]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{source}: two grid points give the same run name; use distinct values")
    return runs


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value or "none"
    text = Path(text).stem if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9.+-]+", "", text)[:40] or "x"


def plan_sweep(
    sweep_file: str | Path, sweep_dir: str | Path, overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[NotebookStage], list[tuple[str, dict[str, Any], dict[str, Path]]]]:
    """Read and check a sweep file without running anything.

    Returns:
        ``(spec, selected notebooks, plans)`` with one ``(run name, parameters, notebook folders)``
        per grid point; a notebook's folder is keyed by its parameters and those of everything
        upstream, so identical upstream notebooks share one folder.

    Raises:
        FileNotFoundError: no sweep file or notebook. ValueError: malformed YAML, grid, or a
            parameter name no notebook declares (naming the file).
    """
    import yaml

    path = Path(sweep_file)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    runs = expand_sweep(spec, source=str(path))
    selected = _select(spec.get("stages"))
    declared = _declared(notebooks_dir(), selected)
    sweep_dir = Path(sweep_dir).resolve()
    plans = []
    for name, params in runs:
        params = {**params, **dict(overrides or {})}
        try:
            per = _resolve_parameters(params, selected, declared)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        stage_dirs, upstream = {}, []
        for s in selected:
            upstream.append([s.key, per[s.key]])
            stage_dirs[s.key] = sweep_dir / "stages" / f"{s.folder}_{_digest(upstream)}"
        plans.append((name, params, stage_dirs))
    return spec, selected, plans


def run_sweep(
    sweep_file: str | Path, sweep_dir: str | Path, overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False, html: bool = True, log: Any = print,
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

    Returns:
        One summary row per run: ``run``, the grid values, ``status``, ``mean_dice``,
        ``mean_hd95``, ``variant`` and the per-organ Dice.

    Raises:
        FileNotFoundError: no sweep file. ValueError: a malformed sweep (before anything runs).
    """
    path = Path(sweep_file)
    sweep_dir = Path(sweep_dir).resolve()
    spec, selected, plans = plan_sweep(path, sweep_dir, overrides)
    say = log or (lambda *a, **k: None)
    say(f"sweep {path.name}: {len(plans)} run(s) into {sweep_dir}")
    rows = []
    grid_names = list((spec.get("grid") or {}).keys())
    for i, (name, params, stage_dirs) in enumerate(plans, 1):
        say(f"--- run {i}/{len(plans)}: {name}")
        row: dict[str, Any] = {"run": name, **{g: params.get(g) for g in grid_names}}
        try:
            state = run_pipeline(sweep_dir / "runs" / name, params, stages=[s.key for s in selected],
                                 overwrite=overwrite, html=html, stage_dirs=stage_dirs, log=log)
            ft = state.get("finetune_results") or {}
            row.update(status="ok", mean_dice=ft.get("mean_dice"), mean_hd95=ft.get("mean_hd95"),
                       variant=ft.get("variant"), **{f"dice_{o}": d for o, d in (ft.get("organs") or {}).items()})
        except Exception as err:  # noqa: BLE001 - one failed run does not stop the sweep; it is reported
            row.update(status=f"failed: {type(err).__name__}")
            say(f"run {name} failed: {err}")
        rows.append(row)
        _write_summary(sweep_dir, rows)
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
    head = [c for c in columns if not c.startswith("dice_")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in head) + " |" for r in rows]
    atomic_write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")

