"""Notebook 01 (data exploration): its parameters are ExplorationConfig's fields, it stops early on bad
parameters, and it runs end to end under papermill on a tiny phantom cohort."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from notebook_checks import assert_thin_and_stripped, parameter_values
from mosmoskit.config import config_from_dict, config_to_dict
from mosmoskit.exploration import ExplorationConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_data_exploration.ipynb"
FIELDS = [f.name for f in dataclasses.fields(ExplorationConfig)]
# 3 patients on a coarse grid: generated and read in a few seconds.
TINY = dict(phantom_cases=3, phantom_shape=[40, 40, 24], phantom_spacing=[9.0, 9.0, 12.0], n_report_examples=2)


# ------------------------------------------------------------------------------------- static
def test_parameters_cell_names_equal_config_fields():
    from mosmoskit.notebooks import notebook_parameters

    declared = notebook_parameters(NOTEBOOK)
    assert list(declared) == FIELDS
    assert declared["hu_range"]["type"] == "list[float]" and declared["max_cases"]["type"] == "int"
    assert all(p["help"] for p in declared.values()), "every parameter needs a help text after its type"


def test_parameters_cell_is_flat_typed_and_keeps_library_defaults():
    values = parameter_values(NOTEBOOK)
    assert values == config_to_dict(ExplorationConfig())
    assert config_from_dict(ExplorationConfig, values) == ExplorationConfig()


def test_notebook_is_thin_and_saved_without_outputs():
    assert_thin_and_stripped(NOTEBOOK)


def test_run_notebook_refuses_unknown_parameter(tmp_path):
    from mosmoskit.notebooks import run_notebook

    with pytest.raises(ValueError, match="unknown parameter.*phantom_case"):
        run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {"phantom_case": 3})
    assert not (tmp_path / "out.ipynb").exists()


# ----------------------------------------------------------------------------------- papermill
def _last_cell_run(executed: Path) -> str:
    """The source of the last code cell that ran (papermill's injected parameters cell included)."""
    import nbformat

    cells = [c for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code"]
    return [c.source for c in cells if c.execution_count is not None][-1]


@pytest.mark.slow
@pytest.mark.parametrize("bad, message", [
    ({"phantom_case": 3}, "unknown parameter 'phantom_case' \\(did you mean 'phantom_cases'"),
    ({"dataset": "EMPTY"}, "lists no case \\(its 'training' section is empty\\)"),
])
def test_bad_parameter_stops_the_notebook_in_its_first_cells(tmp_path, bad, message):
    import papermill

    if bad.get("dataset") == "EMPTY":  # a data folder whose dataset.json lists no case
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": []}))
        bad = {"dataset": str(tmp_path / "empty")}
    executed = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match=message):
        papermill.execute_notebook(str(NOTEBOOK), str(executed), cwd=str(tmp_path), kernel_name="python3",
                                   parameters={**bad, "output_dir": str(tmp_path / "run")}, progress_bar=False)
    assert "config = notebook_config(ExplorationConfig)" in _last_cell_run(executed), \
        "the config cell, right after the parameters, must be the one that fails"
    assert not (tmp_path / "run").exists(), "nothing may be generated or written before the parameters are checked"


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters(tmp_path):
    import nbformat

    from mosmoskit.notebooks import run_notebook

    run_dir = tmp_path / "run"
    executed = run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {**TINY, "output_dir": str(run_dir)}, cwd=tmp_path)

    assert sorted(p.name for p in run_dir.iterdir()) == [
        "data", "exploration.json", "hu_histograms.png", "organ_sizes.png", "orthogonal_slices.png",
        "report_examples.html", "tag_frequencies.png"]
    record = json.loads((run_dir / "exploration.json").read_text())
    assert record["config"] == {**config_to_dict(ExplorationConfig()), **TINY, "output_dir": str(run_dir)}
    assert record["data"]["n_cases"] == 3 and record["data"]["n_reports"] == 3
    assert record["label_audit"]["ok"] and record["label_audit"]["expected_values"] == list(range(14))
    assert [c["spacing"] for c in record["cases"]] == [TINY["phantom_spacing"]] * 3
    assert all(c["axcodes"] == "RAS" for c in record["cases"])
    liver = record["intensity_histograms"]["organs"]["liver"]
    assert sum(liver["counts"]) + liver["below"] + liver["above"] == liver["voxels"] > 0
    assert record["organ_sizes"]["organs"]["liver"]["n_present"] == 3
    assert all(sum(c.values()) == 3 for c in record["tags"]["organs"].values())
    assert len(record["report_examples"]) == 2
    assert (run_dir / "report_examples.html").read_text().count("<mark ") > 5

    outputs = [o for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Label audit against 'btcv': expected values 0..13; all masks pass" in text
    assert "40x40x24" in text and "Tags read from 3 report(s)" in text and str(run_dir / "exploration.json") in text
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4, "expected the histograms, the organ sizes, the tag bars and the slices"
    htmls = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<mark data-tags=" in h for h in htmls), "the reports must be shown with their tags highlighted"
