"""Report-supervised pre-training: config, data, model, task, a short run that must learn, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mosmoskit.data.readers import load_image
from mosmoskit.labels import load_label_map
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import ImageReportDataset, center_crop_or_pad, shift_with_padding

BTCV = load_label_map("btcv")


def tiny_config(tmp_path, **overrides) -> PretrainConfig:
    """A 2D run that takes seconds: tiny text encoder, 64x64 slices, a handful of steps."""
    values = dict(
        output_dir=str(tmp_path / "run"), text_encoder="tiny", phantom_cases=6, phantom_slices_per_case=4,
        image_size=(64, 64), max_steps=4, batch_size=4, val_every=2, checkpoint_every=2, warmup_steps=1,
        embed_dim=32, tag_head_dim=32, max_shift=4, unmentioned="negative",
    )
    values.update(overrides)
    return PretrainConfig(**values)


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"spatial_dims": 3}, "image_encoder 'unet2d' is 2D but spatial_dims is 3"),
        ({"image_size": (60, 64)}, "divisible by 16"),
        ({"image_size": (64,)}, "must have 2 positive sizes"),
        ({"contrastive_weight": 0.0, "tag_loss_weight": 0.0}, "nothing to train"),
        ({"tag_loss": "focal"}, "tag_loss must be one of"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
        ({"batch_size": 1}, "batch_size >= 2"),
        ({"window": (300.0, 100.0)}, "low < high"),
        ({"phantom_shape": (64, 64, 32)}, "phantom_shape must be empty or 2 positive integers"),
        ({"phantom_shape": (64, 0)}, "phantom_shape must be empty or 2 positive integers"),
        ({"phantom_spacing": (3.0, -1.0)}, r"phantom_spacing must be empty or 2 positive numbers \(mm\)"),
        ({"phantom_spacing": (3.0,)}, r"phantom_spacing must be empty or 2 positive numbers \(mm\)"),
        ({"phantom_scan_range_prob": 0.5}, "3D phantom volumes only"),
        ({"phantom_scan_range_prob": 1.5}, r"phantom_scan_range_prob must be a probability in \[0, 1\]"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**overrides)


def test_config_3d_needs_patch_multiple():
    PretrainConfig(spatial_dims=3, image_encoder="vit3d", image_size=(96, 96, 64))
    with pytest.raises(ValueError, match="16-voxel patches"):
        PretrainConfig(spatial_dims=3, image_encoder="vit3d", image_size=(96, 96, 40))


# ---------------------------------------------------------------------------------------- data
def test_shift_with_padding_does_not_wrap():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = shift_with_padding(a, (1, -2), fill=-1)
    assert out[1, 0] == a[0, 2] and out[3, 1] == a[2, 3]
    assert (out[0] == -1).all() and (out[:, 2:] == -1).all()
    assert (shift_with_padding(a, (4, 0)) == 0).all()


def test_center_crop_or_pad():
    a = np.arange(6 * 4).reshape(6, 4)
    out = center_crop_or_pad(a, (4, 6), fill=-5)
    assert out.shape == (4, 6)
    assert (out[:, 0] == -5).all() and (out[:, 5] == -5).all()
    assert (out[:, 1:5] == a[1:5]).all()
    with pytest.raises(ValueError, match="cannot fit"):
        center_crop_or_pad(a, (4, 4, 4))


@pytest.fixture(scope="module")
def slice_cohort(tmp_path_factory):
    from mosmoskit.data.datalists import load_dataset
    from mosmoskit.data.phantom import generate_cohort

    root = generate_cohort(tmp_path_factory.mktemp("c") / "data", n=3, seed=3, spatial_dims=2, slices_per_case=3,
                           shape=(64, 64), spacing=(6.0, 6.0), progress=False)
    return load_dataset(root).with_reports


def test_dataset_items_tags_from_the_parser_and_seeded_shifts(slice_cohort):
    from mosmoskit.reports import extract_tags

    ds = ImageReportDataset(slice_cohort, BTCV, image_size=(64, 64), max_shift=5, seed=1, with_labels=True)
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["label"].shape == (64, 64)
    parsed = extract_tags(slice_cohort[0]["report"], BTCV)
    assert item["tags"].tolist() == [float(parsed[n]) for n in BTCV.foreground_names]
    # validation: the same shift every time; training: the shift follows the seed it is given
    assert torch.equal(ds[0]["image"], ds[0]["image"])
    ds.set_random_state(123)
    a = ds[0]["image"]
    ds.set_random_state(123)
    assert torch.equal(a, ds[0]["image"])
    ds.set_random_state(124)
    b = ds[0]["image"]
    assert ds.shift_of(0, 123) != ds.shift_of(0, 124) or torch.equal(a, b)


def test_dataset_rejects_empty_reports(slice_cohort):
    bad = [dict(slice_cohort[0], report="   ")]
    with pytest.raises(ValueError, match="report is missing or empty"):
        ImageReportDataset(bad, BTCV, image_size=(64, 64))
    with pytest.raises(ValueError, match="is 3D"):
        ImageReportDataset(slice_cohort[:1], BTCV, image_size=(64, 64, 64))


def test_dataset_reads_through_the_monai_chain_cached_or_not(slice_cohort):
    """cache_rate only decides what stays in memory: the items are the same, and equal the chain's output."""
    from mosmoskit.pretraining.data import pair_transforms

    kept = ImageReportDataset(slice_cohort, BTCV, image_size=(48, 80), with_labels=True, cache_rate=1.0)
    read = ImageReportDataset(slice_cohort, BTCV, image_size=(48, 80), with_labels=True, cache_rate=0.0)
    for i in range(len(kept)):
        assert torch.equal(kept[i]["image"], read[i]["image"]) and torch.equal(kept[i]["label"], read[i]["label"])
    chain = pair_transforms((48, 80), (-175.0, 250.0), BTCV)
    direct = chain({"image": slice_cohort[1]["image"], "label": slice_cohort[1]["label"]})
    np.testing.assert_array_equal(kept[1]["image"].numpy(), np.asarray(direct["image"]))
    # resampled to 12 mm: half the 6 mm grid, centred in the 48 x 80 input, padded with 0 (the window's low end)
    coarse = ImageReportDataset(slice_cohort[:1], BTCV, image_size=(48, 80), spacing=(12.0, 12.0), cache_rate=0.0)
    image = coarse[0]["image"][0].numpy()
    body = np.argwhere(image > 0)
    assert body[:, 0].max() - body[:, 0].min() < 33 and body[:, 1].max() - body[:, 1].min() < 33
    assert image[:, :8].max() == 0.0 and image[:, -8:].max() == 0.0


