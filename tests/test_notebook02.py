"""Notebook 02, ``python -m mosmoskit pretrain``, and the plots and tables they show.

The notebook's parameters, the CLI's options and ``PretrainConfig``'s fields must be the same
names; the notebook must refuse unknown parameters and run end to end under papermill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mosmoskit.commands import pretrain as pretrain_command  # noqa: E402
from notebook_checks import assert_thin_and_stripped, parameter_values  # noqa: E402
from mosmoskit.config import config_from_dict, config_to_dict  # noqa: E402
from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.pretraining.config import PretrainConfig  # noqa: E402
from mosmoskit.pretraining.report import (  # noqa: E402
    format_data_summary,
    format_metrics,
    format_pointing,
    format_table,
)
from mosmoskit.viz.attention import attention_rgba, plot_attention_grid, plot_attention_maps  # noqa: E402
from mosmoskit.viz.live import LiveLossPlot, ema, live_display_available, loss_keys, plot_history  # noqa: E402
from mosmoskit.viz.slices import display_slice  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_report_pretraining.ipynb"
FIELDS = [f.name for f in dataclasses.fields(PretrainConfig)]
# The notebook may make these smaller than the dataclass so that it runs in minutes on a CPU.
SIZE_FIELDS = {"phantom_cases", "phantom_slices_per_case", "max_steps", "batch_size", "warmup_steps",
               "val_every", "checkpoint_every"}
# A run small enough for a test: 6 phantom volumes x 4 slices at 64 x 64, a tiny BERT, 6 updates.
TINY = dict(text_encoder="tiny", phantom_cases=6, phantom_slices_per_case=4, image_size=[64, 64], max_steps=6,
            batch_size=4, val_every=3, checkpoint_every=3, warmup_steps=1)


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
    defaults = config_to_dict(PretrainConfig())
    changed = {k for k in FIELDS if values[k] != defaults[k]}
    assert changed <= SIZE_FIELDS, f"only sizes may differ from PretrainConfig's defaults, got {changed - SIZE_FIELDS}"
    assert config_from_dict(PretrainConfig, values).max_steps == values["max_steps"]


def test_notebook_is_thin_and_saved_without_outputs():
    assert_thin_and_stripped(NOTEBOOK)


def test_run_notebook_refuses_unknown_parameter(tmp_path):
    from mosmoskit.notebooks import run_notebook

    with pytest.raises(ValueError, match="unknown parameter.*max_stpes"):
        run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {"max_stpes": 3})
    assert not (tmp_path / "out.ipynb").exists()


def test_plain_papermill_run_refuses_unknown_parameter(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter 'max_stpes'"):
        papermill.execute_notebook(
            str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
            parameters={"max_stpes": 3, "output_dir": str(tmp_path / "run")}, progress_bar=False,
        )
    assert not (tmp_path / "run").exists(), "the notebook must stop before it trains"


@pytest.mark.slow
def test_notebook_executes_with_tiny_parameters(tmp_path):
    import nbformat

    from mosmoskit.notebooks import run_notebook

    run_dir = tmp_path / "run"
    executed = run_notebook(NOTEBOOK, tmp_path / "out.ipynb", {**TINY, "output_dir": str(run_dir)}, cwd=tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == TINY["max_steps"]
    assert 0.0 <= metrics["retrieval/image_to_report_recall@1"] <= 1.0
    assert "pointing_baseline/liver" in metrics and "pointing_baseline_within_cell/liver" in metrics
    outputs = [o for c in nbformat.read(str(executed), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Held-out retrieval" in text and "Pointing game" in text and str(run_dir / "metrics.json") in text
    assert "pointing game" in text and "maps - prior" in text  # the map check against the fixed prior
    # every large organ the run learned (a tiny cohort may have no report calling the liver absent) is scored
    learned = [o for o in ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
               if o not in metrics["tags/left_out"]]
    assert learned and all(f"maps/pointing_prior/{o}" in metrics for o in learned), metrics["tags/left_out"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3, "expected the loss curve (drawn once, at the end), the maps beside the prior, the attention grid"


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain")
    pretrain_command.add_arguments(parser)
    return parser


def test_cli_options_equal_config_fields():
    actions = [a for a in _parser()._actions if a.dest != "help"]
    assert [a.dest for a in actions] == FIELDS
    for action in actions:
        assert f"--{action.dest.replace('_', '-')}" in action.option_strings
        if "_" in action.dest:
            assert f"--{action.dest}" in action.option_strings


def test_cli_parses_types_from_annotations():
    args = _parser().parse_args(["--image-size", "64", "64", "--window", "-100", "200", "--text_encoder", "tiny",
                                 "--lr", "0.01", "--overwrite", "--max-steps", "7"])
    config = pretrain_command.config_from_args(PretrainConfig, args)
    assert config.image_size == (64, 64) and config.window == (-100.0, 200.0)
    assert config.text_encoder == "tiny" and config.lr == 0.01 and config.max_steps == 7 and config.overwrite is True
    assert config.batch_size == PretrainConfig().batch_size  # untouched fields keep the dataclass default
    assert pretrain_command.config_from_args(PretrainConfig, _parser().parse_args(["--no-overwrite"])).overwrite is False


def test_cli_rejects_bad_values():
    with pytest.raises(SystemExit):
        _parser().parse_args(["--max-steps", "many"])
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        pretrain_command.config_from_args(PretrainConfig, _parser().parse_args(["--batch-size", "0"]))
    with pytest.raises(ValueError, match="image_size must have 2 positive sizes"):
        pretrain_command.config_from_args(PretrainConfig, _parser().parse_args(["--image-size", "64"]))


def test_cli_help_comes_from_the_docstring():
    helps = pretrain_command.field_help(PretrainConfig)
    assert helps["tag_head_layers"] == "the tag decoder."
    assert helps["text_lr_scale"] == "the text encoder's lr = lr * text_lr_scale"
    assert "``" not in helps["dataset"] and helps["dataset"].startswith('"phantom"')
    text = _parser().format_help()
    assert "(default: 128 128)" in text and "--no-overwrite" in text


def test_cli_refuses_a_field_type_it_cannot_express():
    @dataclasses.dataclass(frozen=True)
    class Odd:
        mapping: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="'mapping'.*no command-line form"):
        pretrain_command.add_config_arguments(argparse.ArgumentParser(), Odd)


def test_cli_pretrains_with_tiny_settings(tmp_path, monkeypatch, capsys):
    from mosmoskit import cli

    assert "pretrain" in cli.COMMANDS
    out = tmp_path / "run"
    argv = ["pretrain", "--text-encoder", "tiny", "--phantom-cases", "4", "--phantom-slices-per-case", "2",
            "--image-size", "64", "64", "--max-steps", "2", "--batch-size", "4", "--val-every", "2",
            "--warmup-steps", "0", "--output-dir", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pre-training with" in printed and "text_encoder=tiny" in printed
    assert "Held-out retrieval" in printed and "Pointing game" in printed and "metrics.json" in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["image_size"] == [64, 64] and saved["text_encoder"] == "tiny" and saved["max_steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["train/steps"] == 2
    # A finished run is not overwritten silently: one clear error line, exit status 2.
    assert cli.main(argv) == 2
    assert "already holds a finished pre-training run" in capsys.readouterr().err


# ------------------------------------------------------------------------------ attention plots
def _one_peak(shape, peak):
    maps = np.zeros((2, *shape), dtype=np.float32)
    maps[0][peak] = 2.0
    maps[1] += 0.5
    return maps


def test_attention_map_is_shown_in_radiological_convention():
    image = np.arange(24, dtype=np.float32).reshape(6, 4)  # (X, Y)
    maps = _one_peak((6, 4), (1, 3))  # the peak at x = 1 (patient's right side), y = 3 (anterior)
    ax = plot_attention_maps(image, maps, ["liver", "spleen"], organs=["liver"], window=None)
    # Same display as the CT slices: viewer's column = X - 1 - x, row = Y - 1 - y.
    np.testing.assert_array_equal(ax.images[0].get_array(), display_slice(image))
    (marker,) = ax.lines
    assert list(marker.get_xdata()) == [6 - 1 - 1] and list(marker.get_ydata()) == [4 - 1 - 3]
    heat = np.asarray(ax.images[1].get_array())
    assert heat.shape == (4, 6, 4)
    assert heat[0, 4, 3] == pytest.approx(0.7)  # map normalised to its peak: full opacity alpha there
    assert heat[..., 3].sum() == pytest.approx(0.7)  # and transparent everywhere else


def test_attention_map_volume_picks_the_organs_largest_slice_and_draws_its_contour():
    lm = load_label_map("btcv")
    label = np.zeros((8, 8, 5), dtype=np.uint8)
    label[2:6, 2:6, 3] = lm.id_of("liver")
    label[3:5, 3:5, 1] = lm.id_of("liver")
    maps = _one_peak((8, 8, 5), (4, 4, 3))
    ax = plot_attention_maps(np.zeros((8, 8, 5)), maps, ["liver", "spleen"], label=label, label_map=lm,
                             organs=["liver"], probabilities={"liver": 0.9})
    assert ax.get_title() == "liver p=0.90 (axial 3)"
    assert len(ax.collections) == 1  # the organ's outline
    ax2 = plot_attention_maps(np.zeros((8, 8, 5)), maps, ["liver", "spleen"], organs=["liver"])
    assert ax2.get_title().endswith("(axial 3)")  # no label: the slice of the map's peak
    assert len(ax2.collections) == 0


def test_several_organs_share_one_slice_in_their_label_colours():
    lm = load_label_map("btcv")
    maps = _one_peak((6, 6), (2, 2))
    ax = plot_attention_maps(np.zeros((6, 6)), maps, ["liver", "spleen"], label_map=lm)
    layers = [np.asarray(im.get_array()) for im in ax.images[1:]]
    assert len(layers) == 2
    np.testing.assert_allclose(layers[0][0, 0, :3], lm.colors()["liver"], rtol=1e-6)
    np.testing.assert_allclose(layers[1][0, 0, :3], lm.colors()["spleen"], rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["liver", "spleen"]


def test_attention_rgba_opacity_follows_the_heat():
    rgba = attention_rgba(np.array([[0.0, 0.5], [1.0, 2.0]]), color=(1.0, 0.0, 0.0), alpha=0.8)
    np.testing.assert_allclose(rgba[..., 3], [[0.0, 0.4], [0.8, 0.8]])
    np.testing.assert_allclose(rgba[..., :3], np.broadcast_to([1.0, 0.0, 0.0], (2, 2, 3)))
    with pytest.raises(ValueError, match="alpha must be in"):
        attention_rgba(np.zeros((2, 2)), alpha=1.5)


def test_attention_plot_rejects_bad_inputs():
    image, maps = np.zeros((6, 6)), np.zeros((2, 6, 6))
    with pytest.raises(ValueError, match=r"maps must be \(K, \*image.shape\)"):
        plot_attention_maps(image, np.zeros((2, 5, 6)), ["liver", "spleen"])
    with pytest.raises(ValueError, match="1 names for 2 maps"):
        plot_attention_maps(image, maps, ["liver"])
    with pytest.raises(ValueError, match=r"organs \['pancreas'\] have no map"):
        plot_attention_maps(image, maps, ["liver", "spleen"], organs=["pancreas"])
    with pytest.raises(ValueError, match="needs its label_map"):
        plot_attention_maps(image, maps, ["liver", "spleen"], label=np.zeros((6, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match="label shape"):
        plot_attention_maps(image, maps, ["liver", "spleen"], label=np.zeros((5, 6)), label_map="btcv")


def test_attention_grid_has_a_row_per_case_and_a_column_per_organ():
    lm = load_label_map("btcv")
    names = list(lm.foreground_names)
    labels = [np.zeros((8, 8), dtype=np.uint8) for _ in range(2)]
    labels[0][2:5, 2:5] = lm.id_of("liver")
    maps = [np.random.default_rng(i).random((len(names), 8, 8)) for i in range(2)]
    fig = plot_attention_grid([np.zeros((8, 8))] * 2, maps, names, labels=labels, label_map=lm,
                              organs=["liver", "spleen"], case_ids=["a", "b"])
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["label", "liver", "spleen"]
    assert fig.axes[3].get_ylabel() == "b"
    with pytest.raises(ValueError, match="1 maps for 2 images"):
        plot_attention_grid([np.zeros((8, 8))] * 2, maps[:1], names)


# ---------------------------------------------------------------------------------- loss curves
HISTORY = [
    {"step": 1, "epoch": 0, "split": "train", "lr": 1e-3, "contrastive": 2.0, "tags": 0.8, "loss": 2.8,
     "grad_norm": 1.0, "temperature": 0.07},
    {"step": 2, "epoch": 0, "split": "train", "lr": 1e-3, "contrastive": 1.0, "tags": 0.6, "loss": 1.6,
     "grad_norm": 1.0, "temperature": 0.07},
    {"step": 2, "split": "val", "retrieval/image_to_report_recall@1": 0.5},
    {"step": 3, "epoch": 1, "split": "train", "lr": 1e-3, "contrastive": 0.5, "tags": 0.4, "loss": 0.9,
     "grad_norm": 1.0, "temperature": 0.07},
]


def test_loss_keys_are_the_loss_terms_only():
    assert loss_keys(HISTORY) == ["loss", "contrastive", "tags"]


def test_plot_history_draws_every_term_against_the_step():
    ax = plot_history(HISTORY)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"loss", "contrastive", "tags"}
    assert list(lines["tags"].get_xdata()) == [1.0, 2.0, 3.0]
    assert list(lines["loss"].get_ydata()) == [2.8, 1.6, 0.9]


def test_plot_history_smoothing_is_an_exponential_moving_average():
    np.testing.assert_allclose(ema([4.0, 2.0, 1.0], 0.5), [4.0, 3.0, 2.0])
    ax = plot_history(HISTORY, keys=["contrastive"], smoothing=0.5)
    raw, smooth = ax.get_lines()
    assert list(raw.get_ydata()) == [2.0, 1.0, 0.5]
    np.testing.assert_allclose(smooth.get_ydata(), [2.0, 1.5, 1.0])
    with pytest.raises(ValueError, match=r"keys \['val_loss'\] appear in no training record"):
        plot_history(HISTORY, keys=["val_loss"])
    with pytest.raises(ValueError, match="smoothing must be in"):
        plot_history(HISTORY, smoothing=1.0)


class _FakeHandle:
    def __init__(self, calls):
        self.calls = calls

    def update(self, obj):
        self.calls.append("update")


def _drive(plot, steps, trainer=None):
    plot.on_train_start(trainer)
    for step in range(1, steps + 1):
        plot.on_step_end(trainer, step, {"step": step, "split": "train", "loss": 1.0 / step, "tags": 0.5 / step})
    plot.on_train_end(trainer, None)


def test_live_loss_plot_outside_a_watched_notebook_draws_once_at_the_end(tmp_path):
    assert live_display_available() is False  # pytest is no notebook frontend
    plot = LiveLossPlot(every=10, path=tmp_path / "loss.png")
    _drive(plot, 25)
    assert plot.draws == 1
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["step"] for r in plot.history] == list(range(1, 26))


def test_live_loss_plot_redraws_one_output_in_place(monkeypatch):
    import IPython.display

    calls = []

    def fake_display(obj, display_id=False):
        calls.append("display")
        return _FakeHandle(calls)

    monkeypatch.setattr(IPython.display, "display", fake_display)
    plot = LiveLossPlot(every=10, live=True)
    _drive(plot, 25)
    assert plot.draws == 3  # steps 10 and 20, then the end
    assert calls == ["display", "update", "update"]


def test_live_loss_plot_detects_a_person_watching(monkeypatch):
    import IPython

    class Kernel:
        _allow_stdin = True

    class Shell:
        kernel = Kernel()

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    assert live_display_available() is True
    Kernel._allow_stdin = False  # papermill / nbconvert
    assert live_display_available() is False


def test_live_loss_plot_keeps_a_resumed_runs_earlier_steps():
    class Trainer:
        history = HISTORY

    plot = LiveLossPlot(live=False)
    plot.on_train_start(Trainer())
    plot.on_step_end(Trainer(), 4, {"step": 4, "loss": 0.5})
    assert [r["step"] for r in plot.history] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        LiveLossPlot(every=0)


# ------------------------------------------------------------------------------------- tables
def test_format_table_aligns_text_left_and_numbers_right():
    table = format_table([["liver", 0.5], ["spleen", float("nan")]], ["organ", "AUROC"], digits=2)
    assert table.splitlines() == [
        "organ   AUROC",
        "------  -----",
        "liver    0.50",
        "spleen    n/a",
    ]
    with pytest.raises(ValueError, match="row 0 has 1 cells but there are 2 headers"):
        format_table([["liver"]], ["organ", "AUROC"])


def test_format_metrics_puts_recall_next_to_chance():
    metrics = {"n_pairs": 8, "retrieval/image_to_report_recall@1": 0.5, "retrieval/report_to_image_recall@1": 0.25,
               "retrieval/chance_recall@1": 0.125, "retrieval/image_to_report_recall@5": 1.0,
               "retrieval/report_to_image_recall@5": 0.75, "retrieval/chance_recall@5": 0.625,
               "tag_auroc/liver": 0.75, "tag_auroc/spleen": math.nan, "tag_auroc/mean": 0.75, "train/steps": 6}
    lines = format_metrics(metrics).splitlines()
    assert lines[0] == "Held-out retrieval (8 pairs)"
    assert "image -> report     0.500     1.000" in lines
    assert "report -> image     0.250     0.750" in lines
    assert "chance              0.125     0.625" in lines
    assert "liver                0.750" in lines and "spleen                 n/a" in lines
    assert "mean                 0.750" in lines
    assert "Organ-tag recognition (held out)" in lines and "organ tag  AUROC vs report" in lines
    assert any(line.startswith("train/steps") and line.endswith("6") for line in lines)
    # With masks, a second column; None is how metrics.json stores NaN.
    with_mask = format_metrics({"tag_auroc/liver": 0.5, "tag_auroc_vs_mask/liver": None}).splitlines()
    assert with_mask[1] == "organ tag  AUROC vs report  AUROC vs mask"
    assert with_mask[3] == "liver                0.500            n/a"
    with pytest.raises(ValueError, match="no retrieval/ or tag_auroc/ metrics"):
        format_metrics({"train/steps": 3})


def test_format_pointing_shows_the_gain_over_the_baseline():
    metrics = {"pointing/liver": 0.75, "pointing_baseline/liver": 0.5, "pointing/spleen": 0.0,
               "pointing_baseline/spleen": 0.25, "pointing/mean": 0.375, "pointing/mean_large_organs": 0.375,
               "pointing_baseline/mean_large_organs": 0.375}
    lines = format_pointing(metrics).splitlines()
    assert "liver              0.75      0.50             0.25" in lines
    assert "spleen             0.00      0.25            -0.25" in lines
    assert "mean large organs  0.38      0.38             0.00" in lines
    assert len(format_pointing(metrics, organs=["liver"]).splitlines()) == 3 + 1 + 2
    no_baseline = format_pointing({"pointing/liver": None}).splitlines()
    assert no_baseline[-1] == "liver   n/a"
    near = format_pointing({"pointing/liver": 0.5, "pointing_within_cell/liver": 0.75}).splitlines()
    assert near[1].endswith("maps within 1 cell") and near[-1].split() == ["liver", "0.50", "0.75"]
    both = format_pointing({"pointing/liver": 0.5, "pointing_within_cell/liver": 0.75,
                            "pointing_baseline_within_cell/liver": 1.0}).splitlines()
    assert both[1].endswith("maps within 1 cell  baseline within 1 cell")
    assert both[-1].split() == ["liver", "0.50", "0.75", "1.00"]
    with pytest.raises(ValueError, match=r"no pointing metric for \['pancreas'\]"):
        format_pointing(metrics, organs=["pancreas"])
    with pytest.raises(ValueError, match="needs held-out cases with label masks"):
        format_pointing({"tag_auroc/liver": 0.5})


def test_format_data_summary_counts_the_parsed_tags():
    train = [{"case_id": "a_s0", "parent_case": "a", "report": "The liver is normal. Status post splenectomy."},
             {"case_id": "a_s1", "parent_case": "a", "report": "The liver is enlarged."}]
    val = [{"case_id": "b_s0", "parent_case": "b", "report": "Normal spleen."}]
    text = format_data_summary(train, val, "btcv", n_reports=1)
    assert "train                   2         1" in text and "val                     1         1" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(("liver ", "spleen "))}
    assert rows["liver"] == ["2", "0", "0"] and rows["spleen"] == ["0", "1", "1"]
    assert "--- a_s0" in text and "--- a_s1" not in text
    with pytest.raises(ValueError, match="case c has no report"):
        format_data_summary([{"case_id": "c"}], [], "btcv")
