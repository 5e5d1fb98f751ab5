"""``python -m mosmoskit predict`` and ``finetune``: outputs aligned with the input (shape, affine,
orientation), the JSON sidecar, attention maps, real CT and DICOM input, and clear errors."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmoskit.commands import finetune as finetune_command
from mosmoskit.commands import predict as predict_command
from mosmoskit.config import config_to_dict
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import ImageReadError, load_image, load_label
from mosmoskit.evaluation.segmentation import organ_metrics
from mosmoskit.finetuning import FinetuneConfig, load_finetuned
from mosmoskit.finetuning.data import eval_transforms
from mosmoskit.inference import output_paths, predict_file, predict_volume, work_grid
from mosmoskit.labels import load_label_map
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.model import build_pretrain_model
from mosmoskit.training.checkpoint import CheckpointError, save_checkpoint

BTCV = load_label_map("btcv")
LPS_FLIP = np.array([[0, -1], [1, -1], [2, 1]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run much faster on one thread when the CPU is shared (see test_finetuning.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


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
    """Two fine-tuning checkpoints made with the ``finetune`` command on a tiny 2D phantom cohort:
    ``plain`` (random init, no resampling) and ``maps`` (input fusion, trained at 12 mm), a
    pre-training checkpoint, and a small 3D scan and a 2D slice stored in LPS orientation."""
    base = tmp_path_factory.mktemp("predict")
    cohort = generate_cohort(base / "cohort", n=4, seed=2, shape=(32, 32), spacing=(12.0, 12.0), spatial_dims=2,
                             slices_per_case=2, progress=False)
    pconfig = PretrainConfig(image_size=(32, 32), encoder_width=8, tag_head_dim=16, embed_dim=16, text_encoder="tiny")
    torch.manual_seed(0)
    pmodel = build_pretrain_model(pconfig, BTCV, with_text_encoder=False)
    pretrain = save_checkpoint(base / "pretrain.pt", state={"model": pmodel.state_dict()},
                               config=config_to_dict(pconfig), label_map=BTCV, kind="pretrain")
    common = ["--dataset", str(cohort), "--roi-size", "32", "32", "--max-steps", "1", "--val-every", "0",
              "--batch-size", "1", "--crops-per-case", "1", "--test-fraction", "0.25", "--val-max-cases", "1",
              "--no-save-predictions", "--device", "cpu"]
    assert finetune_command.run(_parse(finetune_command, [*common, "--encoder-width", "8",
                                                          "--output-dir", str(base / "plain")])) == 0
    assert finetune_command.run(_parse(finetune_command, [
        *common, "--pretrained-checkpoint", str(pretrain), "--fusion", "input", "--spacing", "12", "12",
        "--output-dir", str(base / "maps")])) == 0
    # Trained at 9 mm on 12 mm files: test scoring and predict both resample, there and back.
    assert finetune_command.run(_parse(finetune_command, [*common, "--encoder-width", "8", "--spacing", "9", "9",
                                                          "--output-dir", str(base / "resampled")])) == 0
    volume = generate_cohort(base / "vol", n=1, seed=9, shape=(30, 26, 10), spacing=(12.0, 12.0, 16.0), progress=False)
    scan = _to_lps(volume / "imagesTr" / "phantom_0000.nii.gz", base / "scan_lps.nii.gz")
    slice_2d = _to_lps(cohort / "imagesTr" / "phantom_0000_s00.nii.gz", base / "slice_lps.nii.gz")
    return {"base": base, "plain": base / "plain" / "last.pt", "maps": base / "maps" / "last.pt",
            "resampled": base / "resampled" / "last.pt", "pretrain": pretrain, "scan": scan, "slice": slice_2d,
            "cohort": cohort}


# ------------------------------------------------------------------------------ finetune command
def test_finetune_command_has_one_option_per_config_field():
    parser = argparse.ArgumentParser()
    finetune_command.add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} <= dests
    args = parser.parse_args(["--spatial-dims", "3", "--roi-size", "32", "32", "32", "--fusion", "decoder",
                              "--pretrained-checkpoint", "p.pt", "--no-init-encoder", "--label_fraction", "0.1"])
    config = finetune_command.config_from_args(FinetuneConfig, args)
    assert (config.roi_size, config.fusion, config.init_encoder, config.label_fraction) == \
        ((32, 32, 32), "decoder", False, 0.1)
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\]"):
        finetune_command.config_from_args(FinetuneConfig, parser.parse_args(["--label-fraction", "0"]))


def test_finetune_command_wrote_the_run_folder(workspace):
    out = workspace["maps"].parent
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["variant"] == "mosmos" and metrics["protocol"]["fusion"] == "input"
    written = {p.name for p in out.iterdir()}
    assert {"checkpoint_step000001.pt", "config.json", "label_map.json", "metrics.csv"} <= written


# ------------------------------------------------------------------------------- predict command
def test_predict_writes_labels_aligned_with_an_lps_volume(workspace, tmp_path):
    out = tmp_path / "seg.nii.gz"
    args = _parse(predict_command, ["--checkpoint", str(workspace["plain"]), "--input", str(workspace["scan"]),
                                    "--output", str(out), "--device", "cpu"])
    assert predict_command.run(args) == 0
    source, written = nib.load(str(workspace["scan"])), nib.load(str(out))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) <= set(range(BTCV.num_classes))
    # The file holds, voxel for voxel, the prediction made on the canonical (RAS) grid.
    model, config, _ = load_finetuned(workspace["plain"])
    model_labels, _ = predict_volume(model, load_image(workspace["scan"]), config)
    np.testing.assert_array_equal(nib.orientations.apply_orientation(model_labels, LPS_FLIP), data)
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    assert sidecar["labels"] == dict(BTCV.labels) and sidecar["label_map"] == "btcv"
    assert sidecar["checkpoint"] == str(workspace["plain"]) and sidecar["input"] == str(workspace["scan"])
    assert sidecar["input_axcodes"] == "LPS" and sidecar["kit_version"]
    assert sum(sidecar["voxels_per_label"].values()) == int(np.count_nonzero(data))
    assert sidecar["attention_maps"] is None


def test_predict_attention_maps_and_resampling(workspace, tmp_path):
    out = tmp_path / "maps_seg.nii"
    files = predict_file(workspace["maps"], workspace["scan"], out, attention_maps=True, device="cpu")
    assert files.attention == tmp_path / "maps_seg_attention.nii"
    source = nib.load(str(workspace["scan"]))
    maps = nib.load(str(files.attention))
    assert maps.shape == (*source.shape, len(BTCV.foreground_names))
    np.testing.assert_allclose(maps.affine, source.affine, atol=1e-5)
    values = np.asarray(maps.dataobj)
    assert np.isfinite(values).all() and values.min() >= -1e-6 and values.max() <= 1 + 1e-5
    sidecar = json.loads(files.sidecar.read_text())
    assert sidecar["attention_map_channels"] == list(BTCV.foreground_names)
    assert sidecar["resampled_to_mm"] == [12.0, 12.0] and sidecar["variant"] == "mosmos"


# ------------------------------------------------------------------------------- one data path
def test_predict_sees_a_scan_exactly_as_validation_does(workspace):
    """The network input of predict equals the validation pipeline's image, resampled or not."""
    case = {"image": str(workspace["cohort"] / "imagesTr" / "phantom_0001_s01.nii.gz"),
            "label": str(workspace["cohort"] / "labelsTr" / "phantom_0001_s01.nii.gz")}
    for spacing in [(), (9.0, 9.0), (7.0, 15.0)]:
        config = FinetuneConfig(spacing=spacing, roi_size=(32, 32))
        validation = eval_transforms(config, BTCV)(dict(case))["image"]
        grid = work_grid(load_image(case["image"]), config)
        np.testing.assert_array_equal(grid.network_input(config.window)[0].numpy(), validation.numpy())
        assert grid.shape == tuple(validation.shape[1:])


