"""Notebook 04 (mask inspection) and the library behind it (:mod:`mosmoskit.inspection`).

The notebook's parameters must be ``InspectionConfig``'s fields; a missing checkpoint or another
label map must fail with a message that names the problem; the exported prediction must lie in the
scan's own space; and the notebook must run end to end under papermill on a tiny fine-tuned
checkpoint, showing the Dice table and the static views.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from notebook_checks import assert_thin_and_stripped, parameter_values  # noqa: E402
from mosmoskit.config import config_to_dict  # noqa: E402
from mosmoskit.data.phantom import generate_cohort  # noqa: E402
from mosmoskit.data.readers import load_image  # noqa: E402
from mosmoskit.finetuning import FinetuneConfig  # noqa: E402
from mosmoskit.finetuning.run import run_finetuning  # noqa: E402
from mosmoskit.inspection import (  # noqa: E402
    InspectionConfig,
    describe_inspection,
    group_cases,
    prediction_paths,
    run_inspection,
)
from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.pretraining.config import PretrainConfig  # noqa: E402
from mosmoskit.pretraining.model import build_pretrain_model  # noqa: E402
from mosmoskit.training.checkpoint import save_checkpoint  # noqa: E402
from mosmoskit.viz.viewer import case_mean_dice, render_view  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_mask_inspection.ipynb"
FIELDS = [f.name for f in dataclasses.fields(InspectionConfig)]
BTCV = load_label_map("btcv")
LPS_FLIP = np.array([[0, -1], [1, -1], [2, 1]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run much faster on one thread when the CPU is shared (see test_finetuning.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _to_lps(src: Path, dst: Path) -> Path:
    """Rewrite a NIfTI in LPS orientation: same world positions, axes 0 and 1 reversed."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)
    nd = data.ndim
    ornt = LPS_FLIP[:nd]
    m = nib.orientations.inv_ornt_aff(ornt, data.shape)
    to_original = np.eye(4)
    to_original[:nd, :nd], to_original[:nd, 3] = m[:nd, :nd], m[:nd, nd]
    affine = img.affine @ to_original
    out = nib.Nifti1Image(np.ascontiguousarray(nib.orientations.apply_orientation(data, ornt)), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, str(dst))
    return dst


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Two tiny 2D fine-tuning runs (one update each) on 4 phantom patients x 2 slices of 32 x 32:
    ``plain`` (random init, no maps) and ``maps`` (input fusion from an untrained pre-training
    checkpoint); a 3D phantom folder with two labelled volumes, and one of them stored in LPS."""
    base = tmp_path_factory.mktemp("inspect")
    cohort = generate_cohort(base / "cohort", n=4, seed=2, shape=(32, 32), spacing=(12.0, 12.0), spatial_dims=2,
                             slices_per_case=2, progress=False)
    pconfig = PretrainConfig(image_size=(32, 32), encoder_width=8, tag_head_dim=16, embed_dim=16, text_encoder="tiny")
    torch.manual_seed(0)
    pmodel = build_pretrain_model(pconfig, BTCV, with_text_encoder=False)
    pretrain = save_checkpoint(base / "pretrain.pt", state={"model": pmodel.state_dict()},
                               config=config_to_dict(pconfig), label_map=BTCV, kind="pretrain")
    common = dict(dataset=str(cohort), roi_size=(32, 32), max_steps=1, val_every=0, batch_size=1, crops_per_case=1,
                  test_fraction=0.25, val_max_cases=1, warmup_steps=0, checkpoint_every=1, save_predictions=False,
                  device="cpu")
    run_finetuning(FinetuneConfig(**common, encoder_width=8, output_dir=str(base / "plain")), progress=False)
    run_finetuning(FinetuneConfig(**common, pretrained_checkpoint=str(pretrain), fusion="input",
                                  output_dir=str(base / "maps")), progress=False)
    volumes = generate_cohort(base / "volumes", n=2, seed=9, shape=(30, 26, 10), spacing=(12.0, 12.0, 16.0),
                              progress=False)
    scan = _to_lps(volumes / "imagesTr" / "phantom_0000.nii.gz", base / "scan_lps.nii.gz")
    return {"base": base, "plain": base / "plain" / "last.pt", "maps": base / "maps" / "last.pt",
            "pretrain": pretrain, "volumes": volumes, "scan": scan}


# ----------------------------------------------------------------------------------- notebook
def test_parameters_cell_names_equal_config_fields():
    from mosmoskit.notebooks import notebook_parameters

    assert list(notebook_parameters(NOTEBOOK)) == FIELDS


def test_parameters_cell_is_flat_typed_and_keeps_library_defaults():
    values = parameter_values(NOTEBOOK)
    defaults = {f.name: f.default for f in dataclasses.fields(InspectionConfig)}
    assert values == defaults


def test_notebook_is_thin_and_saved_without_outputs():
    assert_thin_and_stripped(NOTEBOOK)


def test_run_notebook_refuses_unknown_parameter(tmp_path):
    from mosmoskit.notebooks import run_notebook

    with pytest.raises(ValueError, match="unknown parameter.*case_idd"):
        run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {"case_idd": "x"})
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.slow
def test_notebook_executes_on_a_tiny_checkpoint(workspace, tmp_path):
    import nbformat

    from mosmoskit.notebooks import run_notebook

    out = tmp_path / "inspect"
    params = {"checkpoint": str(workspace["maps"]), "dataset": str(workspace["volumes"]), "organ": "liver",
              "axis": "coronal", "device": "cpu", "output_dir": str(out)}
    executed = run_notebook(NOTEBOOK, tmp_path / "out.ipynb", params, cwd=tmp_path)
    cells = [c for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code"]
    outputs = [o for c in cells for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Viewing: phantom_000" in text and "Attention maps: yes" in text
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table" in t and "sorted by mean (worst first)" in t for t in tables), "expected the static Dice table"
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, "expected one static figure of the views (headless run: no widgets)"
    widgets = [o["data"] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert all(w.get("text/plain", "").startswith("segmenting") for w in widgets), "only the progress bar is a widget"
    # The exported prediction lies on the viewed scan's own grid, affine included.
    exported = sorted(out.glob("*_prediction.nii.gz"))
    assert len(exported) == 1
    sidecar = json.loads(exported[0].with_name(exported[0].name.replace(".nii.gz", ".json")).read_text())
    source = nib.load(sidecar["input"])
    written = nib.load(str(exported[0]))
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    assert sidecar["labels"] == dict(BTCV.labels) and sidecar["dice"] is not None


# ----------------------------------------------------------------------------------- config
def test_config_validates_fields_with_messages_that_name_them(workspace, tmp_path):
    ckpt = str(workspace["plain"])
    with pytest.raises(ValueError, match="checkpoint '.*nope.pt' does not exist"):
        InspectionConfig(checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="axis must be one of"):
        InspectionConfig(checkpoint=ckpt, axis="transverse")
    with pytest.raises(ValueError, match="window_preset must be one of"):
        InspectionConfig(checkpoint=ckpt, window_preset="soft")
    with pytest.raises(ValueError, match="opacity must be a number in \\[0, 1\\]"):
        InspectionConfig(checkpoint=ckpt, opacity=2.0)
    with pytest.raises(ValueError, match="max_cases must be an integer >= 1"):
        InspectionConfig(checkpoint=ckpt, max_cases=0)
    with pytest.raises(ValueError, match="give dataset or scan, not both"):
        InspectionConfig(checkpoint=ckpt, dataset=str(workspace["volumes"]), scan=str(workspace["scan"]))
    with pytest.raises(ValueError, match="dataset .* must be '' .* or a folder with a dataset.json"):
        InspectionConfig(checkpoint=ckpt, dataset=str(tmp_path))
    with pytest.raises(ValueError, match="label_map: unknown label map 'btvc'"):
        InspectionConfig(checkpoint=ckpt, label_map="btvc")


def test_wrong_label_map_or_checkpoint_kind_fails_before_segmenting(workspace, tmp_path):
    wrong_map = "segments label map 'btcv' \\(13 organs\\) but label_map='amos' \\(15 organs\\)"
    with pytest.raises(ValueError, match=wrong_map):
        run_inspection(InspectionConfig(checkpoint=str(workspace["plain"]), label_map="amos",
                                        output_dir=str(tmp_path)), progress=False)
    with pytest.raises(ValueError, match="'pretrain' checkpoint, not a fine-tuning one"):
        run_inspection(InspectionConfig(checkpoint=str(workspace["pretrain"]), output_dir=str(tmp_path)),
                       progress=False)
    with pytest.raises(ValueError, match="organ='liver' asks for an attention map.*fine-tuned without maps"):
        run_inspection(InspectionConfig(checkpoint=str(workspace["plain"]), organ="liver", output_dir=str(tmp_path)),
                       progress=False)
    with pytest.raises(ValueError, match="organ 'livr' is not in the checkpoint's label map 'btcv'"):
        run_inspection(InspectionConfig(checkpoint=str(workspace["maps"]), organ="livr", output_dir=str(tmp_path)),
                       progress=False)
    unknown = "case_id 'nobody' is neither one of the 1 cases inspected \\(phantom_0002\\)"
    with pytest.raises(ValueError, match=unknown):
        run_inspection(InspectionConfig(checkpoint=str(workspace["plain"]), case_id="nobody",
                                        output_dir=str(tmp_path)), progress=False)
    assert not any(tmp_path.iterdir()), "nothing is written before the inputs are checked"


# ------------------------------------------------------------------------------- inspection
def test_slices_of_one_patient_form_one_case_in_anatomical_order():
    images = {
        "p1_s1": {"image": "a", "parent_case": "p1", "z_mm": 40.0},
        "p1_s0": {"image": "b", "parent_case": "p1", "z_mm": 80.0},
        "p1_s2": {"image": "c", "parent_case": "p1", "z_mm": -5.0},
        "scan": {"image": "d"},
        "p2_s0": {"image": "e", "patient_id": "p2", "slice_index": 3},
        "p2_s1": {"image": "f", "patient_id": "p2", "slice_index": 1},
    }
    assert group_cases(images) == {"p1": ["p1_s2", "p1_s1", "p1_s0"], "scan": ["scan"], "p2": ["p2_s1", "p2_s0"]}


def test_own_test_set_is_scored_per_patient_as_the_run_scored_it(workspace, tmp_path):
    config = InspectionConfig(checkpoint=str(workspace["maps"]), label_map="btcv", device="cpu",
                              output_dir=str(tmp_path / "out"))
    result = run_inspection(config, progress=False)
    slices = json.loads((workspace["maps"].parent / "metrics.json").read_text())["split"]["test"]["case_ids"]
    assert result.evaluated == {"phantom_0002": slices} and set(result.per_image) == set(slices)
    # The same model on the same slices: the per-patient Dice equals the run's own metrics.csv.
    with open(workspace["maps"].parent / "metrics.csv") as fh:
        rows = {r["organ"]: r for r in csv.DictReader(fh) if r["case_id"] == "phantom_0002"}
    for organ, metrics in result.per_case["phantom_0002"].items():
        assert metrics["status"] == rows[organ]["status"]
        np.testing.assert_allclose(metrics["dice"], float(rows[organ]["dice"]), equal_nan=True)
    assert result.case_id == "phantom_0002" and result.chosen_because == "worst mean Dice"
    case = result.case
    assert case.slice_ids == tuple(slices) and case.axes == ("axial",) and case.image.shape == (32, 32, 2)
    assert case.maps.shape == (13, 32, 32, 2) and case.truth is not None
    for k, image_id in enumerate(slices):  # each slice of the stack is that image file, as read
        np.testing.assert_array_equal(case.image[..., k], result.volumes[image_id].array)
    # One export per slice file, each on its own file's grid and affine.
    assert result.exported == [prediction_paths(config.output_dir, s)[0] for s in slices]
    for k, (image_id, path) in enumerate(zip(slices, result.exported)):
        written, source = nib.load(str(path)), nib.load(str(result.volumes[image_id].source))
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(written.dataobj), case.prediction[..., k])  # RAS files
        assert json.loads(prediction_paths(config.output_dir, image_id)[1].read_text())["case_id"] == "phantom_0002"
    text = describe_inspection(result)
    assert "Viewing: phantom_0002 (worst mean Dice" in text and "1 of 1 segmented (2 image(s)), 1 scored" in text
    # The viewer starts on the difference view and its picture is render_view's.
    viewer = result.viewer(display_size=0)
    assert viewer.state.mode == "difference"
    np.testing.assert_array_equal(viewer.image_array(), render_view(case, viewer.state))
    assert "<table" in result.dice_table().html


def test_export_never_overwrites_silently(workspace, tmp_path):
    config = InspectionConfig(checkpoint=str(workspace["plain"]), device="cpu", output_dir=str(tmp_path))
    first = run_inspection(config, progress=False)
    before = [p.read_bytes() for p in first.exported]
    with pytest.raises(FileExistsError, match="already exist.*overwrite=True"):
        run_inspection(config, progress=False)
    with pytest.raises(FileExistsError, match="already exist.*overwrite=True"):  # caught before segmenting
        run_inspection(dataclasses.replace(config, case_id="phantom_0002"), progress=False)
    assert [p.read_bytes() for p in first.exported] == before
    again = run_inspection(dataclasses.replace(config, overwrite=True, case_id=first.case.slice_ids[1]),
                           progress=False)
    assert again.exported == first.exported and again.case_id == "phantom_0002"
    assert again.first_index == 1 and again.initial_state().index == 1  # opened at the slice named


def test_a_single_scan_in_another_orientation_is_exported_in_its_own_space(workspace, tmp_path, capsys):
    config = InspectionConfig(checkpoint=str(workspace["plain"]), scan=str(workspace["scan"]), axis="sagittal",
                              device="cpu", output_dir=str(tmp_path))
    result = run_inspection(config, progress=False)
    assert result.case_id == "scan_lps" and result.per_case == {} and result.summary is None
    assert result.case.truth is None and result.case.maps is None
    assert "fusion='none'" in result.case.maps_note
    state = result.initial_state()
    assert state.mode == "prediction" and state.axis == "sagittal"
    (exported,) = result.exported
    written = nib.load(str(exported))
    source = nib.load(str(workspace["scan"]))
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.shape == source.shape == (30, 26, 10)
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
    # Stored LPS = the canonical RAS prediction with axes 0 and 1 reversed.
    np.testing.assert_array_equal(np.asarray(written.dataobj), result.case.prediction[::-1, ::-1, :])
    np.testing.assert_array_equal(load_image(exported).array, result.case.prediction)
    result.show_dice_table(live=False)
    assert "No Dice table" in capsys.readouterr().out


def test_another_dataset_picks_the_worst_volume_and_always_includes_case_id(workspace, tmp_path):
    common = dict(checkpoint=str(workspace["maps"]), dataset=str(workspace["volumes"]), organ="liver",
                  export_prediction=False, device="cpu", output_dir=str(tmp_path))
    both = run_inspection(InspectionConfig(**common), progress=False)
    assert both.evaluated == {"phantom_0000": ["phantom_0000"], "phantom_0001": ["phantom_0001"]}
    means = {c: case_mean_dice(m) for c, m in both.per_case.items()}
    assert both.case_id == min(means, key=lambda c: (math.isnan(means[c]), means[c], c))
    assert both.case.axes == ("axial", "coronal", "sagittal") and both.case.slice_ids == ()
    result = run_inspection(InspectionConfig(**common, max_cases=1, case_id="phantom_0001"), progress=False)
    assert list(result.evaluated) == ["phantom_0000", "phantom_0001"] and result.n_available == 2
    assert result.case_id == "phantom_0001" and result.chosen_because == "case_id"
    assert result.case.maps.shape == (13, 30, 26, 10) and result.exported == []
    state = result.initial_state()
    assert state.attention == "liver" and state.index == int(
        np.argmax((result.case.truth == BTCV.id_of("liver")).sum(axis=(0, 1))))
    assert not any(tmp_path.iterdir())
