"""Notebook 03 (fine-tuning) and the tables and plots it shows.

The notebook's parameters must be ``FinetuneConfig``'s fields, it must refuse unknown parameters
and run end to end under papermill; its tables and plots are checked against hand-made summaries.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from notebook_checks import assert_thin_and_stripped, parameter_values  # noqa: E402
from mosmoskit.config import config_from_dict, config_to_dict  # noqa: E402
from mosmoskit.finetuning.config import FinetuneConfig  # noqa: E402
from mosmoskit.finetuning.report import (  # noqa: E402
    format_organ_metrics,
    format_protocol,
    format_split,
    prediction_examples,
    weak_points,
)
from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.viz.metrics import plot_organ_metrics, plot_prediction_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03_finetuning.ipynb"
FIELDS = [f.name for f in dataclasses.fields(FinetuneConfig)]
# The notebook may make these smaller than the dataclass so that it runs in minutes on a CPU.
SIZE_FIELDS = {"phantom_cases", "phantom_slices_per_case", "max_steps", "batch_size", "warmup_steps",
               "val_every", "checkpoint_every"}
# A run small enough for a test: 5 phantom patients x 2 slices at 64 x 64, a narrow U-Net, 4 updates.
TINY = dict(phantom_cases=5, phantom_slices_per_case=2, phantom_shape=[64, 64], phantom_spacing=[6.0, 6.0],
            roi_size=[64, 64], encoder_width=8, max_steps=4, batch_size=1, crops_per_case=1, val_every=2,
            checkpoint_every=2, warmup_steps=0, val_max_cases=1, sw_batch_size=2, device="cpu")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------------- notebook
def test_parameters_cell_names_equal_config_fields():
    from mosmoskit.notebooks import notebook_parameters

    assert list(notebook_parameters(NOTEBOOK)) == FIELDS


def test_parameters_cell_is_flat_typed_and_keeps_library_defaults():
    values = parameter_values(NOTEBOOK)
    defaults = config_to_dict(FinetuneConfig())
    changed = {k for k in FIELDS if values[k] != defaults[k]}
    assert changed <= SIZE_FIELDS, f"only sizes may differ from FinetuneConfig's defaults, got {changed - SIZE_FIELDS}"
    assert config_from_dict(FinetuneConfig, values) == FinetuneConfig(**{k: values[k] for k in FIELDS})


def test_notebook_is_thin_and_saved_without_outputs():
    assert_thin_and_stripped(NOTEBOOK)


def test_run_notebook_refuses_unknown_parameter(tmp_path):
    from mosmoskit.notebooks import run_notebook

    with pytest.raises(ValueError, match="unknown parameter.*label_fractoin"):
        run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {"label_fractoin": 0.1})
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.slow
def test_plain_papermill_run_refuses_unknown_parameter(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter 'label_fractoin'"):
        papermill.execute_notebook(
            str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
            parameters={"label_fractoin": 0.1, "output_dir": str(tmp_path / "run")}, progress_bar=False,
        )
    assert not (tmp_path / "run").exists(), "the notebook must stop before it generates data or trains"


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters(tmp_path):
    import nbformat

    from mosmoskit.notebooks import run_notebook

    run_dir = tmp_path / "run"
    executed = run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {**TINY, "output_dir": str(run_dir)}, cwd=tmp_path)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["train"]["steps"] == TINY["max_steps"]
    assert record["protocol"]["variant"] == "random_init" and record["protocol"]["label_fraction"] == 1.0
    assert set(record["test"]["organs"]) == set(load_label_map("btcv").foreground_names)
    test_ids = record["split"]["test"]["case_ids"]
    assert test_ids and sorted(p.name for p in (run_dir / "predictions").iterdir()) == sorted(
        f"{c}.nii.gz" for c in test_ids)
    outputs = [o for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Split (by patient)" in text and "Held-out test set, per organ" in text
    assert "random_init, label_fraction=1" in text and str(run_dir / "metrics.json") in text
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3, "expected the loss curve (drawn once, at the end), the Dice bars and the overlays"


# --------------------------------------------------------------------------------- fixtures
def _organ(dice, std, hd, n, missed=0, never=0):
    return {"dice_mean": dice, "dice_std": std, "n_dice": n, "hd95_mean": hd, "hd95_std": 1.0, "n_hd95": n,
            "n_present": n - missed, "n_missed": missed, "n_false_positive": 0, "n_absent_both": 0,
            "n_never_learned": never, "never_learned_cases": []}


SUMMARY = {
    "n_cases": 3,
    "organs": {"spleen": {**_organ(0.9, 0.05, 3.25, 3), "dice_ci95": [0.85, 0.95]},
               "liver": _organ(0.5, 0.25, 12.04, 3, missed=1, never=1),  # a record from before the intervals
               "gallbladder": _organ(float("nan"), float("nan"), float("nan"), 0)},
    "mean_dice": 0.7, "mean_dice_ci95": [0.6, 0.8], "mean_hd95": 7.645, "never_learned": 1, "never_learned_dice": 0.05,
}
SPLIT = {"train_pool": {"cases": 12, "patients": 6, "case_ids": []},
         "labelled": {"cases": 2, "patients": 1, "case_ids": ["p0_s0", "p0_s1"]},
         "val": {"cases": 1, "patients": 1, "case_ids": ["p0_s0"]},
         "test": {"cases": 4, "patients": 2, "case_ids": ["p7_s0", "p7_s1", "p8_s0", "p8_s1"]}}
PROTOCOL = {"variant": "mosmos", "label_fraction": 0.1, "n_labelled": None, "labelled_patients": 1,
            "labelled_cases": 2, "train_pool_patients": 6, "test_patients": 2, "test_cases": 4, "seed": 3,
            "split_seed": 0}


# ------------------------------------------------------------------------------------ tables
def test_format_organ_metrics_lists_every_organ_with_its_failures():
    lines = format_organ_metrics(SUMMARY).splitlines()
    assert lines[0] == "Held-out test set, per organ"
    assert lines[1].split() == ["organ", "Dice", "95%", "CI", "Dice", "std", "HD95", "mm", "cases", "missed", "never",
                                "learned"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:-1]}
    assert list(rows) == ["spleen", "liver", "gallbladder", "mean"]  # summary (label-map) order, mean last
    assert rows["spleen"] == ["0.900", "0.850-0.950", "0.050", "3.2", "3", "0", "0"]  # HD95 to 0.1 mm
    assert rows["liver"] == ["0.500", "n/a", "0.250", "12.0", "3", "1", "1"]
    assert rows["gallbladder"] == ["n/a", "n/a", "n/a", "n/a", "0", "0", "0"]
    assert rows["mean"] == ["0.700", "0.600-0.800", "7.6", "1"]
    assert lines[-1].startswith("3 test case(s); 95% CI: bootstrap over the test cases; never learned = in the "
                                "ground truth but Dice < 0.05")


def test_weak_points_names_the_worst_organs_and_how_they_fail():
    assert weak_points(SUMMARY) == ("Weakest organs: liver 0.50 (1 missed); spleen 0.90. Cases with an organ "
                                    "missed or predicted where there is none: 1.")
    hallucinated = {**SUMMARY, "organs": {**SUMMARY["organs"], "spleen": {
        **SUMMARY["organs"]["spleen"], "n_false_positive": 2, "n_never_learned": 1}}}
    text = weak_points(hallucinated, worst=1)
    assert text.startswith("Weakest organs: liver 0.50 (1 missed). Cases with an organ missed or predicted where "
                           "there is none: 3; a false positive is")
    assert weak_points({"organs": {"liver": SUMMARY["organs"]["gallbladder"]}}) == \
        "No organ could be scored on the test set."


def test_format_organ_metrics_reads_metrics_json_records_with_nulls():
    record = {"protocol": PROTOCOL, "test": json.loads(json.dumps(SUMMARY).replace("NaN", "null"))}
    assert format_organ_metrics(record) == format_organ_metrics(SUMMARY)
    with pytest.raises(ValueError, match="per-organ 'organs'.*got keys \\['train'\\]"):
        format_organ_metrics({"train": {}})


def test_format_protocol_states_the_fraction_and_both_seeds():
    assert format_protocol(PROTOCOL) == (
        "mosmos, label_fraction=0.1: 1 of 6 training patients labelled (2 cases), seed 3; "
        "test 2 patients (4 cases), split seed 0")
    assert format_protocol({**PROTOCOL, "n_labelled": 2, "label_fraction": None}).startswith("mosmos, n_labelled=2:")
    with pytest.raises(ValueError, match=r"lacks \['split_seed'\]"):
        format_protocol({k: v for k, v in PROTOCOL.items() if k != "split_seed"})


def test_format_split_counts_patients_and_cases_per_part():
    lines = format_split(SPLIT, PROTOCOL).splitlines()
    assert lines[0] == "Split (by patient)"
    rows = {line.split()[0]: line.split()[1:3] for line in lines[3:7]}
    assert rows == {"train_pool": ["6", "12"], "labelled": ["1", "2"], "val": ["1", "1"], "test": ["2", "4"]}
    assert "1 of 6 training patients labelled (17%)." in lines
    assert lines[-1] == "test cases: p7_s0, p7_s1, p8_s0, p8_s1"
    many = {**SPLIT, "test": {"cases": 10, "patients": 5, "case_ids": [f"c{i}" for i in range(10)]}}
    assert format_split(many).splitlines()[-1].endswith("c7 ... (+2)")
    with pytest.raises(ValueError, match=r"no part\(s\) \['val'\]"):
        format_split({k: v for k, v in SPLIT.items() if k != "val"})


# ------------------------------------------------------------------------------------- plots
def test_plot_organ_metrics_draws_one_bar_per_scored_organ():
    lm = load_label_map("btcv")
    ax = plot_organ_metrics(SUMMARY, label_map=lm)
    bars = ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([0.9, 0.5])  # gallbladder has no value: no bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["spleen", "liver", "gallbladder"]
    np.testing.assert_allclose(bars[1].get_facecolor()[:3], lm.colors()["liver"], rtol=1e-6)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n/a") == 1 and texts.count("!") == 1  # the never-learned liver is flagged
    guides = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert guides == {"mean 0.700": 0.7, "never learned < 0.05": 0.05}
    assert ax.get_title() == "Dice per organ (3 test cases)"


def test_plot_organ_metrics_hd95_and_bad_inputs():
    ax = plot_organ_metrics({"test": SUMMARY}, metric="hd95")
    assert [b.get_height() for b in ax.patches] == pytest.approx([3.25, 12.04])
    assert ax.get_ylabel() == "HD95 (mm)"
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_organ_metrics(SUMMARY, metric="iou")
    with pytest.raises(ValueError, match="per-organ 'organs'"):
        plot_organ_metrics({"organs": {}})


def test_plot_prediction_grid_shows_truth_and_prediction_on_the_same_slice():
    lm = load_label_map("btcv")
    image = np.zeros((8, 8, 5), dtype=np.float32)
    truth = np.zeros((8, 8, 5), dtype=np.uint8)
    truth[2:6, 2:6, 3] = lm.id_of("liver")  # slice 3 holds the most ground truth
    truth[3, 3, 1] = lm.id_of("liver")
    predicted = np.zeros_like(truth)
    predicted[2:4, 2:4, 3] = lm.id_of("spleen")
    fig = plot_prediction_grid([image, image[..., 0]], [truth, truth[..., 0]], [predicted, predicted[..., 0]], lm,
                               case_ids=["a", "b"], mean_dice=[0.25, float("nan")])
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:4]] == ["ground truth (axial 3)", "prediction, mean Dice 0.25",
                                                   "ground truth", "prediction"]
    assert axes[0].get_ylabel() == "a" and axes[2].get_ylabel() == "b"
    from mosmoskit.viz.slices import display_slice

    shown = np.asarray(axes[1].images[1].get_array())  # the prediction overlay of slice 3
    expected = display_slice(predicted, "axial", 3) > 0
    np.testing.assert_array_equal(shown[..., 3] > 0, expected)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["spleen", "liver"]  # label-map order
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        plot_prediction_grid([image, image], [truth, truth], [predicted], lm)
    with pytest.raises(ValueError, match="at least one case"):
        plot_prediction_grid([], [], [], lm)


# ---------------------------------------------------------------------------------- examples
def _tiny_config(tmp_path, **overrides):
    return FinetuneConfig(**{**TINY, "phantom_shape": (32, 32), "phantom_spacing": (12.0, 12.0),
                             "roi_size": (32, 32), "test_fraction": 0.4, "output_dir": str(tmp_path), **overrides})


def test_prediction_examples_spread_from_worst_to_best(tmp_path):
    from mosmoskit.data.readers import load_image, save_like
    from mosmoskit.finetuning.data import prepare_finetuning_data

    config = _tiny_config(tmp_path)
    data = prepare_finetuning_data(config, progress=False)
    test = list(data.split.test)
    assert len(test) == 4  # 2 of 5 patients x 2 slices
    for case_id in test:  # a "perfect" prediction: the label itself, written as run_finetuning writes it
        volume = load_image(data.cases[case_id]["image"])
        label = load_image(data.cases[case_id]["label"]).array.astype(np.uint8)
        save_like(label, volume, tmp_path / "predictions" / f"{case_id}.nii.gz", dtype=np.uint8)
    dice = dict(zip(test, [0.8, 0.2, 0.5, float("nan")]))
    per_case = {c: {"liver": {"dice": d}, "spleen": {"dice": float("nan")}} for c, d in dice.items()}
    examples = prediction_examples(config, per_case, n=3)
    assert examples["case_ids"] == [test[1], test[2], test[0]]  # worst, middle, best; unscored last, not chosen
    assert examples["mean_dice"] == [0.2, 0.5, 0.8]
    for label, predicted, image in zip(examples["labels"], examples["predictions"], examples["images"]):
        np.testing.assert_array_equal(predicted, label)
        assert image.shape == label.shape == (32, 32)
    assert examples["spacings"][0] == pytest.approx((12.0, 12.0))
    assert prediction_examples(config, n=2)["case_ids"] == test[:2]
    assert all(math.isnan(d) for d in prediction_examples(config, n=1)["mean_dice"])


def test_prediction_examples_say_when_predictions_are_missing(tmp_path):
    config = _tiny_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="save_predictions=True"):
        prediction_examples(config, n=1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        prediction_examples(config, n=0)
