"""The data exploration of notebook 01 (mosmoskit.exploration): numbers first, then their pictures.

One tiny phantom cohort (3 patients on a coarse grid) is generated per module; tests that break a
file work on a copy of it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402

from mosmoskit.config import config_from_dict  # noqa: E402
from mosmoskit.exploration import (  # noqa: E402
    EXPLORATION_FILE,
    TAG_CATEGORIES,
    Cohort,
    ExplorationConfig,
    case_table,
    exploration_record,
    format_case_table,
    format_label_audit,
    format_tag_frequencies,
    highlight_report,
    hu_histograms,
    label_audit,
    open_cohort,
    organ_histograms,
    organ_volumes,
    plot_hu_histograms,
    plot_organ_volumes,
    plot_orthogonal_slices,
    plot_tag_frequencies,
    report_examples,
    scan_cohort,
    tag_frequencies,
    write_exploration,
)
from mosmoskit.labels import load_label_map  # noqa: E402

BTCV = load_label_map("btcv")
# A coarse grid keeps generation and reading well under a second per case.
SHAPE, SPACING = (40, 40, 24), (9.0, 9.0, 12.0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    from mosmoskit.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantoms") / "data", n=3, seed=0, shape=SHAPE, spacing=SPACING,
                           progress=False)


def _config(tmp_path: Path, dataset: str | Path, **overrides) -> ExplorationConfig:
    return ExplorationConfig(dataset=str(dataset), output_dir=str(tmp_path / "explore"), **overrides)


def _copy(phantom_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(phantom_dir, tmp_path / "data"))


def _edit_label(path: Path, edit) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    edit(data)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))


# ------------------------------------------------------------------------------------- config
def test_config_defaults_and_lists_become_tuples():
    config = ExplorationConfig()
    assert (config.dataset, config.label_map, config.spatial_dims, config.phantom_cases) == ("phantom", "btcv", 3, 8)
    assert (config.max_cases, config.n_report_examples, config.hu_range) == (0, 3, (-300.0, 400.0))
    assert (config.output_dir, config.overwrite) == ("runs/explore", False)
    built = config_from_dict(ExplorationConfig, {"hu_range": [-200, 300], "phantom_shape": [32, 32, 16]})
    assert built.hu_range == (-200.0, 300.0) and built.phantom_shape == (32, 32, 16)
    assert built == dataclasses.replace(config, hu_range=(-200.0, 300.0), phantom_shape=(32, 32, 16))


@pytest.mark.parametrize("overrides, message", [
    ({"hu_range": (400.0, -300.0)}, "hu_range must be \\[low, high\\] with low < high"),
    ({"label_map": "btcx"}, "label_map: unknown label map 'btcx'"),
    ({"spatial_dims": 4}, "spatial_dims must be one of \\[2, 3\\], got 4"),
    ({"phantom_shape": (32, 32)}, "phantom_shape must be empty or 3 positive integers"),
    ({"phantom_spacing": (1.0, 0.0, 1.0)}, "phantom_spacing must be empty or 3 positive numbers"),
    ({"max_cases": -1}, "max_cases must be an integer >= 0, got -1"),
    ({"phantom_cases": 0}, "phantom_cases must be an integer >= 1, got 0"),
    ({"output_dir": ""}, "output_dir must be a non-empty string"),
])
def test_config_names_the_bad_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ExplorationConfig(**overrides)


def test_config_refuses_a_dataset_folder_without_cases(tmp_path):
    with pytest.raises(ValueError, match=r"dataset '.*nowhere' must be 'phantom' or a folder with a dataset.json"):
        ExplorationConfig(dataset=str(tmp_path / "nowhere"))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": []}))
    with pytest.raises(ValueError, match=r"dataset.json lists no case \(its 'training' section is empty\)"):
        ExplorationConfig(dataset=str(tmp_path))
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a JSON object"):
        ExplorationConfig(dataset=str(tmp_path))


def test_wrong_parameter_types_are_refused_with_the_name():
    with pytest.raises(ValueError, match="parameter 'phantom_cases' must be an integer, got '3'"):
        config_from_dict(ExplorationConfig, {"phantom_cases": "3"})
    with pytest.raises(ValueError, match="unknown parameter 'phantom_case' \\(did you mean 'phantom_cases'"):
        config_from_dict(ExplorationConfig, {"phantom_case": 3})


# ---------------------------------------------------------------------------------- histograms
def test_organ_histograms_count_every_voxel_once():
    rng = np.random.default_rng(0)
    image = rng.uniform(-500, 600, size=(10, 12, 6)).astype(np.float32)
    label = rng.integers(0, 4, size=image.shape).astype(np.uint8)  # spleen, kidney_right, kidney_left
    image[0, 0, 0], label[0, 0, 0] = 400.0, 1  # exactly the upper edge: in the last bin, as numpy does
    image[0, 0, 1], label[0, 0, 1] = -300.0, 1  # exactly the lower edge: first bin
    hist = organ_histograms(image, label, BTCV, (-300.0, 400.0), bins=7)
    assert list(hist["counts"]) == ["spleen", "kidney_right", "kidney_left"]  # absent organs are left out
    np.testing.assert_allclose(hist["edges"], np.linspace(-300, 400, 8))
    for organ, i in (("spleen", 1), ("kidney_right", 2), ("kidney_left", 3)):
        values = image[label == i]
        expected, _ = np.histogram(values, bins=7, range=(-300, 400))
        np.testing.assert_array_equal(hist["counts"][organ], expected)
        assert hist["below"][organ] == int((values < -300).sum()) and hist["above"][organ] == int((values > 400).sum())
        assert hist["counts"][organ].sum() + hist["below"][organ] + hist["above"][organ] == hist["voxels"][organ] == values.size
        assert hist["sum"][organ] == pytest.approx(float(values.astype(np.float64).sum()))
    with pytest.raises(ValueError, match="image shape .* and label shape .* differ"):
        organ_histograms(image, label[:-1], BTCV, (-300, 400))
    with pytest.raises(ValueError, match="hu_range must be \\(low, high\\)"):
        organ_histograms(image, label, BTCV, (400, -300))


# ------------------------------------------------------------------------------ cohort and scan
def test_open_cohort_caps_max_cases_spread_over_the_list(phantom_dir, tmp_path):
    cohort = open_cohort(_config(tmp_path, phantom_dir, max_cases=2), progress=False)
    assert [c["case_id"] for c in cohort.cases] == ["phantom_0000", "phantom_0002"]  # first and last
    assert cohort.n_total == 3 and cohort.modality == "CT" and cohort.label_map.name == "btcv"
    assert len(cohort.reports) == 2 and cohort.output_dir == tmp_path / "explore"


def test_open_cohort_generates_phantoms_once_and_reuses_them(tmp_path):
    config = ExplorationConfig(phantom_cases=2, phantom_shape=(32, 32, 16), phantom_spacing=(12.0, 12.0, 16.0),
                               output_dir=str(tmp_path / "explore"))
    cohort = open_cohort(config, progress=False)
    assert cohort.root == (tmp_path / "explore" / "data").resolve() and len(cohort.cases) == 2
    stamp = (cohort.root / "dataset.json").stat().st_mtime_ns
    assert open_cohort(config, progress=False).cases == cohort.cases
    assert (cohort.root / "dataset.json").stat().st_mtime_ns == stamp, "the same settings must reuse the cohort"


def test_case_table_has_the_phantom_grid(phantom_dir, tmp_path):
    scan = scan_cohort(open_cohort(_config(tmp_path, phantom_dir), progress=False), progress=False)
    rows = case_table(scan)
    assert [r["case_id"] for r in rows] == ["phantom_0000", "phantom_0001", "phantom_0002"]
    for row in rows:
        assert row["spacing"] == list(SPACING) and row["shape"] == list(SHAPE) == row["stored_shape"]
        assert row["axcodes"] == "RAS"
        assert row["field_of_view_mm"] == [360.0, 360.0, 288.0]
        assert row["intensity_min"] < -900 < 100 < row["intensity_max"]  # air and contrast-filled vessels, in HU
        assert 10 <= row["organs"] <= 13
    text = format_case_table(rows)
    assert "40x40x24" in text and "9 x 9 x 12" in text and "1 distinct spacing(s), orientation(s) as stored: RAS" in text


def test_case_table_reports_the_stored_orientation(phantom_dir, tmp_path):
    data = _copy(phantom_dir, tmp_path)
    for folder in ("imagesTr", "labelsTr"):  # store case 1 as LPS: flip x and y, and the affine with them
        path = data / folder / "phantom_0001.nii.gz"
        img = nib.load(str(path))
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [s - 1 for s in img.shape[:2]]
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1, ::-1], img.affine @ flip, img.header), str(path))
    scan = scan_cohort(open_cohort(_config(tmp_path, data), progress=False), progress=False)
    assert [r["axcodes"] for r in case_table(scan)] == ["RAS", "LPS", "RAS"]
    assert label_audit(scan)["ok"], "an LPS pair is still on one grid"
    assert scan.cases[1].organ_voxels == scan_cohort(
        open_cohort(_config(tmp_path / "b", phantom_dir), progress=False), progress=False).cases[1].organ_voxels


def test_hu_histograms_sum_to_the_voxels_of_each_organ(phantom_dir, tmp_path):
    scan = scan_cohort(open_cohort(_config(tmp_path, phantom_dir, hu_range=(-100.0, 200.0)), progress=False),
                       hu_range=(-100.0, 200.0), bins=30, progress=False)
    hist = hu_histograms(scan)
    assert hist["unit"] == "HU" and hist["n_cases"] == 3 and len(hist["edges"]) == 31
    labels = [np.asanyarray(nib.load(str(phantom_dir / "labelsTr" / f"phantom_000{i}.nii.gz")).dataobj) for i in range(3)]
    for organ, o in hist["organs"].items():
        in_files = sum(int((lab == BTCV.id_of(organ)).sum()) for lab in labels)
        assert sum(o["counts"]) + o["below"] + o["above"] == o["voxels"] == in_files
    liver = hist["organs"]["liver"]
    assert 40 < liver["mean"] < 160  # enhanced liver parenchyma
    assert sum(liver["counts"]) > 0.9 * liver["voxels"]


# --------------------------------------------------------------------------------- label audit
def test_label_audit_raises_on_a_planted_value_and_names_the_file(phantom_dir, tmp_path):
    data = _copy(phantom_dir, tmp_path)
    bad = data / "labelsTr" / "phantom_0001.nii.gz"
    _edit_label(bad, lambda a: a.__setitem__((5, 5, 5), 77))
    scan = scan_cohort(open_cohort(_config(tmp_path, data), progress=False), progress=False)
    with pytest.raises(ValueError) as err:
        label_audit(scan)
    message = str(err.value)
    assert "label audit failed for 1 of 3 case(s)" in message and "expected values [0, 1, 2" in message
    assert str(bad) in message and "[77]" in message and "phantom_0001" in message
    assert "phantom_0000" not in message and "phantom_0002" not in message

    audit = label_audit(scan, strict=False)
    rows = {r["case_id"]: r for r in audit["cases"]}
    assert not audit["ok"] and list(audit["failures"]) == ["phantom_0001"]
    assert rows["phantom_0001"]["unexpected_values"] == [77] and 77 in rows["phantom_0001"]["values_found"]
    assert rows["phantom_0000"]["ok"] and rows["phantom_0000"]["unexpected_values"] == []
    assert "phantom_0001  " in format_label_audit(audit) and "FAILED" in format_label_audit(audit)
    # a failing mask gives no organ numbers: the sizes rest on the two good cases
    assert organ_volumes(scan)["n_cases"] == 2


def test_label_audit_passes_clean_masks_and_lists_values_found(phantom_dir, tmp_path):
    scan = scan_cohort(open_cohort(_config(tmp_path, phantom_dir), progress=False), progress=False)
    audit = label_audit(scan)
    assert audit["ok"] and audit["expected_values"] == list(range(14)) and audit["n_checked"] == 3
    for row, case in zip(audit["cases"], scan.cases):
        assert row["values_found"] == [0] + [BTCV.id_of(o) for o in case.organ_voxels]
    assert format_label_audit(audit).startswith("Label audit against 'btcv': expected values 0..13; all masks pass")


def test_scan_refuses_images_of_the_other_dimension(phantom_dir, tmp_path):
    cohort = open_cohort(_config(tmp_path, phantom_dir), progress=False)
    with pytest.raises(ValueError, match=r"spatial_dims=2 but .*phantom_0000.nii.gz is a 3D image .* set spatial_dims=3"):
        scan_cohort(cohort, progress=False, spatial_dims=2)


# --------------------------------------------------------------------------------- organ sizes
def test_organ_volumes_in_ml_with_absent_organs_counted(phantom_dir, tmp_path):
    data = _copy(phantom_dir, tmp_path)
    spleen = BTCV.id_of("spleen")
    _edit_label(data / "labelsTr" / "phantom_0002.nii.gz", lambda a: a.__setitem__(a == spleen, 0))
    scan = scan_cohort(open_cohort(_config(tmp_path, data), progress=False), progress=False)
    volumes = organ_volumes(scan)
    assert volumes["unit"] == "ml" and volumes["n_cases"] == 3 and list(volumes["organs"]) == list(BTCV.foreground_names)
    voxel_ml = np.prod(SPACING) / 1000.0
    for case in scan.cases:
        for organ, n in case.organ_voxels.items():
            assert volumes["organs"][organ]["sizes"][case.case_id] == pytest.approx(n * voxel_ml)
    s = volumes["organs"]["spleen"]
    assert "phantom_0002" in s["absent_cases"] and "phantom_0002" not in s["sizes"]
    assert s["n_absent"] == len(s["absent_cases"]) >= 1 and s["n_present"] + s["n_absent"] == 3
    assert s["median"] == pytest.approx(float(np.median(list(s["sizes"].values()))))
    liver = volumes["organs"]["liver"]
    assert liver["n_absent"] == 0 and 800 < liver["median"] < 3000  # an adult liver is 1-2 litres
    ax = plot_organ_volumes(volumes, BTCV)
    notes = [t.get_text() for t in ax.texts]
    assert f"absent\n{s['n_absent']}/3" in notes
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == list(BTCV.foreground_names)


# --------------------------------------------------------------------------------------- tags
def _marks(fragment: str) -> list[tuple[str, str, str]]:
    """(marked text, data-tags, data-value) of every <mark> of a highlighted report."""
    found = re.findall(r'<mark data-tags="([^"]*)" data-value="([^"]*)"[^>]*>(.*?)</mark>', fragment)
    return [(html.unescape(text), tags, value) for tags, value, text in found]


def test_highlight_report_marks_the_trigger_words():
    report = ("No splenomegaly. Status post cholecystectomy. The gallbladder is not well seen.\n"
              "The LIVER is normal. No liver lesion. Left renal cyst. Note: <b> & more.")
    fragment = highlight_report(report, "btcv")
    assert _marks(fragment) == [
        ("splenomegaly", "spleen=present", "present"),
        ("cholecystectomy", "gallbladder=absent", "absent"),
        ("gallbladder", "gallbladder=uncertain", "uncertain"),
        ("LIVER", "liver=present", "present"),  # the report's own case is kept
        ("liver", "liver=present", "present"),  # a repeated word is marked where each vote came from
        ("renal cyst", "kidney_left=present", "present"),
    ]
    plain = html.unescape(re.sub(r"</?(mark|div)[^>]*>", "", fragment))
    assert plain == report, "outside the marks the report must be unchanged (and escaped)"
    assert "&lt;b&gt; &amp; more" in fragment
    assert 'title="gallbladder: absent (removal)"' in fragment


def test_highlight_report_one_mention_for_both_sides():
    marks = _marks(highlight_report("Both kidneys are normal. The spleen is surgically absent.", BTCV))
    assert marks == [("kidneys", "kidney_right=present kidney_left=present", "present"),
                     ("spleen", "spleen=absent", "absent")]
    assert _marks(highlight_report("Unremarkable study.", BTCV)) == []


def _cohort(reports: list[str], tags: list[dict] | None = None) -> Cohort:
    cases = [{"case_id": f"c{i}", "image": f"c{i}.nii.gz", "report": r, **({"tags": tags[i]} if tags else {})}
             for i, r in enumerate(reports)]
    return Cohort(root=Path("."), cases=tuple(cases), n_total=len(cases), label_map=BTCV, modality="CT",
                  output_dir=Path("out"))


REPORTS = ["The liver is normal.", "Status post splenectomy. The liver is normal.",
           "The gallbladder is not well seen.", "No splenomegaly.", "Normal liver and spleen."]


def test_tag_frequencies_count_the_four_categories():
    truth = [{"liver": 1, "spleen": -1}, {"liver": 1, "spleen": 0}, {"liver": -1, "gallbladder": -1},
             {"spleen": 1}, {"liver": 1, "spleen": 0}]  # the last spleen tag is deliberately wrong
    freq = tag_frequencies(_cohort(REPORTS, truth))
    assert freq["n_reports"] == 5
    assert freq["organs"]["liver"] == {"present": 3, "absent": 0, "uncertain": 0, "unmentioned": 2}
    assert freq["organs"]["spleen"] == {"present": 2, "absent": 1, "uncertain": 0, "unmentioned": 2}
    assert freq["organs"]["gallbladder"] == {"present": 0, "absent": 0, "uncertain": 1, "unmentioned": 4}
    assert all(sum(c.values()) == 5 for c in freq["organs"].values())
    assert freq["generator_agreement"] == {"n_pairs": 9, "n_agree": 8, "accuracy": 8 / 9}
    assert "parser vs the generator's tags: 8/9" in format_tag_frequencies(freq)
    ax = plot_tag_frequencies(freq)
    widths = [p.get_width() for p in ax.patches]
    organs = len(BTCV.foreground_names)
    liver = BTCV.foreground_names.index("liver")
    assert [widths[k * organs + liver] for k in range(len(TAG_CATEGORIES))] == [3, 0, 0, 2]
    with pytest.raises(ValueError, match="ground-truth tag of 'liver' must be 1, 0 or -1, got 2"):
        tag_frequencies(_cohort(["The liver is normal."], [{"liver": 2}]))


def test_report_examples_show_an_absence_and_an_uncertainty_first():
    examples = report_examples(_cohort(REPORTS), n=2, seed=3)
    assert [e["case_id"] for e in examples] == ["c1", "c2"]
    assert examples[0]["tags"]["spleen"] == "absent" and examples[1]["tags"]["gallbladder"] == "uncertain"
    assert '<mark data-tags="spleen=absent"' in examples[0]["html"]
    assert len(report_examples(_cohort(REPORTS), n=10)) == 5 and report_examples(_cohort([]), n=3) == []
    with pytest.raises(ValueError, match="n \\(number of report examples\\) must be >= 0"):
        report_examples(_cohort(REPORTS), n=-1)


# ---------------------------------------------------------------------------------- pictures
def test_histogram_plot_draws_one_line_per_organ_in_its_colour(phantom_dir, tmp_path):
    scan = scan_cohort(open_cohort(_config(tmp_path, phantom_dir), progress=False), progress=False)
    hist = hu_histograms(scan)
    ax = plot_hu_histograms(hist, BTCV)
    lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
    assert list(lines) == list(hist["organs"])
    np.testing.assert_allclose(lines["liver"].get_color(), BTCV.colors()["liver"])
    o = hist["organs"]["liver"]
    area = float(np.sum(lines["liver"].get_ydata() * np.diff(hist["edges"])))
    assert area == pytest.approx(sum(o["counts"]) / o["voxels"])  # share of the liver inside hu_range
    empty = plot_hu_histograms({**hist, "organs": {}}, BTCV)
    assert not empty.get_lines() and "no organ voxels" in empty.texts[0].get_text()


def test_orthogonal_slices_show_three_views_and_the_organs(phantom_dir, tmp_path):
    scan = scan_cohort(open_cohort(_config(tmp_path, phantom_dir), progress=False), progress=False)
    fig = plot_orthogonal_slices(scan, case_id="phantom_0001")
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["axial", "coronal", "sagittal"]
    assert all(len(ax.images) == 2 for ax in fig.axes)  # the scan and the label overlay
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [o for o in BTCV.foreground_names if o in scan.cases[1].organ_voxels]
    assert fig._suptitle.get_text().startswith("phantom_0001: 40x40x24 voxels of 9 x 9 x 12 mm")
    with pytest.raises(ValueError, match="case_id 'nope' is not among the explored cases"):
        plot_orthogonal_slices(scan, case_id="nope")


# ----------------------------------------------------------------------------------- writing
def test_write_exploration_is_complete_and_refuses_to_overwrite(phantom_dir, tmp_path):
    config = _config(tmp_path, phantom_dir)
    cohort = open_cohort(config, progress=False)
    scan = scan_cohort(cohort, progress=False)
    record = exploration_record(config, cohort, label_audit(scan), case_table(scan), hu_histograms(scan),
                                organ_volumes(scan), tag_frequencies(cohort), report_examples(cohort, 2))
    written = write_exploration(config, record, {"organ_sizes": plot_organ_volumes(organ_volumes(scan), BTCV)},
                                report_html="<p>reports</p>")
    out = tmp_path / "explore"
    assert sorted(p.name for p in out.iterdir()) == ["exploration.json", "organ_sizes.png", "report_examples.html"]
    assert (out / "organ_sizes.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / EXPLORATION_FILE).read_text())  # strict JSON: no NaN
    assert saved["config"]["output_dir"] == str(out) and saved["data"]["n_cases"] == 3
    assert saved["cases"][0]["spacing"] == list(SPACING) and saved["label_audit"]["ok"] is True
    assert saved["files"] == {"organ_sizes": "organ_sizes.png", "report_html": "report_examples.html"}
    assert len(saved["report_examples"]) == 2 and "html" not in saved["report_examples"][0]
    assert written["json"] == out / EXPLORATION_FILE and not list(out.glob(".*tmp*"))

    with pytest.raises(FileExistsError, match="output_dir: .*explore already holds results.*overwrite"):
        write_exploration(config, record)
    with pytest.raises(FileExistsError, match="output_dir: .*explore already holds results"):
        open_cohort(config, progress=False)
    again = write_exploration(dataclasses.replace(config, overwrite=True), record)
    assert set(again) == {"json"}


def test_write_exploration_refuses_a_figure_name_with_a_folder(tmp_path):
    config = ExplorationConfig(output_dir=str(tmp_path / "explore"))
    with pytest.raises(ValueError, match="figure name '../x' must be a plain file name"):
        write_exploration(config, {}, {"../x": plt.figure()})
    assert not (tmp_path / "explore" / EXPLORATION_FILE).exists()
