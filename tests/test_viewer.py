"""The mask viewer: one drawing function (``render_view``) behind the widgets and the static figures.

Pictures must change exactly when the view changes (slice, organs, opacity, mode, attention, window),
the difference mode must colour false positives and false negatives where a hand-made example puts
them, and the ipywidgets controls must redraw when their values are set from code.
"""

from __future__ import annotations

import dataclasses
import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")

from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.viz.slices import display_slice  # noqa: E402
from mosmoskit.viz.viewer import (  # noqa: E402
    DIFFERENCE_COLORS,
    WINDOW_PRESETS,
    CaseView,
    DiceTable,
    MaskViewer,
    ViewState,
    best_index,
    case_mean_dice,
    default_views,
    dice_table_html,
    legend_entries,
    plot_views,
    render_view,
    sort_cases,
    window_limits,
)

BTCV = load_label_map("btcv")
LIVER, SPLEEN, STOMACH = BTCV.id_of("liver"), BTCV.id_of("spleen"), BTCV.id_of("stomach")


def _volume_case(maps: bool = True, truth: bool = True) -> CaseView:
    """A 20 x 16 x 8 volume: a liver block and a spleen block, the prediction shifted by two voxels."""
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 60.0, size=(20, 16, 8)).astype(np.float32)
    gt = np.zeros((20, 16, 8), dtype=np.uint8)
    gt[2:10, 3:12, 1:7] = LIVER
    gt[13:18, 4:9, 2:5] = SPLEEN
    pred = np.roll(gt, 2, axis=0)
    heat = None
    if maps:
        heat = np.zeros((len(BTCV.foreground_names), *gt.shape), dtype=np.float32)
        heat[BTCV.foreground_names.index("liver"), 2:10, 3:12, 1:7] = 1.0
        heat[BTCV.foreground_names.index("liver"), 5, 6, 4] = 2.0  # the peak
    return CaseView(image=image, label_map=BTCV, prediction=pred, truth=gt if truth else None, maps=heat,
                    spacing=(2.0, 2.0, 4.0), case_id="vol", maps_note="" if maps else "fine-tuned without maps")


# -------------------------------------------------------------------------------- render_view
def test_render_view_is_deterministic_and_follows_every_field_of_the_state():
    case = _volume_case()
    base = ViewState(axis="axial", index=3, mode="prediction", opacity=0.5)
    first = render_view(case, base)
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    np.testing.assert_array_equal(first, render_view(case, base))
    np.testing.assert_array_equal(first, render_view(case, dataclasses.replace(base)))
    changes = {
        "index": {"index": 4},
        "organ toggle": {"organs": ("spleen",)},
        "opacity": {"opacity": 0.9},
        "mode": {"mode": "ground_truth"},
        "difference": {"mode": "difference"},
        "attention": {"attention": "liver"},
        "window": {"window": WINDOW_PRESETS["bone"]},
        "axis": {"axis": "coronal", "index": 6},
    }
    for what, change in changes.items():
        other = render_view(case, dataclasses.replace(base, **change))
        assert other.shape != first.shape or not np.array_equal(other, first), f"changing the {what} changed nothing"
    # Hiding every organ leaves the bare windowed image: grey pixels only.
    bare = render_view(case, dataclasses.replace(base, organs=()))
    assert np.array_equal(bare[..., 0], bare[..., 1]) and np.array_equal(bare[..., 1], bare[..., 2])
    # Hiding an organ that is not on the slice changes nothing.
    with_absent = dataclasses.replace(base, organs=("liver", "spleen", "aorta"))
    np.testing.assert_array_equal(first, render_view(case, with_absent))


def test_render_view_keeps_millimetres_square_and_enlarges_to_display_size():
    case = _volume_case()
    axial = render_view(case, ViewState(axis="axial", index=3))
    assert axial.shape[:2] == (16, 20)  # rows = anterior-posterior (Y), cols = right-left (X)
    coronal = render_view(case, ViewState(axis="coronal", index=5))
    assert coronal.shape[:2] == (16, 20)  # 8 slices of 4 mm shown as 16 rows of 2 mm
    big = render_view(case, ViewState(axis="coronal", index=5), display_size=200)
    assert big.shape[:2] == (160, 200)
    # Nearest-neighbour enlargement: every displayed pixel repeats a voxel of the native picture.
    np.testing.assert_array_equal(big[::10, ::10], coronal)