def test_test_dice_is_what_predict_and_the_metric_give(workspace):
    """metrics_slices.csv of a resampling run equals predict_file + organ_metrics on the same files."""
    run = workspace["resampled"].parent
    rows = list(csv.DictReader((run / "metrics_slices.csv").open()))
    test_cases = json.loads((run / "metrics.json").read_text())["split"]["test"]["case_ids"]
    assert test_cases and {r["case_id"] for r in rows} == set(test_cases)
    model, config, _ = load_finetuned(workspace["resampled"])
    assert config.spacing == (9.0, 9.0)
    checked = 0
    for case_id in test_cases:
        image = load_image(workspace["cohort"] / "imagesTr" / f"{case_id}.nii.gz")
        truth = load_label(workspace["cohort"] / "labelsTr" / f"{case_id}.nii.gz", BTCV, reference=image)
        predicted, _ = predict_volume(model, image, config)
        assert predicted.shape == image.shape
        metrics = organ_metrics(predicted, truth.array, BTCV, spacing=image.spacing)
        for row in (r for r in rows if r["case_id"] == case_id):
            expected = float(row["dice"])
            got = metrics[row["organ"]]["dice"]
            assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected, abs=1e-6), (case_id, row)
            checked += 1
    assert checked == len(rows)


def test_predict_on_a_2d_slice(workspace, tmp_path):
    files = predict_file(workspace["plain"], workspace["slice"], tmp_path / "slice_seg.nii.gz", device="cpu")
    source, written = nib.load(str(workspace["slice"])), nib.load(str(files.labels))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_predict_refuses_bad_inputs_clearly(workspace, tmp_path):
    garbage = tmp_path / "not_an_image.nii.gz"
    garbage.write_text("this is not a NIfTI file")
    with pytest.raises(ImageReadError, match="not_an_image.nii.gz"):
        predict_file(workspace["plain"], garbage, tmp_path / "a.nii.gz", device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        predict_file(workspace["plain"], tmp_path / "missing.nii.gz", tmp_path / "a.nii.gz", device="cpu")
    with pytest.raises(ValueError, match="'pretrain' checkpoint, not a fine-tuning one"):
        predict_file(workspace["pretrain"], workspace["scan"], tmp_path / "a.nii.gz", device="cpu")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt is a PyTorch file but not a mosmoskit checkpoint"):
        predict_file(tmp_path / "foreign.pt", workspace["scan"], tmp_path / "a.nii.gz", device="cpu")
    with pytest.raises(ValueError, match=r"must end with \.nii\.gz or \.nii"):
        predict_file(workspace["plain"], workspace["scan"], tmp_path / "seg.png", device="cpu")
    with pytest.raises(ValueError, match="fusion='none'.*no tag head"):
        predict_file(workspace["plain"], workspace["scan"], tmp_path / "a.nii.gz", attention_maps=True, device="cpu")
    existing = tmp_path / "taken.nii.gz"
    existing.write_bytes(b"")
    with pytest.raises(FileExistsError, match="taken.nii.gz exists"):
        predict_file(workspace["plain"], workspace["scan"], existing, overwrite=False, device="cpu")


def test_strict_spacing_refuses_a_scan_of_another_voxel_size(workspace, tmp_path):
    img = nib.load(str(workspace["scan"]))
    finer = nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([0.5, 0.5, 0.5, 1.0]))
    nib.save(finer, str(tmp_path / "fine.nii.gz"))
    args = _parse(predict_command, ["--checkpoint", str(workspace["plain"]), "--input", str(tmp_path / "fine.nii.gz"),
                                    "--output", str(tmp_path / "o.nii.gz"), "--strict-spacing", "--device", "cpu"])
    with pytest.raises(ValueError, match=r"voxel size \(6.0, 6.0\) mm .* trained on scans of \(12.0, 12.0\)"):
        predict_command.run(args)
    with pytest.warns(UserWarning, match="does not resample"):
        predict_file(workspace["plain"], tmp_path / "fine.nii.gz", tmp_path / "o.nii.gz", device="cpu")


