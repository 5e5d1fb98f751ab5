"""Notebook 04 (mask inspection) and mosmoskit.inspection, on a tiny fine-tuned checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from notebook_checks import assert_thin_and_stripped, parameter_values  # noqa: E402
from mosmoskit.config import config_to_dict  # noqa: E402
from mosmoskit.inspection import (  # noqa: E402
    InspectionConfig,
    choose_case,
    dice_table,
    export_prediction,
    inspect_cases,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_mask_inspection.ipynb"
FIELDS = [f.name for f in dataclasses.fields(InspectionConfig)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2D MOSMOS run (decoder fusion) small enough for a test: its attention maps are real."""
    from mosmoskit.finetuning.config import FinetuneConfig
    from mosmoskit.finetuning.run import run_finetuning
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.pretraining.run import run_pretraining

    root = tmp_path_factory.mktemp("nb04")
    pre = run_pretraining(PretrainConfig(text_encoder="tiny", phantom_cases=5, phantom_slices_per_case=2,
                                         image_size=(64, 64), max_steps=2, batch_size=4, val_every=2,
                                         checkpoint_every=2, warmup_steps=0, device="cpu",
                                         output_dir=str(root / "pre")), progress=False)
    fine = run_finetuning(FinetuneConfig(phantom_cases=5, phantom_slices_per_case=2, phantom_shape=(64, 64),
                                         phantom_spacing=(6.0, 6.0), roi_size=(64, 64), max_steps=2, batch_size=1,
                                         crops_per_case=1, val_every=2, checkpoint_every=2, warmup_steps=0,
                                         val_max_cases=1, sw_batch_size=2, device="cpu", fusion="decoder",
                                         pretrained_checkpoint=str(pre.checkpoint), test_fraction=0.4,
                                         output_dir=str(root / "fine")), progress=False)
    return Path(fine.checkpoint)


def test_parameters_cell_names_equal_config_fields():
    values = parameter_values(NOTEBOOK)
    assert list(values) == FIELDS
    assert values == config_to_dict(InspectionConfig())


def test_notebook_is_thin_and_saved_without_outputs():
    assert_thin_and_stripped(NOTEBOOK)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="axis"):
        InspectionConfig(axis="oblique")
    with pytest.raises(ValueError, match="not both"):
        InspectionConfig(dataset="d", scan="s")
    with pytest.raises(ValueError, match="opacity"):
        InspectionConfig(opacity=2.0)


@pytest.mark.slow
def test_inspection_scores_the_runs_test_cases_and_exports_in_the_scans_space(checkpoint, tmp_path):
    import nibabel as nib

    cases = inspect_cases(InspectionConfig(checkpoint=str(checkpoint), device="cpu"), progress=False)
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    assert [c.case_id for c in cases] == metrics["split"]["test"]["case_ids"]
    case = cases[0]
    assert case.truth is not None and case.prediction.shape == case.image.shape
    assert case.attention is not None and case.attention.shape == (13, *case.image.shape)
    # the Dice table agrees with the run's own per-slice metrics
    saved = {(r.split(",")[0], r.split(",")[1]): r.split(",")[2]
             for r in (checkpoint.parent / "metrics_slices.csv").read_text().splitlines()[1:]}
    for organ, m in case.metrics.items():
        if m["status"] == "present":
            assert m["dice"] == pytest.approx(float(saved[(case.case_id, organ)]), abs=1e-6)
    rows = dice_table(cases)
    assert [r["mean"] for r in rows] == sorted(r["mean"] for r in rows)
    assert choose_case(cases).case_id == rows[0]["case_id"]
    with pytest.raises(ValueError, match="not among the segmented cases"):
        choose_case(cases, "nope")

    path = export_prediction(case, tmp_path)
    written, source = nib.load(str(path)), nib.load(case.source)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_prediction(case, tmp_path)


@pytest.mark.slow
def test_notebook_runs_under_papermill_and_writes_its_outputs(checkpoint, tmp_path):
    import nbformat

    from mosmoskit.notebooks import run_notebook

    out = tmp_path / "inspect"
    executed = run_notebook(NOTEBOOK, tmp_path / "04.ipynb", {"checkpoint": str(checkpoint), "organ": "liver",
                                                              "device": "cpu", "output_dir": str(out)}, cwd=tmp_path)
    assert (out / "dice_table.csv").is_file()
    assert len(list(out.glob("*_views.png"))) == 1 and len(list(out.glob("*_prediction.nii.gz"))) == 1
    outputs = [o for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("text/html" in o.get("data", {}) and "<table>" in o["data"]["text/html"] for o in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("parameters, message", [
    ({"checkpoint": "missing/last.pt"}, "does not exist"),
    ({"label_map": "amos"}, "segments the label map 'btcv', but label_map='amos'"),
    ({"axis": "oblique"}, "axis"),
])
def test_bad_parameters_fail_in_the_first_cells(checkpoint, tmp_path, parameters, message):
    import papermill

    from mosmoskit.notebooks import run_notebook

    parameters = {"checkpoint": str(checkpoint), "device": "cpu", "output_dir": str(tmp_path / "o"), **parameters}
    with pytest.raises(papermill.PapermillExecutionError, match=message):
        run_notebook(NOTEBOOK, tmp_path / "bad.ipynb", parameters, cwd=tmp_path)
    assert not (tmp_path / "o").exists()