def test_difference_mode_colours_false_positives_and_false_negatives_on_a_hand_made_slice():
    image = np.full((5, 4), -1000.0, dtype=np.float32)  # air: black under any abdominal window
    truth = np.zeros((5, 4), dtype=np.uint8)
    pred = np.zeros((5, 4), dtype=np.uint8)
    truth[1, 1] = pred[1, 1] = LIVER  # agree
    pred[3, 2] = LIVER  # false positive
    truth[0, 3] = LIVER  # false negative
    truth[4, 0], pred[4, 0] = LIVER, SPLEEN  # wrong organ
    case = CaseView(image=image, label_map=BTCV, prediction=pred, truth=truth, case_id="hand")
    rgb = render_view(case, ViewState(mode="difference", opacity=1.0))
    assert rgb.shape == (4, 5, 3)

    def pixel(x, y):  # axial display: row = anterior-posterior reversed, col = right-left reversed
        return tuple(rgb[4 - 1 - y, 5 - 1 - x])

    def expected(name, share=1.0):
        return tuple(int(round(c * share * 255)) for c in DIFFERENCE_COLORS[name])

    assert pixel(3, 2) == expected("false positive") == (255, 26, 26)
    assert pixel(0, 3) == expected("false negative") == (26, 115, 255)
    assert pixel(4, 0) == expected("wrong organ")
    np.testing.assert_allclose(pixel(1, 1), expected("agree", 0.4), atol=1)  # agreement is drawn fainter
    assert pixel(2, 2) == (0, 0, 0)  # background in both: the image shows through
    colored = (rgb.sum(axis=-1) > 0).sum()
    assert colored == 4
    # The same positions through display_slice (the convention every view of the kit uses).
    fp = np.zeros((5, 4), dtype=bool)
    fp[3, 2] = True
    assert tuple(rgb[display_slice(fp)][0]) == expected("false positive")
    # Only the spleen visible: the liver's miss and agreement vanish; spleen predicted on liver is
    # now what is visible of it, a false positive of the spleen.
    spleen_only = render_view(case, ViewState(mode="difference", opacity=1.0, organs=("spleen",)))
    assert (spleen_only.sum(axis=-1) > 0).sum() == 1
    assert tuple(spleen_only[4 - 1 - 0, 5 - 1 - 4]) == expected("false positive")
    # Only the liver visible: the same voxel is the liver's miss.
    liver_only = render_view(case, ViewState(mode="difference", opacity=1.0, organs=("liver",)))
    assert tuple(liver_only[4 - 1 - 0, 5 - 1 - 4]) == expected("false negative")
    assert tuple(liver_only[4 - 1 - 2, 5 - 1 - 3]) == expected("false positive")
    names = [n for n, _ in legend_entries(case, ViewState(mode="difference"))]
    assert names == ["agree", "false positive", "false negative", "wrong organ"]
    names = [n for n, _ in legend_entries(case, ViewState(mode="ground_truth"))]
    assert names == ["liver"]
    assert [n for n, _ in legend_entries(case, ViewState(mode="prediction"))] == ["spleen", "liver"]


def test_attention_heat_is_normalised_by_the_scan_peak_and_drawn_only_where_the_map_is():
    case = _volume_case()
    state = ViewState(index=4, mode="prediction", organs=(), opacity=1.0)
    plain = render_view(case, state).astype(int)
    heat = render_view(case, dataclasses.replace(state, attention="liver")).astype(int)
    changed = np.any(plain != heat, axis=-1)
    expected = display_slice(case.maps[BTCV.foreground_names.index("liver")], "axial", 4) > 0
    np.testing.assert_array_equal(changed, expected)
    # A slice without the peak is dimmer than the peak's own slice would be at full heat 1.
    assert case._map_peaks[BTCV.foreground_names.index("liver")] == 2.0


def test_invalid_states_fail_with_messages_that_name_the_problem():
    case = _volume_case(maps=False)
    with pytest.raises(ValueError, match="no attention maps: fine-tuned without maps"):
        render_view(case, ViewState(attention="liver"))
    with pytest.raises(ValueError, match="organs \\['livr'\\] are not in label map 'btcv'"):
        render_view(case, ViewState(organs=("livr",)))
    with pytest.raises(ValueError, match="axial index 8 is outside 0..7"):
        render_view(case, ViewState(index=8))
    scan = _volume_case(truth=False)
    with pytest.raises(ValueError, match="mode 'difference' needs a ground truth"):
        render_view(scan, ViewState(mode="difference"))
    flat = CaseView(image=np.zeros((4, 4)), label_map=BTCV, prediction=np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="2D image: axis must be one of \\['axial'\\]"):
        render_view(flat, ViewState(axis="coronal"))
    with pytest.raises(ValueError, match="ViewState.opacity must be in \\[0, 1\\]"):
        ViewState(opacity=1.5)
    with pytest.raises(ValueError, match="ViewState.mode must be one of"):
        ViewState(mode="overlay")
    with pytest.raises(ValueError, match="ViewState.window must be \\(low, high\\) with low < high"):
        ViewState(window=(100.0, -100.0))
    with pytest.raises(ValueError, match="prediction has shape \\(4, 3\\) but the image \\(4, 4\\)"):
        CaseView(image=np.zeros((4, 4)), label_map=BTCV, prediction=np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="maps must be \\(K, \\*image.shape\\) = \\(13, 4, 4\\)"):
        CaseView(image=np.zeros((4, 4)), label_map=BTCV, prediction=np.zeros((4, 4), dtype=np.uint8),
                 maps=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="c1 \\(truth\\)"):
        CaseView(image=np.zeros((4, 4)), label_map=BTCV, truth=np.full((4, 4), 99, dtype=np.uint8), case_id="c1")