def test_whole_image_maps_come_at_the_pre_training_spacing_and_back(slice_cohort):
    """A model pre-trained at 12 mm sees a 6 mm image at 12 mm; its maps return on the 6 mm grid."""
    from mosmoskit.data.readers import load_image
    from mosmoskit.pretraining.maps import whole_image_maps

    class Recorder(torch.nn.Module):
        def attention_maps(self, image, normalize="max", scale_by_probability=False):
            self.seen = image
            k = len(BTCV.foreground_names)
            return image.repeat(1, k, 1, 1), torch.zeros(image.shape[0], k)

    image = load_image(slice_cohort[0]["image"])
    model = Recorder()
    at_12 = PretrainConfig(image_size=(64, 64), spacing=(12.0, 12.0), text_encoder="tiny")
    maps, _ = whole_image_maps(model, image.array, at_12, spacing=image.spacing)
    assert maps.shape == (len(BTCV.foreground_names), 64, 64)
    assert float(maps.amax(dim=(1, 2)).min()) == pytest.approx(1.0)
    # the 64 x 64 slice at 6 mm became 32 x 32 at 12 mm, centred in the 64 x 64 input
    resampled = np.argwhere(model.seen[0, 0].numpy() > 0)
    assert resampled.min() >= 16 and resampled.max() < 48
    whole, _ = whole_image_maps(model, image.array, at_12, spacing=(12.0, 12.0))  # already at that spacing
    as_is = np.argwhere(model.seen[0, 0].numpy() > 0)
    assert whole.shape == maps.shape and np.ptp(as_is[:, 0]) > 1.5 * np.ptp(resampled[:, 0])


