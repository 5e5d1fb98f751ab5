"""Fine-tuning: config validation, the label-scarce split, the task, every network x fusion mode on
a tiny phantom, checkpoints that rebuild the model, metrics in the original image space, and
whole-scan inference (sliding window, 2D on volumes, resampling, spacing checks)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mosmoskit.config import config_from_dict, config_to_dict
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import Volume, load_image
from mosmoskit.evaluation.segmentation import organ_metrics
from mosmoskit.finetuning import (
    FinetuneConfig,
    SegmentationTask,
    load_finetuned,
    per_class_dice,
    prepare_finetuning_data,
    read_finetune_checkpoint,
    run_finetuning,
    variant_name,
)
from mosmoskit.finetuning.data import canonical_spacing, ensure_phantom_cohort
from mosmoskit.finetuning.run import read_pretrained
from mosmoskit.inference import check_spacing, predict_volume
from mosmoskit.labels import load_label_map
from mosmoskit.models import build_segmenter
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.model import build_pretrain_model
from mosmoskit.training.checkpoint import load_checkpoint, save_checkpoint

BTCV = load_label_map("btcv")
# LPS: the first two voxel axes run towards the patient's left and posterior (as DICOM exports do).
LPS_FLIP = np.array([[0, -1], [1, -1], [2, 1]])


# ------------------------------------------------------------------------------------ helpers
def write_lps_copy(src: Path, dst: Path) -> Path:
    """Copy a phantom data folder, rewriting every NIfTI in LPS orientation (same anatomy, same world)."""
    shutil.copytree(src, dst)
    for path in sorted(dst.glob("*Tr/*.nii.gz")):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        ornt = LPS_FLIP[: data.ndim]
        flipped = nib.orientations.apply_orientation(data, ornt)
        nd = data.ndim
        m = nib.orientations.inv_ornt_aff(ornt, data.shape)  # flipped voxel -> original voxel, (nd+1, nd+1)
        to_original = np.eye(4)
        to_original[:nd, :nd], to_original[:nd, 3] = m[:nd, :nd], m[:nd, nd]
        affine = img.affine @ to_original
        out = nib.Nifti1Image(np.ascontiguousarray(flipped).astype(data.dtype), affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        nib.save(out, str(path))
    return dst


def tiny_pretrain_checkpoint(path: Path, spatial_dims: int, label_map: str = "btcv") -> Path:
    """A pre-training checkpoint of a tiny, untrained MOSMOS model (what fine-tuning reads)."""
    if spatial_dims == 2:
        config = PretrainConfig(image_size=(64, 64), encoder_width=8, tag_head_dim=16, embed_dim=16,
                                text_encoder="tiny", label_map=label_map)
    else:
        config = PretrainConfig(spatial_dims=3, image_encoder="vit3d", image_size=(32, 32, 32), encoder_width=32,
                                tag_head_dim=16, embed_dim=16, text_encoder="tiny", label_map=label_map)
    torch.manual_seed(0)
    model = build_pretrain_model(config, load_label_map(label_map), with_text_encoder=False)
    return save_checkpoint(path, state={"model": model.state_dict()}, config=config_to_dict(config),
                           label_map=load_label_map(label_map), kind="pretrain")


def tiny_config(root: Path, dims: int, dataset: Path, **overrides) -> FinetuneConfig:
    """Fine-tuning settings that train in seconds on a CPU."""
    common = dict(dataset=str(dataset), test_fraction=0.25, max_steps=2, val_every=2, checkpoint_every=2,
                  batch_size=1, crops_per_case=1, val_max_cases=1, warmup_steps=0, device="cpu",
                  output_dir=str(root), sw_batch_size=2)
    if dims == 2:
        common.update(spatial_dims=2, roi_size=(32, 32))
    else:
        common.update(spatial_dims=3, roi_size=(32, 32, 32), decoder_width=4, lr=1e-4)
    common.update(overrides)
    if not common.get("pretrained_checkpoint"):
        common.setdefault("encoder_width", 8 if dims == 2 else 32)
    return FinetuneConfig(**common)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run faster on one thread; on a busy shared CPU, several threads per process
    contend and made these tests about 20 times slower (measured: 52 s vs 2 s for 25 steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[int, Path]:
    """Tiny phantom cohorts stored in LPS orientation: 4 volumes (3D) and 4 patients x 2 slices (2D)."""
    base = tmp_path_factory.mktemp("cohorts")
    ras3 = generate_cohort(base / "ras3", n=4, seed=3, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0), progress=False)
    ras2 = generate_cohort(base / "ras2", n=4, seed=3, shape=(32, 32), spacing=(12.0, 12.0), spatial_dims=2,
                           slices_per_case=2, progress=False)
    return {3: write_lps_copy(ras3, base / "lps3"), 2: write_lps_copy(ras2, base / "lps2")}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("pretrained")
    return {2: tiny_pretrain_checkpoint(base / "p2.pt", 2), 3: tiny_pretrain_checkpoint(base / "p3.pt", 3)}


# ------------------------------------------------------------------------------------- config
def test_config_defaults_roundtrip_and_list_coercion():
    config = FinetuneConfig()
    assert config_from_dict(FinetuneConfig, config_to_dict(config)) == config
    again = FinetuneConfig(spatial_dims=3, roi_size=[32, 32, 32], spacing=[1.5, 1.5, 2.0])
    assert again.roi_size == (32, 32, 32) and again.spacing == (1.5, 1.5, 2.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"label_fraction": 0.0}, r"label_fraction must be in \(0, 1\]"),
        ({"label_fraction": 1.5}, r"label_fraction must be in \(0, 1\]"),
        ({"fusion": "input"}, "set pretrained_checkpoint"),
        ({"fusion": "sideways", "pretrained_checkpoint": "p.pt"}, "fusion must be one of"),
        ({"roi_size": (64, 64, 64)}, "roi_size must have 2 positive sizes"),
        ({"roi_size": (60, 64)}, "divisible by 16"),
        ({"spatial_dims": 3}, "roi_size must have 3"),
        ({"tune_tag_head": True}, "tune_tag_head=True needs fusion"),
        ({"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
        ({"test_fraction": 0.6, "val_fraction": 0.5}, "must leave training"),
        ({"spacing": (1.0,)}, "spacing must be empty or 2 positive numbers"),
        ({"window": (100.0, -100.0)}, "low < high"),
        ({"sw_overlap": 1.0}, r"sw_overlap must be in \[0, 1\)"),
        ({"max_steps": 0}, "max_steps must be an integer >= 1"),
        ({"encoder_lr_scale": 0.0}, "encoder_lr_scale"),
        ({"encoder_lr_scale": -0.1}, "encoder_lr_scale"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**fields)


def test_variant_names_cover_the_baselines():
    assert variant_name(FinetuneConfig()) == "random_init"
    assert variant_name(FinetuneConfig(pretrained_checkpoint="p.pt", init_encoder=False)) == "random_init"
    assert variant_name(FinetuneConfig(pretrained_checkpoint="p.pt")) == "pretrained_encoder"
    assert variant_name(FinetuneConfig(pretrained_checkpoint="p.pt", fusion="input", init_encoder=False)) == "maps_only"
    assert variant_name(FinetuneConfig(pretrained_checkpoint="p.pt", fusion="decoder")) == "mosmos"


# ------------------------------------------------------------------------------ data and split
@pytest.fixture(scope="module")
def many_patients(tmp_path_factory) -> Path:
    """10 patients x 2 axial slices, tiny grid: enough patients for fractions to differ."""
    return generate_cohort(tmp_path_factory.mktemp("many") / "c", n=10, seed=5, shape=(32, 32), spacing=(10.0, 10.0),
                           spatial_dims=2, slices_per_case=2, progress=False)


def _split(folder: Path, tmp_path: Path, **fields):
    fields.setdefault("test_fraction", 0.2)
    config = FinetuneConfig(dataset=str(folder), roi_size=(32, 32), output_dir=str(tmp_path), **fields)
    return prepare_finetuning_data(config, progress=False).split


def test_split_test_set_fixed_and_subsets_nested(many_patients, tmp_path):
    reference = _split(many_patients, tmp_path, label_fraction=1.0, seed=0)
    assert len(reference.patients("test")) == 2 and len(reference.test) == 4  # round(0.2 * 10) patients, 2 slices each
    for seed in (0, 1, 2):
        subsets = [_split(many_patients, tmp_path, label_fraction=f, seed=seed) for f in (0.01, 0.3, 0.6, 1.0)]
        for split in subsets:
            assert split.test == reference.test                           # one test set for the whole study
            assert split.train_pool == reference.train_pool
            assert not set(split.val) & set(split.test)                   # validation never touches the test set
            assert set(split.val) <= set(split.train_pool)
        sizes = [len(s.patients("labelled")) for s in subsets]
        assert sizes == [1, 3, 5, 8]                                      # ceil(f * 8), at least one patient
        for small, large in zip(subsets, subsets[1:]):
            assert set(small.labelled) <= set(large.labelled)             # nested
        for s in subsets:  # both slices of a labelled patient are labelled
            assert len(s.labelled) == 2 * len(s.patients("labelled"))
    by_count = _split(many_patients, tmp_path, n_labelled=3, seed=1)
    assert len(by_count.patients("labelled")) == 3 and by_count.test == reference.test
    other_seed = [_split(many_patients, tmp_path, label_fraction=0.3, seed=s).labelled for s in range(4)]
    assert len(set(other_seed)) > 1  # seeds draw different subsets


def test_split_with_validation_fraction_keeps_the_test_set(many_patients, tmp_path):
    plain = _split(many_patients, tmp_path)
    with_val = _split(many_patients, tmp_path, val_fraction=0.2)
    assert with_val.test == plain.test
    assert len(with_val.patients("val")) == 2 and not set(with_val.val) & set(with_val.train_pool)


def test_phantom_cohort_reused_only_when_settings_match(tmp_path):
    config = FinetuneConfig(phantom_cases=2, phantom_slices_per_case=1, phantom_shape=(32, 32),
                            phantom_spacing=(10.0, 10.0), roi_size=(32, 32), output_dir=str(tmp_path))
    root = ensure_phantom_cohort(tmp_path / "data", config, progress=False)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    ensure_phantom_cohort(tmp_path / "data", config, progress=False)
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    bigger = FinetuneConfig(**{**config_to_dict(config), "phantom_cases": 3})
    ensure_phantom_cohort(tmp_path / "data", bigger, progress=False)
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 3


def test_dataset_errors_are_clear(tmp_path, cohorts):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        prepare_finetuning_data(FinetuneConfig(dataset=str(tmp_path / "nowhere"), output_dir=str(tmp_path)))
    wrong_dims = FinetuneConfig(dataset=str(cohorts[3]), roi_size=(64, 64), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="3D image but spatial_dims=2"):
        prepare_finetuning_data(wrong_dims, progress=False)


def test_canonical_spacing_reads_lps_headers(cohorts):
    path = sorted((cohorts[3] / "imagesTr").glob("*.nii.gz"))[0]
    assert canonical_spacing(path, 3) == pytest.approx(load_image(path).spacing)


# ---------------------------------------------------------------------------------------- task
def test_per_class_dice_matches_organ_metrics():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(12, 10, 6))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, size=gt.shape))
    pred[pred == 3] = 0  # organ 3 missed entirely
    gt[gt == 2] = 1      # organ 2 only in the prediction
    dice = per_class_dice(torch.from_numpy(pred), torch.from_numpy(gt), BTCV.num_classes).numpy()
    reference = organ_metrics(pred, gt, BTCV, spacing=(1.0, 1.0, 1.0))
    for k, name in enumerate(BTCV.foreground_names):
        expected = reference[name]["dice"]
        assert (math.isnan(expected) and math.isnan(dice[k])) or dice[k] == pytest.approx(expected)
    assert dice[2] == 0.0 and dice[1] == 0.0 and math.isnan(dice[5])


def test_task_step_returns_named_terms_and_validates():
    from mosmoskit.models import build_segmenter

    model, _ = build_segmenter(2, BTCV, (32, 32), segmenter_options={"features": (4, 4, 8, 8, 16, 4)})
    task = SegmentationTask(model, BTCV, (32, 32))
    label = torch.zeros(2, 1, 32, 32)
    label[:, :, 8:20, 8:20] = 1
    terms = task.step({"image": torch.rand(2, 1, 32, 32), "label": label})
    assert sorted(terms) == ["ce", "dice"] and all(t.requires_grad for t in terms.values())
    model.eval()
    with torch.no_grad():
        # an organ in the ground truth makes the case count whatever the untrained model predicts
        val_label = torch.zeros(1, 1, 48, 40)
        val_label[..., 10:30, 10:30] = 1
        metrics = task.validate([{"image": torch.rand(1, 1, 48, 40), "label": val_label}])
    assert set(metrics) == {"val_dice", "val_cases"} and metrics["val_cases"] == 1.0


@pytest.mark.parametrize("dims", [2, 3])
def test_encoder_lr_scale_puts_exactly_the_encoder_in_its_own_group(dims, tmp_path):
    """The slower group holds the segmenter's own encoder (what init_encoder loads) and nothing else;
    at scale 1 the optimizer sees one plain list, as before the option existed."""
    from mosmoskit.models import build_segmenter

    roi = (32, 32) if dims == 2 else (32, 32, 32)
    options = {"features": (4, 4, 8, 8, 16, 4)} if dims == 2 else {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2,
                                                                      "feature_size": 4}
    model, _ = build_segmenter(dims, BTCV, roi, segmenter_options=options)
    assert SegmentationTask(model, BTCV, roi).parameters_for_optimizer() == list(model.parameters())
    rest, encoder = SegmentationTask(model, BTCV, roi, encoder_lr_scale=0.1).parameters_for_optimizer()
    assert encoder["lr_scale"] == 0.1 and "lr_scale" not in rest
    blocks = ("net.vit.",) if dims == 3 else tuple(f"net.{b}." for b in ("conv_0", "down_1", "down_2", "down_3", "down_4"))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in encoder["params"]} == {n for n in names.values() if n.startswith(blocks)}
    assert len(rest["params"]) + len(encoder["params"]) == len(list(model.parameters()))

    from mosmoskit.training.loop import Trainer, TrainerConfig

    trainer = Trainer(SegmentationTask(model, BTCV, roi, encoder_lr_scale=0.1),
                      TrainerConfig(max_steps=1, lr=1e-3, progress=False, device="cpu", output_dir=str(tmp_path)),
                      train_dataset=[None], batch_size=1)
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] if "initial_lr" in g else g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])


# --------------------------------------------------------------------------- pre-trained input
def test_pretrained_checkpoint_of_other_dims_or_labels_is_refused(tmp_path, pretrained):
    config3 = FinetuneConfig(spatial_dims=3, roi_size=(32, 32, 32), pretrained_checkpoint=str(pretrained[2]),
                             fusion="input")
    with pytest.raises(ValueError, match=r"holds a 2D encoder .* spatial_dims=3"):
        read_pretrained(pretrained[2], config3, BTCV)
    amos = tiny_pretrain_checkpoint(tmp_path / "amos.pt", 2, label_map="amos")
    config2 = FinetuneConfig(roi_size=(64, 64), pretrained_checkpoint=str(amos), fusion="decoder")
    with pytest.raises(ValueError, match=r"label map 'amos' \(15 tags\) but the fine-tuning label map is 'btcv' \(13"):
        read_pretrained(amos, config2, BTCV)
    # encoder-only transfer does not need the same tags
    encoder_only = FinetuneConfig(roi_size=(64, 64), pretrained_checkpoint=str(amos))
    assert read_pretrained(amos, encoder_only, BTCV).config.label_map == "amos"
    # a study may name the width for random and pre-trained runs alike: the checkpoint's is accepted, another refused
    same_width = FinetuneConfig(roi_size=(64, 64), pretrained_checkpoint=str(amos), encoder_width=8)
    assert read_pretrained(amos, same_width, BTCV).config.encoder_width == 8
    with pytest.raises(ValueError, match=r"encoder_width=16 but pretrained_checkpoint .*amos.pt holds a 'unet2d' "
                                         r"encoder of width 8"):
        read_pretrained(amos, FinetuneConfig(roi_size=(64, 64), pretrained_checkpoint=str(amos), encoder_width=16),
                        BTCV)
    other_kind = save_checkpoint(tmp_path / "other.pt", state={"model": {}}, config={}, kind="finetune")
    with pytest.raises(ValueError, match="is a 'finetune' checkpoint; fine-tuning starts from a pre-training"):
        read_pretrained(other_kind, config2, BTCV)


def test_the_3d_unet_is_chosen_by_name_and_learns_at_the_unet_rate(tmp_path, cohorts):
    """segmenter="unet3d-seg": a 3D BasicUNet, trained, saved and rebuilt from its checkpoint."""
    assert FinetuneConfig(spatial_dims=3, roi_size=(32, 32, 32), segmenter="unet3d-seg").learning_rate == 3e-3
    assert FinetuneConfig(spatial_dims=3, roi_size=(32, 32, 32)).learning_rate == 4e-4  # UNETR
    with pytest.raises(ValueError, match="segmenter must be one of"):
        FinetuneConfig(segmenter="unet3d-seg")  # a 2D run
    config = tiny_config(tmp_path / "run", 3, cohorts[3], segmenter="unet3d-seg", encoder_width=4, lr=0.0)
    result = run_finetuning(config, progress=False)
    model, saved, _ = load_finetuned(result.checkpoint)
    assert saved.segmenter == "unet3d-seg" and type(model.net).__name__ == "BasicUNet"
    assert model.net.conv_0.conv_0.conv.weight.shape == (4, 1, 3, 3, 3)
    with pytest.raises(ValueError, match="is not a 2D segmenter"):
        build_segmenter(2, BTCV, (32, 32), segmenter="unet3d-seg")


# --------------------------------------------------------------------------------- the runs
RUNS = [
    pytest.param(2, "none", True, id="2d-random-init"),
    pytest.param(2, "input", True, id="2d-input-mosmos"),
    pytest.param(2, "decoder", False, id="2d-decoder-maps-only"),
    pytest.param(3, "none", True, id="3d-pretrained-encoder"),
    pytest.param(3, "input", True, id="3d-input-mosmos"),
    pytest.param(3, "decoder", True, id="3d-decoder-mosmos"),
]


@pytest.mark.slow
@pytest.mark.parametrize("dims, fusion, init_encoder", RUNS)
def test_each_network_and_fusion_mode_fine_tunes(tmp_path, cohorts, pretrained, dims, fusion, init_encoder):
    use_pretrained = fusion != "none" or dims == 3
    config = tiny_config(tmp_path / "run", dims, cohorts[dims], fusion=fusion, init_encoder=init_encoder,
                         pretrained_checkpoint=str(pretrained[dims]) if use_pretrained else "")
    from unittest import mock

    from mosmoskit.models.segmenters import MosmosSegmenter

    given, forward = [], MosmosSegmenter.forward

    def spy(self, image, maps=None):
        given.append(maps is not None)
        return forward(self, image, maps)

    with mock.patch.object(MosmosSegmenter, "forward", spy):
        result = run_finetuning(config, progress=False)
    # training steps, validation windows and test windows all fuse the whole image's maps, carried in
    assert given and all(given) == (fusion != "none") and any(given) == (fusion != "none")

    train = [h for h in result.history if h["split"] == "train"]
    assert len(train) == 2 and all(math.isfinite(h["dice"]) and math.isfinite(h["ce"]) for h in train)
    assert any(h["split"] == "val" and "val_dice" in h for h in result.history)
    parts = {p["name"] for p in result.load_report["parts"]}
    assert ("segmenter encoder" in parts) == (use_pretrained and init_encoder)
    assert ("tag head" in parts) == (fusion != "none")
    assert result.protocol["variant"] == variant_name(config)
    assert result.split["test"]["patients"] == 1 and result.split["labelled"]["patients"] == 3

    # metrics.json / metrics.csv / per-case results agree and name every organ
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    assert saved["protocol"]["test_cases"] == len(result.per_slice or result.per_case)
    assert set(saved["test"]["organs"]) == set(BTCV.foreground_names)
    rows = (result.output_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len(result.per_case) * len(BTCV.foreground_names)
    if dims == 2:
        # 2D is scored per patient (its slices pooled); the slices stay available
        assert saved["test_unit"].startswith("patient") and len(result.per_case) == 1
        assert len(result.per_slice) == saved["protocol"]["test_cases"] > 1
        slice_rows = (result.output_dir / "metrics_slices.csv").read_text().splitlines()
        assert len(slice_rows) == 1 + len(result.per_slice) * len(BTCV.foreground_names)
        assert saved["test_per_slice"]["n_cases"] == len(result.per_slice)
    else:
        assert saved["test_unit"] == "image" and not result.per_slice

    # the checkpoint alone rebuilds the trained model
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["kind"] == "finetune" and ckpt["config"]["finetune"]["fusion"] == fusion
    assert (ckpt["config"]["pretrain"] is not None) == use_pretrained
    model, loaded_config, label_map = load_finetuned(result.checkpoint)
    assert loaded_config == config and label_map.foreground_names == BTCV.foreground_names
    trained = read_finetune_checkpoint(result.checkpoint)
    assert trained.training_spacing == pytest.approx((10.0, 10.0, 10.0) if dims == 3 else (12.0, 12.0))
    x = torch.rand(1, 1, *config.roi_size)
    state = ckpt["state"]["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model(x).shape == (1, BTCV.num_classes, *config.roi_size)

    # metrics are those of the prediction files, read as stored (LPS) against the label files as stored
    for case_id, organs in (result.per_slice or result.per_case).items():
        pred_img = nib.load(str(result.output_dir / "predictions" / f"{case_id}.nii.gz"))
        label_img = nib.load(str(cohorts[dims] / "labelsTr" / f"{case_id}.nii.gz"))
        assert pred_img.shape == label_img.shape
        np.testing.assert_allclose(pred_img.affine, label_img.affine, atol=1e-5)
        assert pred_img.affine[0, 0] < 0 and pred_img.affine[1, 1] < 0  # still LPS, as the input
        stored = organ_metrics(np.asarray(pred_img.dataobj), np.asarray(label_img.dataobj), BTCV,
                               spacing=label_img.header.get_zooms()[:dims])
        for name in BTCV.foreground_names:
            assert stored[name]["status"] == organs[name]["status"]
            for key in ("dice", "hd95"):
                a, b = stored[name][key], organs[name][key]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_finished_run_is_not_reused_silently(tmp_path, cohorts):
    config = tiny_config(tmp_path / "run", 2, cohorts[2], max_steps=1, val_every=0, save_predictions=False)
    run_finetuning(config, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_finetuning(config, progress=False)
    again = run_finetuning(FinetuneConfig(**{**config_to_dict(config), "overwrite": True}), progress=False)
    assert again.protocol["max_steps"] == 1


@pytest.mark.slow
def test_short_training_learns_the_big_organs(tmp_path, cohorts):
    """Random-init 2D U-Net, 60 CPU steps: cross-entropy falls and the liver is found (after one
    step the network predicts no liver at all: Dice 0; after 25 steps 0.46, after 60 0.63 when
    this test was written)."""
    config = tiny_config(tmp_path / "run", 2, cohorts[2], max_steps=60, lr=3e-3, batch_size=2, val_every=0,
                         save_predictions=False)
    result = run_finetuning(config, progress=False)
    ce = [h["ce"] for h in result.history if h["split"] == "train"]
    assert np.mean(ce[-5:]) < 0.9 * np.mean(ce[:5]), f"cross-entropy {ce[:5]} ... {ce[-5:]}"
    liver = result.metrics["organs"]["liver"]["dice_mean"]
    assert liver > 0.45, f"liver Dice {liver:.3f} after {config.max_steps} steps"


# ---------------------------------------------------------------------------------- inference
class Threshold(nn.Module):
    """A 1x1 'network': class 1 where the windowed intensity exceeds 0.5, class 0 elsewhere."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 40.0
            self.conv.bias.copy_(torch.tensor([0.0, -20.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _volume(array: np.ndarray, spacing) -> Volume:
    affine = np.diag([*spacing, *([1.0] * (3 - len(spacing))), 1.0])
    return Volume(array.astype(np.float32), affine, affine, array.shape, tuple(spacing), ("R", "A", "S")[: array.ndim],
                  "synthetic")


@pytest.mark.parametrize("dims, accumulate_on_cpu", [(3, False), (3, True), (2, False)])
def test_predict_volume_is_exact_for_a_pointwise_model(dims, accumulate_on_cpu):
    rng = np.random.default_rng(1)
    hu = rng.uniform(-300, 400, size=(45, 38, 21))
    config = FinetuneConfig(spatial_dims=dims, roi_size=(16,) * dims, window=(-100.0, 100.0), sw_overlap=0.5)
    labels, probs = predict_volume(Threshold(dims), _volume(hu, (2.0, 2.0, 3.0)), config,
                                   accumulate_on_cpu=accumulate_on_cpu, return_probabilities=True)
    assert labels.shape == hu.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (hu > 0.0).astype(np.uint8))  # windowed > 0.5  <=>  HU > 0
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    labels_only, none = predict_volume(Threshold(dims), _volume(hu, (2.0, 2.0, 3.0)), config,
                                       accumulate_on_cpu=accumulate_on_cpu)  # argmax per chunk, no probabilities
    assert none is None
    np.testing.assert_array_equal(labels_only, labels)


def test_predict_volume_resamples_to_the_training_spacing_and_back():
    hu = np.full((40, 30, 12), -500.0)
    hu[10:30, 8:22, 3:9] = 300.0  # a bright box, 20x14x6 voxels
    config = FinetuneConfig(spatial_dims=3, roi_size=(16, 16, 16), spacing=(4.0, 4.0, 4.0))
    labels, _ = predict_volume(Threshold(3), _volume(hu, (2.0, 2.0, 2.0)), config)
    assert labels.shape == hu.shape
    truth = (hu > 0).astype(np.uint8)
    dice = 2 * np.sum(labels & truth) / (labels.sum() + truth.sum())
    # MONAI's 4 mm grid keeps the first voxel centre, so each box edge falls halfway between a
    # sample inside and one outside: probability 0.5, a tie that argmax gives to background. The
    # 20 x 14 x 6 box comes back as 19 x 13 x 5 voxels, all inside it: Dice 0.85.
    assert dice > 0.8
    assert not np.any(labels & (1 - truth))


def test_spacing_mismatch_warns_raises_or_is_ignored(recwarn):
    volume = _volume(np.zeros((20, 20, 20)), (1.0, 1.0, 1.0))
    config = FinetuneConfig(spatial_dims=3, roi_size=(16, 16, 16))
    with pytest.warns(UserWarning, match=r"trained on scans of \(3.0, 3.0, 3.0\) mm .* set"):
        predict_volume(Threshold(3), volume, config, training_spacing=(3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="does not resample"):
        predict_volume(Threshold(3), volume, config, training_spacing=(3.0, 3.0, 3.0), on_spacing_mismatch="raise")
    recwarn.clear()
    predict_volume(Threshold(3), volume, config, training_spacing=(1.05, 1.0, 1.0))  # within 10 %
    predict_volume(Threshold(3), volume, config, training_spacing=(3.0, 3.0, 3.0), on_spacing_mismatch="ignore")
    assert not [w for w in recwarn if "spacing" in str(w.message) or "voxel size" in str(w.message)]
    assert check_spacing((1.0, 1.0), (1.0, 1.2), on_mismatch="ignore") is False
    with pytest.raises(ValueError, match="on_spacing_mismatch must be one of"):
        check_spacing((1.0,), (1.0,), on_mismatch="shout")


def test_predict_volume_refuses_a_2d_image_for_a_3d_model():
    config = FinetuneConfig(spatial_dims=3, roi_size=(16, 16, 16))
    with pytest.raises(ValueError, match="a 3D model cannot segment a 2D image"):
        predict_volume(Threshold(3), _volume(np.zeros((20, 20)), (1.0, 1.0)), config)