def test_window_presets_and_best_slice():
    assert window_limits("abdomen") == (-160.0, 240.0)
    assert window_limits("lung") == (-1350.0, 150.0)
    image = np.arange(101, dtype=np.float32)
    assert window_limits("auto", image) == pytest.approx((1.0, 99.0))
    with pytest.raises(ValueError, match="window preset must be one of"):
        window_limits("soft")
    case = _volume_case()
    assert best_index(case, "axial") in range(2, 5)  # slices with both organs
    assert best_index(case, "sagittal", "spleen") in range(13, 20)
    with pytest.raises(ValueError, match="organ 'heart' is not in label map"):
        best_index(case, "axial", "heart")


# ------------------------------------------------------------------------------- static views
def test_static_views_are_drawn_by_render_view(tmp_path):
    case = _volume_case()
    state = ViewState(axis="coronal", index=6, mode="difference", attention="liver")
    views = default_views(case, state)
    assert [len(row) for row in views] == [4, 4, 4]  # 3 axes x (3 modes + attention)
    titles = [t for t, _ in views[1]]
    assert titles == ["ground truth coronal 6", "prediction coronal 6", "difference coronal 6",
                      "attention: liver coronal 6"]
    fig = plot_views(case, views, display_size=64)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 12
    for ax, (_, view) in zip(axes, [v for row in views for v in row]):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), render_view(case, view, 64))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"liver", "spleen", "false positive", "false negative"} <= set(labels)
    viewer = MaskViewer(case, state)
    path = tmp_path / "views.png"
    viewer.show(live=False, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ widgets
def test_widgets_redraw_when_their_values_are_set_from_code():
    pytest.importorskip("ipywidgets")
    case = _volume_case()
    viewer = MaskViewer(case, ViewState(axis="axial", mode="prediction"), display_size=120)
    assert viewer.state.index == best_index(case, "axial")
    box = viewer.widget
    assert box is viewer.widget  # built once
    c = viewer.controls
    assert c["index"].max == 7 and c["axis"].options == ("axial", "coronal", "sagittal")
    assert c["attention"].disabled is False

    def check(before):
        after = viewer.image_array()
        assert not np.array_equal(before, after)
        np.testing.assert_array_equal(after, render_view(case, viewer.state, 120))
        shown = np.asarray(Image.open(io.BytesIO(viewer.picture.value)).convert("RGB"))
        np.testing.assert_array_equal(shown, after)  # what the widget displays
        return after.copy()

    picture = viewer.image_array().copy()
    c["index"].value = 5
    assert viewer.state.index == 5
    picture = check(picture)
    viewer.organ_boxes["liver"].value = False
    assert viewer.state.organs == ("spleen",)
    picture = check(picture)
    viewer.organ_boxes["liver"].value = True
    assert viewer.state.organs is None  # every organ of the case again
    picture = check(picture)
    c["opacity"].value = 0.9
    picture = check(picture)
    c["mode"].value = "difference"
    assert "false positive" in viewer._key.value
    picture = check(picture)
    c["attention"].value = "liver"
    picture = check(picture)
    c["window"].value = "bone"
    assert viewer.state.window == WINDOW_PRESETS["bone"]
    picture = check(picture)
    c["axis"].value = "sagittal"
    assert viewer.state.axis == "sagittal" and c["index"].max == 19
    assert c["index"].value == viewer.state.index == best_index(case, "sagittal", "liver")
    picture = check(picture)
    # update() from code moves the controls too, without a second redraw per control.
    renders = viewer.renders
    viewer.update(axis="coronal", index=2)
    assert (c["axis"].value, c["index"].value, c["index"].max) == ("coronal", 2, 15)
    assert viewer.renders == renders + 1
    check(picture)
    with pytest.raises(ValueError, match="coronal index 99"):
        viewer.update(index=99)
    assert viewer.state.index == 2  # the failed change left the state alone


def test_controls_that_the_case_cannot_use_are_disabled_with_a_note():
    pytest.importorskip("ipywidgets")
    viewer = MaskViewer(_volume_case(maps=False, truth=False))
    viewer.widget
    c = viewer.controls
    assert c["attention"].disabled and c["mode"].disabled
    assert c["mode"].options == (("prediction", "prediction"),)
    assert "No attention maps: fine-tuned without maps" in viewer.note.value
    assert "No ground truth" in viewer.note.value
    flat = CaseView(image=np.zeros((6, 6)), label_map=BTCV, prediction=np.zeros((6, 6), dtype=np.uint8))
    flat_viewer = MaskViewer(flat)
    flat_viewer.widget
    assert flat_viewer.controls["index"].disabled and flat_viewer.controls["axis"].disabled


# ---------------------------------------------------------------------------------- Dice table
def _m(dice, status="present"):
    return {"dice": dice, "hd95": 3.0 if status == "present" else float("nan"), "status": status,
            "gt_voxels": 10, "pred_voxels": 10}


PER_CASE = {
    "a": {"spleen": _m(0.9), "liver": _m(0.1), "stomach": _m(float("nan"), "absent_both")},
    "b": {"spleen": _m(0.2), "liver": _m(0.8), "stomach": _m(float("nan"), "absent_both")},
    "c": {"spleen": _m(0.0, "missed"), "liver": _m(0.3), "stomach": _m(float("nan"), "absent_both")},
    "d": {"spleen": _m(float("nan"), "absent_both"), "liver": _m(float("nan"), "absent_both"),
          "stomach": _m(float("nan"), "absent_both")},
}


def test_cases_sort_worst_first_by_mean_or_by_organ():
    assert case_mean_dice(PER_CASE["a"]) == pytest.approx(0.5)
    assert np.isnan(case_mean_dice(PER_CASE["d"]))
    assert sort_cases(PER_CASE) == ["c", "a", "b", "d"]  # 0.15, 0.5, 0.5 (tie: by id), then no score
    assert sort_cases(PER_CASE, "spleen") == ["c", "b", "a", "d"]
    assert sort_cases(PER_CASE, "liver") == ["a", "c", "b", "d"]
    with pytest.raises(ValueError, match="sort by 'mean' or an organ of the metrics"):
        sort_cases(PER_CASE, "heart")


def test_dice_table_html_lists_rows_in_sort_order_and_sorts_from_its_dropdown():
    html = dice_table_html(PER_CASE, BTCV, sort_by="liver", highlight="c")
    rows = [chunk.split("</td>")[0] for chunk in html.split("<tr><td>")[1:]]
    assert rows == ["a", "<b>c &#9664;</b>", "b", "d"]
    assert "<th>stomach" not in html  # an organ without any Dice gets no column
    assert "missed, HD95 n/a" in html and ">0.100<" in html and ">n/a<" in html
    with pytest.raises(ValueError, match="at least one case"):
        dice_table_html({})
    pytest.importorskip("ipywidgets")
    table = DiceTable(PER_CASE, BTCV)
    table.widget
    assert table.controls["sort_by"].options == ("mean", "spleen", "liver")
    table.controls["sort_by"].value = "spleen"
    assert table.sort_by == "spleen" and table._html_widget.value == dice_table_html(PER_CASE, BTCV, "spleen")


def test_a_stack_of_2d_slices_is_shown_axially_with_a_slider_over_its_slices():
    pytest.importorskip("ipywidgets")
    slices = np.zeros((12, 10, 3), dtype=np.uint8)
    slices[2:6, 2:6, 0] = LIVER
    slices[3:9, 1:8, 2] = SPLEEN
    case = CaseView(image=np.zeros((12, 10, 3)), label_map=BTCV, prediction=slices, truth=slices,
                    spacing=(1.5, 1.5), slice_ids=("p_s0", "p_s1", "p_s2"), case_id="p")
    assert case.axes == ("axial",) and case.n_slices("axial") == 3 and case.slice_name("axial", 2) == "p_s2"
    assert best_index(case, "axial") == 2 and best_index(case, "axial", "liver") == 0
    assert [t for t, _ in default_views(case, ViewState(index=1))[0]] == [
        "ground truth p_s1", "prediction p_s1", "difference p_s1"]
    with pytest.raises(ValueError, match="stack of 2D slices: axis must be one of \\['axial'\\]"):
        render_view(case, ViewState(axis="coronal", index=0))
    with pytest.raises(ValueError, match="slice_ids must name each of the slices"):
        CaseView(image=np.zeros((4, 4, 2)), label_map=BTCV, truth=np.zeros((4, 4, 2), dtype=np.uint8),
                 slice_ids=("a",))
    viewer = MaskViewer(case, ViewState(mode="ground_truth"), display_size=0)
    viewer.widget
    assert viewer.state.index == 2 and viewer.controls["axis"].disabled
    assert not viewer.controls["index"].disabled and viewer.controls["index"].max == 2
    before = viewer.image_array().copy()
    viewer.controls["index"].value = 0
    assert "p_s0" in viewer._title.value and not np.array_equal(before, viewer.image_array())