# ---------------------------------------------------------------------------------------- model/task
def test_model_task_terms_and_text_cache(tmp_path, slice_cohort):
    from mosmoskit.pretraining.model import build_pretrain_model
    from mosmoskit.pretraining.task import PretrainTask

    cfg = tiny_config(tmp_path, text_freeze="all")
    model = build_pretrain_model(cfg, BTCV)
    task = PretrainTask(model, cfg, BTCV)
    ds = ImageReportDataset(slice_cohort[:4], BTCV, image_size=(64, 64))
    batch = {"image": torch.stack([ds[i]["image"] for i in range(4)]), "report": ds.reports[:4],
             "tags": torch.stack([ds[i]["tags"] for i in range(4)])}
    terms = task.step(batch)
    # the defaults: both objectives, the free pixel constraints and the equivariance term
    assert set(terms) == {"contrastive", "tags", "background", "affinity", "equivariance"}
    assert all(t.ndim == 0 for t in terms.values())
    sum(terms.values()).backward()
    assert model.image_encoder.conv_0.conv_0.conv.weight.grad is not None
    assert model.contrastive_loss.log_logit_scale.grad is not None
    assert len(model._text_cache) == len(set(ds.reports[:4]))  # frozen text encoder: cached
    maps, logits = model.attention_maps(batch["image"])
    assert maps.shape == (4, 13, 64, 64) and logits.shape == (4, 13)
    assert torch.allclose(maps.flatten(2).amax(2), torch.ones(4, 13))

    only_tags = PretrainTask(build_pretrain_model(tiny_config(tmp_path, contrastive_weight=0.0), BTCV),
                             tiny_config(tmp_path, contrastive_weight=0.0), BTCV)
    assert set(only_tags.step(batch)) == {"tags", "background", "affinity", "equivariance"}


# ---------------------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_short_run_learns_tags_and_writes_everything(tmp_path):
    """40 steps on 2D phantom slices: tag AUROC (against what the slices hold) must clearly beat 0.5.

    On the generator's default cohort, whose tags a slice's level largely tells: 40 steps learn them
    (AUROC 0.77), while the enriched default cohort needs the organs themselves and hundreds of steps
    (0.56 after 40 and 0.53 after 120 at this size); tests/test_maps_beat_prior.py trains that one."""
    from mosmoskit.pretraining.run import attention_maps_from_checkpoint, load_pretrained, run_pretraining

    cfg = tiny_config(tmp_path, phantom_preset="default", phantom_cases=10, phantom_slices_per_case=6, max_steps=40,
                      batch_size=8,
                      val_every=40, checkpoint_every=40, lr=2e-3, warmup_steps=4)
    result = run_pretraining(cfg, progress=False)
    m = result.metrics
    assert m["tag_auroc_vs_mask/mean"] > 0.75, m
    assert np.isfinite(m["retrieval/image_to_report_recall@1"])
    for name in ("metrics.json", "config.json", "label_map.json", "history.jsonl", "last.pt"):
        assert (result.output_dir / name).exists(), name
    assert json.loads((result.output_dir / "metrics.json").read_text())["train/steps"] == 40
    terms = {k for row in result.history if row["split"] == "train" for k in row}
    assert {"contrastive", "tags", "loss", "lr", "temperature"} <= terms

    # the checkpoint alone rebuilds the image side; maps come back at the image's resolution
    model, config, label_map = load_pretrained(result.checkpoint)
    assert config == cfg and label_map.names == BTCV.names
    # tags no training report calls absent were left out, and the checkpoint remembers which
    from mosmoskit.pretraining.map_check import learned_tags

    assert m["tags/left_out_count"] == len(m["tags/left_out"])
    assert learned_tags(model, label_map) == [n for n in BTCV.foreground_names if n not in m["tags/left_out"]]
    volume = np.random.default_rng(0).normal(0, 100, size=(48, 40, 5)).astype(np.float32)
    maps, probs = attention_maps_from_checkpoint(result.checkpoint, volume)
    assert maps.shape == (13, 48, 40, 5) and set(probs) == set(BTCV.foreground_names)

    # a finished run is never overwritten silently
    with pytest.raises(FileExistsError, match="already holds a finished pre-training run"):
        run_pretraining(cfg, progress=False)


class _Crash(Exception):
    pass


class _CrashAfter:
    def __init__(self, step):
        self.step = step

    def on_train_start(self, trainer):
        pass

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise _Crash()

    def on_validation_end(self, trainer, step, metrics):
        pass

    def on_train_end(self, trainer, result):
        pass


