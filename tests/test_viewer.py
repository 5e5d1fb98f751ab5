"""The mask viewer: one drawing function for static figures and the ipywidgets viewer."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.viz.viewer import MaskViewer, ViewState, plot_view, render_view  # noqa: E402

BTCV = load_label_map("btcv")
LIVER, SPLEEN = BTCV.labels["liver"], BTCV.labels["spleen"]


def _case():
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 10, size=(24, 20, 10)).astype(np.float32)
    truth = np.zeros(ct.shape, dtype=np.uint8)
    truth[4:14, 4:12, 2:8] = LIVER
    truth[16:20, 10:16, 3:6] = SPLEEN
    pred = truth.copy()
    pred[4:6, 4:12, 2:8] = 0          # liver missed there (FN)
    pred[20:22, 10:16, 3:6] = SPLEEN  # spleen where there is none (FP)
    return ct, truth, pred


def test_same_state_same_pixels_and_every_control_changes_them():
    ct, truth, pred = _case()
    base = ViewState(index=4)
    a = render_view(ct, BTCV, base, truth=truth, prediction=pred)
    assert np.array_equal(a, render_view(ct, BTCV, base, truth=truth, prediction=pred))
    for changed in (ViewState(index=3), ViewState(index=4, organs=("spleen",)), ViewState(index=4, opacity=0.9),
                    ViewState(index=4, mode="prediction"), ViewState(index=4, window="bone"),
                    ViewState(axis="coronal", index=8)):
        assert not np.array_equal(a, render_view(ct, BTCV, changed, truth=truth, prediction=pred)), changed


def test_difference_mode_colours_true_false_positives_and_misses():
    ct, truth, pred = _case()
    ct[:] = -1000.0  # black background: only the overlay has colour
    rgb = render_view(ct, BTCV, ViewState(index=4, mode="difference", opacity=1.0), truth=truth, prediction=pred)
    # display_slice shows axial slices transposed and flipped: (x, y) -> row (Y-1-y), col (X-1-x)
    def at(x, y):
        return tuple(rgb[ct.shape[1] - 1 - y, ct.shape[0] - 1 - x])
    green, red, blue = at(8, 6), at(21, 12), at(4, 6)
    assert green[1] > 150 and green[0] < 100       # agree: liver in both
    assert red[0] > 200 and red[2] < 50            # predicted spleen where there is none
    assert blue[2] > 200 and blue[0] < 80          # liver missed
    assert at(0, 0) == (0, 0, 0)                   # background stays the image
    with pytest.raises(ValueError, match="needs both masks"):
        render_view(ct, BTCV, ViewState(mode="difference"), truth=truth)


def test_attention_overlay_and_bad_inputs():
    ct, truth, pred = _case()
    maps = np.zeros((13, *ct.shape), dtype=np.float32)
    maps[BTCV.foreground_names.index("liver"), 4:14, 4:12, 2:8] = 1.0
    plain = render_view(ct, BTCV, ViewState(index=4), truth=truth)
    heat = render_view(ct, BTCV, ViewState(index=4, attention_organ="liver"), truth=truth, attention=maps)
    assert not np.array_equal(plain, heat)
    with pytest.raises(ValueError, match="no attention maps"):
        render_view(ct, BTCV, ViewState(attention_organ="liver"), truth=truth)
    with pytest.raises(ValueError, match="not in the label map"):
        render_view(ct, BTCV, ViewState(organs=("livr",)), truth=truth)
    with pytest.raises(ValueError, match="differs from the image shape"):
        render_view(ct, BTCV, ViewState(), truth=truth[:-1])
    with pytest.raises(ValueError, match="window must be one of"):
        ViewState(window="soft")


def test_millimetres_are_square_in_coronal_views():
    ct, truth, _ = _case()
    rgb = render_view(ct, BTCV, ViewState(axis="coronal", index=8), truth=truth, spacing=(1.0, 1.0, 3.0))
    assert rgb.shape[:2] == (30, 24)  # 10 slices of 3 mm -> 30 rows of 1 mm; 24 columns of 1 mm


def test_widgets_redraw_through_the_same_function():
    ct, truth, pred = _case()
    viewer = MaskViewer(ct, BTCV, truth=truth, prediction=pred)
    assert viewer.state.index == int(np.argmax((truth > 0).sum(axis=(0, 1))))  # starts where the organs are
    first = viewer.image_array().copy()
    viewer.slice.value = 2                       # what a slider drag does
    moved = viewer.image_array().copy()
    assert not np.array_equal(first, moved)
    assert np.array_equal(moved, render_view(ct, BTCV, viewer.current_state(), truth=truth, prediction=pred))
    viewer.organ_boxes["liver"].value = False    # what a checkbox click does
    assert not np.array_equal(moved, viewer.image_array())
    assert "liver" not in viewer.state.organs
    viewer.axis.value = "sagittal"
    assert viewer.slice.max == ct.shape[0] - 1 and viewer.image_array().shape[1] == ct.shape[1]
    assert viewer.attention_choice.disabled       # no maps given
    assert viewer.picture.value[:4] == b"\x89PNG"


def test_plot_view_draws_the_rendered_array_with_a_legend():
    ct, truth, pred = _case()
    fig, ax = plt.subplots()
    rgb = plot_view(ax, ct, BTCV, ViewState(index=4, organs=("liver", "spleen")), truth=truth)
    assert np.array_equal(ax.images[0].get_array(), rgb)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["liver", "spleen"]
    plt.close(fig)