def test_output_paths():
    assert output_paths("a/b/seg.nii.gz") == (Path("a/b/seg.nii.gz"), Path("a/b/seg.json"),
                                              Path("a/b/seg_attention.nii.gz"))
    assert output_paths("seg.nii")[2] == Path("seg_attention.nii")


# ---------------------------------------------------------------------------- real scans
@pytest.mark.shared_data
def test_predict_on_the_real_ct_keeps_its_shape_and_affine(workspace, totalseg, tmp_path):
    ct = totalseg / "ct_abdomen_3mm.nii.gz"
    files = predict_file(workspace["maps"], ct, tmp_path / "ct_seg.nii.gz", device="cpu")
    source, written = nib.load(str(ct)), nib.load(str(files.labels))
    assert written.shape == source.shape == (122, 101, 112)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    sidecar = json.loads(files.sidecar.read_text())
    assert sidecar["spacing_mm"] == pytest.approx([3.0, 3.0, 3.0]) and sidecar["resampled_to_mm"] == [12.0, 12.0]


@pytest.mark.shared_data
def test_predict_on_a_dicom_series_writes_on_its_grid(workspace, totalseg, tmp_path):
    folder = tmp_path / "dicom"
    shutil.copytree(totalseg / "ct_dicom", folder)
    files = predict_file(workspace["maps"], folder, tmp_path / "dicom_seg.nii.gz", device="cpu")
    series = load_image(folder)
    written = nib.load(str(files.labels))
    assert written.shape == series.original_shape == (512, 512, 20)
    np.testing.assert_allclose(written.affine, series.original_affine, atol=1e-4)


# --------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_prediction_matches_cpu_and_can_accumulate_on_cpu(workspace):
    model, config, _ = load_finetuned(workspace["maps"])
    volume = load_image(workspace["scan"])
    on_cpu, probs_cpu = predict_volume(model, volume, config, return_probabilities=True)
    model.to("cuda")
    for accumulate in (False, True):
        on_gpu, probs_gpu = predict_volume(model, volume, config, accumulate_on_cpu=accumulate,
                                           return_probabilities=True)
        np.testing.assert_allclose(probs_gpu, probs_cpu, atol=2e-2)
        assert np.mean(on_gpu == on_cpu) > 0.99