def test_interrupted_pretraining_resumes_exactly(tmp_path):
    from mosmoskit.pretraining.run import run_pretraining
    from mosmoskit.training import load_checkpoint

    straight = run_pretraining(tiny_config(tmp_path / "a", max_steps=4, checkpoint_every=2, val_every=4), progress=False)
    cfg = tiny_config(tmp_path / "b", max_steps=4, checkpoint_every=2, val_every=4)
    with pytest.raises(_Crash):
        run_pretraining(cfg, callbacks=[_CrashAfter(3)], progress=False)  # dies after the step-2 checkpoint
    resumed = run_pretraining(cfg, progress=False)
    a = load_checkpoint(straight.checkpoint)["state"]["model"]
    b = load_checkpoint(resumed.checkpoint)["state"]["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_phantom_cohort_of_other_settings_is_regenerated_not_reused(tmp_path):
    """A run folder whose data/ holds a cohort generated with another grid (a re-run with overwrite, or new
    phantom settings) gets the cohort its config asks for; the same settings reuse it untouched."""
    from mosmoskit.pretraining.data import prepare_pretraining_data

    def first_image(shape):
        _, split = prepare_pretraining_data("phantom", tmp_path, BTCV, 3, 0.5, seed=0, phantom_cases=2,
                                            phantom_shape=shape, phantom_spacing=(16.0, 16.0, 20.0), progress=False)
        return load_image(split["train"][0]["image"])

    assert first_image((24, 24, 16)).array.shape == (24, 24, 16)
    dataset_json = tmp_path / "data" / "dataset.json"
    stamp = dataset_json.stat().st_mtime_ns
    assert first_image((24, 24, 16)).array.shape == (24, 24, 16)
    assert dataset_json.stat().st_mtime_ns == stamp  # same settings: reused
    assert first_image((32, 32, 16)).array.shape == (32, 32, 16)  # another grid: regenerated


def test_limited_range_phantom_cohort_for_3d_pretraining(tmp_path):
    """phantom_scan_range_prob reaches the generator (recorded in dataset.json, cohort regenerated when
    it changes), its reports' out-of-view organs are parsed as absent, and the data summary a notebook
    prints describes the run's own cohort instead of regenerating another one."""
    from mosmoskit.pretraining.data import prepare_pretraining_data
    from mosmoskit.pretraining.report import describe_pretraining_data

    def pairs(prob):
        return prepare_pretraining_data("phantom", tmp_path, BTCV, 3, 0.25, seed=0, phantom_cases=4,
                                        phantom_shape=(24, 24, 16), phantom_spacing=(16.0, 16.0, 20.0),
                                        phantom_scan_range_prob=prob, progress=False)[1]

    dataset_json = tmp_path / "data" / "dataset.json"
    pairs(0.0)
    assert json.loads(dataset_json.read_text())["generator"]["config"]["scan_range_prob"] == 0.0
    split = pairs(1.0)
    assert json.loads(dataset_json.read_text())["generator"]["config"]["scan_range_prob"] == 1.0
    cases = split["train"] + split["val"]
    assert all(len(c["scan_range_mm"]) == 2 for c in cases)
    dataset = ImageReportDataset(cases, BTCV, (24, 24, 16))
    out_of_view = [(i, o) for i, c in enumerate(cases) for o, f in c["findings"].items()
                   if f["absence"] == "out_of_range" and f["mentioned"]]
    assert out_of_view, "no organ reported outside the field of view in 4 limited scans"
    for i, organ in out_of_view:
        assert dataset.tags[i, BTCV.foreground_names.index(organ)] == 0

    stamp = dataset_json.stat().st_mtime_ns
    cfg = tiny_config(tmp_path / "unused", spatial_dims=3, image_encoder="vit3d", image_size=(32, 32, 16),
                      phantom_cases=4, phantom_shape=(24, 24, 16), phantom_spacing=(16.0, 16.0, 20.0),
                      phantom_scan_range_prob=1.0, val_fraction=0.25, seed=0, output_dir=str(tmp_path))
    assert "image-report pairs" in describe_pretraining_data(cfg, progress=False)
    assert dataset_json.stat().st_mtime_ns == stamp  # the run's cohort, not a default-settings one


def test_pointing_at_tolerances_rescores_the_held_out_pairs_of_a_finished_run(tmp_path, capsys):
    """The re-scoring rebuilds exactly the held-out pairs and baseline of the run (its strict baseline
    equals metrics.json's), and a looser tolerance can only raise a hit rate."""
    from mosmoskit.pretraining.run import pointing_at_tolerances, run_pretraining

    result = run_pretraining(tiny_config(tmp_path, max_steps=2, val_every=2, checkpoint_every=2), progress=False)
    rows = pointing_at_tolerances(result.output_dir)
    assert [r["tolerance"] for r in rows] == [0, 2, 4]  # the U-Net's tag features have stride 4 here
    assert rows[0]["baseline"] == pytest.approx(result.metrics["pointing_baseline/mean_large_organs"])
    assert rows[0]["n_pairs"] == result.metrics["n_pairs"]
    for who in ("maps", "baseline"):
        rates = [r[who] for r in rows]
        assert all(0.0 <= v <= 1.0 for v in rates) and rates == sorted(rates)
    assert result.metrics["pointing_baseline_within_cell/mean_large_organs"] == pytest.approx(rows[-1]["baseline"])

    # scripts/pointing_tolerance.py prints the same rows as a table, and refuses a folder without a checkpoint
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "pointing_tolerance.py"
    spec = importlib.util.spec_from_file_location("pointing_tolerance", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(result.output_dir), "--tolerance", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2] == (f"| {result.output_dir.name} | unet2d | 0 | {rows[0]['maps']:.2f} | {rows[0]['baseline']:.2f} | "
                        f"{rows[0]['maps'] - rows[0]['baseline']:+.2f} | {rows[0]['n_pairs']} |")
    assert module.main([str(tmp_path)]) == 2


@pytest.mark.slow
def test_3d_pretraining_runs_end_to_end(tmp_path):
    from mosmoskit.pretraining.run import attention_maps_from_checkpoint, run_pretraining

    # The phantom grid equals the ViT input, so the network sees the whole body its report describes.
    cfg = tiny_config(tmp_path, spatial_dims=3, image_encoder="vit3d", image_size=(32, 32, 32), encoder_width=32,
                      phantom_cases=5, batch_size=2, max_steps=2, val_every=2, checkpoint_every=2, max_shift=2,
                      phantom_shape=(32, 32, 32), phantom_spacing=(12.0, 12.0, 10.0))
    result = run_pretraining(cfg, progress=False)
    image = load_image(next((tmp_path / "run" / "data" / "imagesTr").glob("*.nii.gz")))
    assert image.array.shape == (32, 32, 32)
    assert np.allclose(image.spacing, (12.0, 12.0, 10.0))
    assert np.isfinite(result.metrics["retrieval/image_to_report_recall@1"])
    maps, _ = attention_maps_from_checkpoint(result.checkpoint, np.zeros((40, 36, 30), dtype=np.float32))
    assert maps.shape == (13, 40, 36, 30)


def test_evidence_readout_logits_are_log_mean_exp_of_the_map_scores():
    import math

    from mosmoskit.models import TagHead

    torch.manual_seed(0)
    head = TagHead(num_tags=3, feature_dim=8, embed_dim=16, readout="evidence")
    features = torch.randn(2, 6 * 5, 8)
    out = head(features, grid=(6, 5))
    assert out.maps.shape == (2, 3, 6, 5)
    assert torch.allclose(out.attention.sum(-1), torch.ones(2, 3), atol=1e-6)
    # recompute the scores by hand: the attention is their softmax, the logit their log-mean-exp
    from mosmoskit.models.tag_head import sincos_position_encoding

    memory = head.input_norm(head.input_proj(features))
    keys = memory + sincos_position_encoding((6, 5), 16, memory.device, memory.dtype)
    scores = torch.einsum("ke,bne->bkn", head.evidence_query(head.tag_queries()), head.evidence_key(keys)) / 4.0
    assert torch.allclose(out.attention, scores.softmax(-1), atol=1e-6)
    expected = torch.logsumexp(scores, -1) - math.log(30) + head.evidence_bias
    assert torch.allclose(out.logits, expected, atol=1e-5)
    # a tag can only become "present" by raising some pixel's score: the logit is bounded by the max score
    assert (out.logits - head.evidence_bias <= scores.amax(-1) + 1e-6).all()
    with pytest.raises(ValueError, match="readout must be one of"):
        TagHead(num_tags=3, feature_dim=8, readout="mean")
