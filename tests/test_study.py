"""The evidence study (mosmoskit.study, ``python -m mosmoskit study``): statistics, the results page, and a
tiny study run end to end through the notebooks with the settings of the shipped study file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mosmoskit import cli
from mosmoskit.study import (
    GENERATED_MARKER,
    RunResult,
    StudyAxes,
    aggregate,
    paired_gains,
    pretraining_summaries,
    write_study_report,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "phantom_label_fraction.yaml"


def _result(network, setting, fraction, seed, dice, hd95=10.0, organs=None):
    return RunResult(run=f"{network}-{setting}-{fraction}-{seed}", network=network, setting=setting, fraction=fraction,
                     seed=seed, mean_dice=dice, mean_hd95=hd95,
                     organs=organs or {"liver": {"dice": dice, "hd95": hd95}, "spleen": {"dice": math.nan, "hd95": math.nan}},
                     protocol={"labelled_patients": 2 if fraction < 1 else 16, "train_pool_patients": 16,
                               "test_patients": 8, "test_cases": 64, "phantom_seed": 1, "split_seed": 0},
                     seconds=3.0)


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    results = [_result("unet2d", "random", 0.125, s, d, hd95=h) for s, d, h in ((0, 0.2, 10.0), (1, 0.4, 20.0),
                                                                                (2, 0.6, math.nan))]
    agg = aggregate(results)[("unet2d", "random", 0.125)]
    assert agg["n"] == 3 and agg["seeds"] == [0, 1, 2]
    assert agg["dice"][0] == pytest.approx(0.4) and agg["dice"][1] == pytest.approx(0.2)  # std with ddof 1
    assert agg["hd95"] == pytest.approx((15.0, math.sqrt(50.0)))  # NaN (organ missed) left out
    assert math.isnan(agg["organs"]["spleen"]["dice"][0])
    single = aggregate(results[:1])[("unet2d", "random", 0.125)]
    assert single["dice"][0] == pytest.approx(0.2) and math.isnan(single["dice"][1])


def test_paired_gains_pair_runs_by_seed_and_skip_unpaired_seeds():
    results = [_result("unet2d", "random", 0.125, 0, 0.30), _result("unet2d", "random", 0.125, 1, 0.50),
               _result("unet2d", "mosmos_decoder", 0.125, 0, 0.40), _result("unet2d", "mosmos_decoder", 0.125, 1, 0.54),
               _result("unet2d", "mosmos_decoder", 0.125, 2, 0.90),  # no random run with seed 2: not paired
               _result("unetr3d", "random", 1.0, 0, 0.1)]
    gains = paired_gains(results, "random", "mosmos_decoder")
    assert set(gains) == {("unet2d", 0.125)}
    g = gains[("unet2d", 0.125)]
    assert g["n"] == 2 and g["per_seed"] == pytest.approx({0: 0.10, 1: 0.04})
    assert g["gain"] == pytest.approx(0.07) and g["std"] == pytest.approx(math.sqrt(2 * 0.03 ** 2))


def test_gains_are_written_as_signed_points_without_negative_zero():
    from mosmoskit.study import _points

    assert [_points(v) for v in (0.047, -0.0004, 0.0, -0.016, 0.00049)] == ["+4.7", "0.0", "0.0", "-1.6", "0.0"]


def test_study_axes_are_checked_against_the_grid():
    spec = yaml.safe_load(STUDY.read_text())
    axes = StudyAxes.from_spec(spec)
    assert (axes.baseline, axes.method) == ("random", "mosmos_decoder")
    with pytest.raises(ValueError, match="study method 'mosmos_x' is not a setting"):
        StudyAxes.from_spec({**spec, "study": {**spec["study"], "method": "mosmos_x"}})
    with pytest.raises(ValueError, match="seed axis '03.seedz' is not a grid axis"):
        StudyAxes.from_spec({**spec, "study": {**spec["study"], "seed": "03.seedz"}})
    with pytest.raises(ValueError, match="unknown key"):
        StudyAxes.from_spec({**spec, "study": {"netwrok": "network"}})


def test_shipped_study_covers_the_question(tmp_path):
    """The study file crosses 2 networks x 6 settings x >= 3 fractions x >= 3 seeds and shares pre-training."""
    from mosmoskit.notebook_runs import plan_sweep

    spec, _, plans = plan_sweep(STUDY, tmp_path)
    grid = spec["grid"]
    assert set(grid["network"]) == {"unet2d", "unetr3d"}
    assert list(grid["setting"]) == ["random", "contrastive", "tags", "mosmos", "mosmos_input", "mosmos_decoder"]
    assert len(grid["03.label_fraction"]) >= 3 and len(grid["03.seed"]) >= 3
    assert len(plans) == 2 * 6 * len(grid["03.label_fraction"]) * len(grid["03.seed"])
    pretrainings = {p.stage_dirs["02"] for p in plans if "02" in p.stage_dirs}
    assert len(pretrainings) == 2 * 3  # contrastive-only, tag-only, both: per network
    random_runs = [p for p in plans if p.point.labels["setting"] == "random"]
    assert all([s.key for s in p.stages] == ["03"] for p in random_runs)
    by_setting = {p.point.labels["setting"]: p for p in plans if p.point.labels["network"] == "unet2d"}
    assert by_setting["contrastive"].per_notebook["02"]["tag_loss_weight"] == 0.0
    assert by_setting["tags"].per_notebook["02"]["contrastive_weight"] == 0.0
    assert by_setting["mosmos_decoder"].per_notebook["03"]["fusion"] == "decoder"


def test_pretraining_summaries_read_each_shared_pretraining_once(tmp_path):
    """The page's pre-training table: one row per shared pre-training folder that finished, named by the
    settings that use it, with the numbers of its metrics.json; a broken file is named."""
    from mosmoskit.notebook_runs import plan_sweep
    from mosmoskit.study import _pretraining_table

    spec, _, plans = plan_sweep(STUDY, tmp_path)
    axes = StudyAxes.from_spec(spec)
    assert pretraining_summaries(plans, axes) == []  # nothing finished: no table
    assert _pretraining_table(plans, axes) == []
    full = next(p for p in plans if p.point.labels["network"] == "unetr3d" and p.point.labels["setting"] == "mosmos")
    folder = full.stage_dirs["02"]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"train/steps": 1500, "n_pairs": 8, "tag_auroc/mean": 0.6251,
                                                     "pointing/mean_large_organs": None}))
    rows = pretraining_summaries(plans, axes)
    assert len(rows) == 1 and rows[0]["network"] == "unetr3d"
    assert rows[0]["settings"] == ["mosmos", "mosmos_input", "mosmos_decoder"]
    row = next(line for line in _pretraining_table(plans, axes) if line.startswith("| unetr3d |"))
    assert row.startswith("| unetr3d | mosmos, mosmos_input, mosmos_decoder | 1500 | 8 | - | - | 0.63 | - |")
    # a within-cell hit rate is shown only beside the baseline at the same tolerance
    (folder / "metrics.json").write_text(json.dumps({"pointing_within_cell/mean_large_organs": 0.9}))
    assert pretraining_summaries(plans, axes)[0]["metrics"]["pointing_within_cell/mean_large_organs"] is None
    (folder / "metrics.json").write_text(json.dumps({"pointing_within_cell/mean_large_organs": 0.9,
                                                     "pointing_baseline_within_cell/mean_large_organs": 1.0}))
    row = next(line for line in _pretraining_table(plans, axes) if line.startswith("| unetr3d |"))
    assert row.endswith("| 0.90 | 1.00 |")
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics\.json is not valid JSON"):
        pretraining_summaries(plans, axes)


def test_results_page_is_never_written_over_a_hand_written_file(tmp_path):
    page = tmp_path / "results.md"
    page.write_text("# my notes\n")
    with pytest.raises(FileExistsError, match="was not written by the study runner"):
        write_study_report(STUDY, tmp_path / "study", page)
    assert page.read_text() == "# my notes\n"


TINY_02 = {"02.text_encoder": "tiny", "02.phantom_cases": 5, "02.phantom_slices_per_case": 2, "02.batch_size": 4,
           "02.max_steps": 3, "02.val_every": 3, "02.checkpoint_every": 3, "02.warmup_steps": 0}
TINY_03 = {"03.phantom_cases": 6, "03.test_fraction": 0.34, "03.max_steps": 2, "03.batch_size": 1,
           "03.crops_per_case": 1, "03.val_every": 0, "03.checkpoint_every": 2, "03.warmup_steps": 0,
           "03.sw_batch_size": 2, "03.save_predictions": False}


@pytest.mark.slow
def test_tiny_study_runs_resumes_and_writes_its_page(tmp_path, capsys):
    """The shipped study's settings (random, tag-only, full MOSMOS with decoder maps) on tiny networks, both
    dimensions, 2 fractions x 2 seeds; run in two parts (--where) like two processes would, then reported."""
    spec = yaml.safe_load(STUDY.read_text())
    spec["grid"]["setting"] = {k: spec["grid"]["setting"][k] for k in ("random", "tags", "mosmos_decoder")}
    spec["grid"]["03.label_fraction"] = [0.5, 1.0]
    spec["grid"]["03.seed"] = [0, 1]
    spec["parameters"] = {**TINY_02, **TINY_03, "device": "cpu"}
    spec["grid"]["network"] = {
        "unet2d": {"02.image_size": [64, 64], "03.phantom_slices_per_case": 2, "03.phantom_shape": [64, 64],
                   "03.phantom_spacing": [6.0, 6.0], "03.roi_size": [64, 64]},
        "unetr3d": {"02.spatial_dims": 3, "02.image_encoder": "vit3d", "02.image_size": [32, 32, 32],
                    "02.encoder_width": 32, "03.spatial_dims": 3, "03.encoder_width": 32, "03.decoder_width": 4,
                    "03.phantom_shape": [48, 48, 32], "03.phantom_spacing": [8.0, 8.0, 10.0],
                    "03.roi_size": [32, 32, 32]},
    }
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out, page = tmp_path / "study", tmp_path / "docs" / "results.md"

    assert cli.main(["study", "--spec", str(path), "--out", str(out), "--where", "network=unet2d"]) == 0
    first = capsys.readouterr().out
    assert "12 of 24 runs finished" in first
    assert cli.main(["study", "--spec", str(path), "--out", str(out), "--where", "network=unetr3d",
                     "--results", str(page)]) == 0
    assert "24 of 24 runs finished" in capsys.readouterr().out
    assert len(list((out / "stages").glob("02_pretrain_*"))) == 2 * 2  # tag-only and full, per network

    text = page.read_text()
    assert text.startswith(GENERATED_MARKER) and "24 of 24 runs finished." in text
    assert (page.parent / "images" / "results_dice_vs_fraction.png").stat().st_size > 10_000
    for network in ("unet2d", "unetr3d"):
        assert f"**{network}**, label fraction 0.5 (" in text
    # the page's numbers are the runs' numbers: recompute the 2D random mean at fraction 1 from metrics.json
    dice = []
    for seed in (0, 1):
        state = json.loads((out / "runs" / f"network-unet2d_label_fraction-1.0_setting-random_seed-{seed}"
                            / "pipeline.json").read_text())
        metrics = json.loads((Path(state["notebooks"]["03"]["output_dir"]) / "metrics.json").read_text())
        dice.append(metrics["test"]["mean_dice"])
    mean = sum(dice) / 2
    std = abs(dice[0] - dice[1]) / math.sqrt(2)
    row = next(line for line in text.splitlines() if line.startswith("| unet2d | random |"))
    assert f"{mean:.3f} ± {std:.3f}" in row
    assert "## Protocol card" in text and "Machine:" in text
    # the pre-training table holds the shared pre-training's own held-out numbers
    state = json.loads((out / "runs" / "network-unet2d_label_fraction-1.0_setting-tags_seed-0" / "pipeline.json")
                       .read_text())
    pretrained = json.loads((Path(state["notebooks"]["02"]["output_dir"]) / "metrics.json").read_text())
    auroc = pretrained["tag_auroc/mean"]
    row = next(line for line in text.splitlines() if line.startswith("| unet2d | tags |"))
    assert ("| - |" if auroc is None else f"| {auroc:.2f} |") in row

    # resuming runs nothing and gives the same page (but for the command line)
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ipynb")}
    assert cli.main(["study", "--spec", str(path), "--out", str(out), "--results", str(page)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.ipynb")} == stamp
    assert page.read_text().split("\n", 5)[5] == text.split("\n", 5)[5]  # all but the line with the command
