"""BTCV and AMOS recipes: the converters of ``mosmoskit.data.public`` on fake downloads built from phantoms, the
``convert`` command, and the two study files (their parameters, their settings, and a tiny end-to-end run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from mosmoskit import cli
from mosmoskit.data.datalists import load_dataset
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.public import convert_amos, convert_btcv, slice_volumes
from mosmoskit.labels import load_label_map

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
PHANTOM_STUDY = STUDIES / "phantom_label_fraction.yaml"
RECIPES = {"btcv": STUDIES / "btcv_label_fraction.yaml", "amos": STUDIES / "amos_label_fraction.yaml"}
#: The release's label names, as amos22's dataset.json spells them (misspelling included).
AMOS22_NAMES = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
                "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
                "prostate/uterus"]
BTCV_NUMBERS = (1, 2, 3, 21)  # BTCV's case numbers are not consecutive


# ------------------------------------------------------------------------------ fake downloads
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Four small 3D phantoms (BTCV ids), the material of every fake download."""
    return generate_cohort(tmp_path_factory.mktemp("phantoms") / "cohort", n=4, seed=0, shape=(48, 48, 32),
                           spacing=(8.0, 8.0, 10.0), progress=False)


def _images(phantoms: Path) -> list[Path]:
    return sorted((phantoms / "imagesTr").glob("*.nii.gz"))


def make_btcv_raw(phantoms: Path, raw: Path) -> Path:
    """Synapse's RawData layout: Training/img/img0001.nii.gz and Training/label/label0001.nii.gz."""
    for sub in ("img", "label"):
        (raw / "Training" / sub).mkdir(parents=True, exist_ok=True)
    for number, image in zip(BTCV_NUMBERS, _images(phantoms)):
        shutil.copy(image, raw / "Training" / "img" / f"img{number:04d}.nii.gz")
        shutil.copy(phantoms / "labelsTr" / image.name, raw / "Training" / "label" / f"label{number:04d}.nii.gz")
    return raw


def make_amos22(phantoms: Path, root: Path, names: list[str] = AMOS22_NAMES) -> Path:
    """The amos22 layout: cases 1 and 507 (a pretend MRI) in training, 2 in validation, 3 in test (no label).

    Masks are written with the ids that ``names`` gives each organ (moved there from BTCV by name).
    """
    btcv = load_label_map("btcv")
    release = {"name": "AMOS", "labels": {str(i): n for i, n in enumerate(names)},
               "training": [], "validation": [], "test": []}
    from mosmoskit.labels import LabelMap

    release_map = LabelMap("amos22", {n: i for i, n in enumerate(names)})
    to_release = btcv.remap_to(release_map, drop_unmatched=True)  # the portal vein has no AMOS label
    for (number, section), image in zip(((1, "training"), (2, "validation"), (3, "test"), (507, "training")),
                                        _images(phantoms)):
        part = {"training": "Tr", "validation": "Va", "test": "Ts"}[section]
        name = f"amos_{number:04d}.nii.gz"
        (root / f"images{part}").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / f"images{part}" / name)
        if section == "test":
            release["test"].append({"image": f"./imagesTs/{name}"})
            continue
        (root / f"labels{part}").mkdir(parents=True, exist_ok=True)
        mask = nib.load(phantoms / "labelsTr" / image.name)
        ids = to_release(np.asarray(mask.dataobj)).astype(np.uint8)
        nib.save(nib.Nifti1Image(ids, mask.affine), root / f"labels{part}" / name)
        release[section].append({"image": f"./images{part}/{name}", "label": f"./labels{part}/{name}"})
    (root / "dataset.json").write_text(json.dumps(release, indent=1))
    return root


def _values(path: Path | str) -> set[int]:
    return {int(v) for v in np.unique(np.asarray(nib.load(str(path)).dataobj))}


# ------------------------------------------------------------------------------------- BTCV
def test_convert_btcv_writes_an_msd_folder_with_the_btcv_map(phantoms, tmp_path):
    raw = make_btcv_raw(phantoms, tmp_path / "RawData")
    out = convert_btcv(raw, tmp_path / "btcv")
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"img{n:04d}.nii.gz" for n in BTCV_NUMBERS]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"label{n:04d}.nii.gz" for n in BTCV_NUMBERS]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"]["11"] == "pancreas" and dataset["labels"]["0"] == "background"
    assert dataset["numTraining"] == 4 and dataset["training"][3] == {"image": "./imagesTr/img0021.nii.gz",
                                                                      "label": "./labelsTr/label0021.nii.gz"}
    cases = load_dataset(out, label_map="btcv")
    assert cases.case_ids == ["img0001", "img0002", "img0003", "img0021"]
    # copies, byte for byte, of the download
    first = _images(phantoms)[0]
    assert (out / "imagesTr" / "img0001.nii.gz").read_bytes() == first.read_bytes()
    assert _values(out / "labelsTr" / "label0001.nii.gz") == _values(phantoms / "labelsTr" / first.name)
    assert max(_values(out / "labelsTr" / "label0001.nii.gz")) >= 10  # BTCV ids kept (portal vein 10)
    # the Training folder itself is accepted too; a non-empty out_dir only with overwrite
    with pytest.raises(FileExistsError, match="not empty"):
        convert_btcv(raw / "Training", out)
    assert convert_btcv(raw / "Training", out, overwrite=True) == out


def test_convert_btcv_errors_name_the_file_and_write_nothing(phantoms, tmp_path):
    raw = make_btcv_raw(phantoms, tmp_path / "RawData")
    out = tmp_path / "btcv"
    with pytest.raises(FileNotFoundError, match="Training/img"):
        convert_btcv(tmp_path / "nowhere", out)
    (raw / "Training" / "label" / "label0003.nii.gz").rename(tmp_path / "label0003.nii.gz")
    with pytest.raises(ValueError, match=r"img0003\.nii\.gz: image without label"):
        convert_btcv(raw, out)
    (tmp_path / "label0003.nii.gz").rename(raw / "Training" / "label" / "label0003.nii.gz")
    (raw / "Training" / "img" / "img0021.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"label0021\.nii\.gz: label without image"):
        convert_btcv(raw, out)
    (raw / "Training" / "label" / "label0021.nii.gz").unlink()
    # a mask value that is no btcv id
    bad = raw / "Training" / "label" / "label0002.nii.gz"
    mask = nib.load(bad)
    data = np.asarray(mask.dataobj).copy()
    data[0, 0, 0] = 17
    nib.save(nib.Nifti1Image(data, mask.affine), bad)
    with pytest.raises(ValueError, match=r"label0002\.nii\.gz: label values \[17\] are not in label map 'btcv'"):
        convert_btcv(raw, out)
    assert not out.exists()  # every check runs before the first file is written
    empty = tmp_path / "Empty" / "Training"
    (empty / "img").mkdir(parents=True)
    (empty / "label").mkdir()
    with pytest.raises(ValueError, match="no cases"):
        convert_btcv(empty.parent, out)


# ------------------------------------------------------------------------------------- AMOS
def test_convert_amos_keeps_ct_of_training_and_validation(phantoms, tmp_path):
    release = make_amos22(phantoms, tmp_path / "amos22")
    out = convert_amos(release, tmp_path / "amos_ct")
    dataset = json.loads((out / "dataset.json").read_text())
    assert [e["image"] for e in dataset["training"]] == ["./imagesTr/amos_0001.nii.gz", "./imagesTr/amos_0002.nii.gz"]
    assert [e["amos_section"] for e in dataset["training"]] == ["training", "validation"]
    assert dataset["labels"]["8"] == "aorta" and dataset["labels"]["10"] == "pancreas"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["amos_0001.nii.gz", "amos_0002.nii.gz"]
    cases = load_dataset(out, label_map="amos")
    assert cases.case_ids == ["amos_0001", "amos_0002"]  # 507 (MRI) and the unlabelled test case are gone
    # the release's ids are the kit's: masks are copied as they are
    assert (out / "labelsTr" / "amos_0002.nii.gz").read_bytes() == (release / "labelsVa" / "amos_0002.nii.gz").read_bytes()
    # MRI alone, training section alone
    mr = convert_amos(release, tmp_path / "amos_mr", modality="mr", sections=("training",))
    assert load_dataset(mr, label_map="amos").case_ids == ["amos_0507"]
    only_tr = convert_amos(release, tmp_path / "amos_tr", sections=("training",))
    assert load_dataset(only_tr, label_map="amos").case_ids == ["amos_0001"]


def test_convert_amos_remaps_by_name_not_by_id(phantoms, tmp_path):
    """A release that numbers liver and spleen the other way round ends with the kit's ids (spleen 1, liver 6)."""
    swapped = list(AMOS22_NAMES)
    swapped[1], swapped[6] = "liver", "spleen"
    release = make_amos22(phantoms, tmp_path / "amos22", names=swapped)
    source = np.asarray(nib.load(release / "labelsTr" / "amos_0001.nii.gz").dataobj)
    out = convert_amos(release, tmp_path / "amos_ct")
    converted = np.asarray(nib.load(out / "labelsTr" / "amos_0001.nii.gz").dataobj)
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(converted == 6, source == 1)  # the release's 1 (liver) is our 6
    np.testing.assert_array_equal(converted == 1, source == 6)
    np.testing.assert_array_equal(converted == 10, source == 10)  # pancreas unchanged
    np.testing.assert_allclose(nib.load(out / "labelsTr" / "amos_0001.nii.gz").affine,
                               nib.load(release / "labelsTr" / "amos_0001.nii.gz").affine)


def test_convert_amos_errors(phantoms, tmp_path):
    release = make_amos22(phantoms, tmp_path / "amos22")
    out = tmp_path / "amos_ct"
    with pytest.raises(ValueError, match="modality must be 'ct' or 'mr'"):
        convert_amos(release, out, modality="pet")
    with pytest.raises(ValueError, match=r"sections must be a non-empty subset of \['training', 'validation'\]"):
        convert_amos(release, out, sections=("test",))
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        convert_amos(tmp_path, out)
    with pytest.raises(ValueError, match=r"no MR case in sections \[.validation.\]"):
        convert_amos(release, out, sections=("validation",), modality="mr")
    # a listed file missing
    (release / "labelsVa" / "amos_0002.nii.gz").rename(tmp_path / "moved.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"labelsVa/amos_0002\.nii\.gz, which does not exist"):
        convert_amos(release, out)
    (tmp_path / "moved.nii.gz").rename(release / "labelsVa" / "amos_0002.nii.gz")
    # a mask value outside the release's labels
    bad = release / "labelsTr" / "amos_0001.nii.gz"
    mask = nib.load(bad)
    data = np.asarray(mask.dataobj).copy()
    data[1, 1, 1] = 16
    nib.save(nib.Nifti1Image(data, mask.affine), bad)
    with pytest.raises(ValueError, match=r"amos_0001\.nii\.gz: label values \[16\] are not in label map 'amos22'"):
        convert_amos(release, out)
    assert not out.exists()
    # a label name the kit's amos map does not know
    dataset = json.loads((release / "dataset.json").read_text())
    dataset["labels"]["13"] = "gut"
    (release / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"no counterpart for \['gut'\]"):
        convert_amos(release, out)


# ------------------------------------------------------------------------------ axial slices
def test_slice_volumes_keeps_patients_and_resamples_in_plane(phantoms, tmp_path):
    out = slice_volumes(phantoms, tmp_path / "slices", slices_per_case=3, spacing=(12.0, 12.0))
    cases = load_dataset(out)
    assert len(cases) == 4 * 3 and cases.kind == "msd+reports"
    first = cases.cases[0]
    assert first["case_id"] == "phantom_0000_s00" and first["parent_case"] == "phantom_0000"
    image = nib.load(first["image"])
    assert image.shape == (32, 32)  # 48 voxels of 8 mm -> 32 of 12 mm
    np.testing.assert_allclose(np.abs(np.diag(image.affine))[:2], [12.0, 12.0])
    label = np.asarray(nib.load(first["label"]).dataobj)
    assert label.dtype == np.uint8 and label.any()  # planes are taken where the mask has organs
    assert first["report"] == load_dataset(phantoms).cases[0]["report"]  # the volume's report on each slice
    assert json.loads((out / "dataset.json").read_text())["spatial_dims"] == 2
    with pytest.raises(ValueError, match="spacing must be two positive numbers"):
        slice_volumes(phantoms, tmp_path / "other", spacing=(1.5, 1.5, 2.0))
    with pytest.raises(ValueError, match="slices_per_case must be an integer >= 1"):
        slice_volumes(phantoms, tmp_path / "other", slices_per_case=0)


def test_convert_command(phantoms, tmp_path, capsys):
    raw = make_btcv_raw(phantoms, tmp_path / "RawData")
    assert cli.main(["convert", "btcv", "--src", str(raw), "--out", str(tmp_path / "btcv")]) == 0
    assert "wrote 4 training entries" in capsys.readouterr().out
    assert cli.main(["convert", "slices", "--src", str(tmp_path / "btcv"), "--out", str(tmp_path / "s"),
                     "--slices-per-case", "2", "--spacing", "16", "16"]) == 0
    assert len(load_dataset(tmp_path / "s", label_map="btcv")) == 8
    # a bad input is one clear line and exit 2
    assert cli.main(["convert", "amos", "--src", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "no dataset.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------ study files
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_study_file_is_the_phantom_study_on_real_data(name, tmp_path):
    """Every parameter is declared by its notebook (plan_sweep checks), the settings are the phantom study's."""
    from mosmoskit.notebook_runs import plan_sweep
    from mosmoskit.study import StudyAxes

    spec, _, plans = plan_sweep(RECIPES[name], tmp_path)
    phantom = yaml.safe_load(PHANTOM_STUDY.read_text())
    assert spec["grid"]["setting"] == phantom["grid"]["setting"]
    assert spec["grid"]["03.label_fraction"] == phantom["grid"]["03.label_fraction"]
    assert spec["grid"]["03.seed"] == phantom["grid"]["03.seed"]
    assert spec["study"] == phantom["study"]
    StudyAxes.from_spec(spec, str(RECIPES[name]))
    assert len(plans) == 2 * 6 * 3 * 3
    assert len({p.stage_dirs["02"] for p in plans if "02" in p.stage_dirs}) == 2 * 3
    folder = {"btcv": "data/btcv", "amos": "data/amos_ct"}[name]
    by_network = {p.point.labels["network"]: p.per_notebook for p in plans if p.point.labels["setting"] == "mosmos"}
    unetr, unet = by_network["unetr3d"], by_network["unet2d"]
    assert unetr["03"]["dataset"] == folder and unet["03"]["dataset"] == folder + "_slices"
    assert unetr["02"]["dataset"] == "data/report_pairs" and unet["02"]["dataset"] == "data/report_pairs_slices"
    assert unetr["03"]["roi_size"] == [96, 96, 96] == unetr["02"]["image_size"]
    assert unetr["03"]["spacing"] == [1.5, 1.5, 2.0] and unet["03"]["spacing"] == [1.5, 1.5]
    assert unetr["02"]["encoder_width"] == unetr["03"]["encoder_width"]  # same network for random and pre-trained
    assert 5000 <= unetr["03"]["max_steps"] <= 25000
    assert unetr["02"]["label_map"] == unetr["03"]["label_map"] == name  # fused maps need one label map
    text = RECIPES[name].read_text()
    for command in (f"python -m mosmoskit convert {name}",
                    f"python -m mosmoskit study --spec studies/{name}_label_fraction.yaml --out runs/study_{name} "
                    f"--results docs/results_{name}.md", "ESTIMATE, NOT A MEASUREMENT", "NO radiology reports"):
        assert command in text, f"{RECIPES[name].name} lacks {command!r}"


def test_study_file_commands_parse():
    """The commented command lines of the study files use real options."""
    parser = cli.build_parser()
    for path in RECIPES.values():
        comments = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        lines = [line for line in comments if line.startswith("python -m mosmoskit ")]
        assert len(lines) >= 4
        for line in lines:
            argv = line.split()[3:]
            parser.parse_args(argv)  # exits (fails the test) on an unknown option


# ----------------------------------------------------------------------------- end to end
TINY_02 = {"02.text_encoder": "tiny", "02.batch_size": 2, "02.max_steps": 2, "02.val_every": 2,
           "02.checkpoint_every": 2, "02.warmup_steps": 0, "02.num_workers": 0, "02.val_fraction": 0.25}
TINY_03 = {"03.test_fraction": 0.25, "03.max_steps": 2, "03.batch_size": 1, "03.crops_per_case": 1,
           "03.val_every": 0, "03.checkpoint_every": 2, "03.warmup_steps": 0, "03.sw_batch_size": 2,
           "03.num_workers": 0, "03.val_max_cases": 1}
TINY = {"unetr3d": {"02.image_size": [32, 32, 32], "02.encoder_width": 32, "03.encoder_width": 32,
                    "03.decoder_width": 4, "03.roi_size": [32, 32, 32], "03.spacing": [8.0, 8.0, 10.0]},
        "unet2d": {"02.image_size": [32, 32], "02.encoder_width": 8, "02.max_shift": 2, "03.encoder_width": 8,
                   "03.roi_size": [32, 32], "03.spacing": [16.0, 16.0]}}


@pytest.mark.slow
def test_recipes_run_end_to_end_on_fake_downloads(phantoms, tmp_path, monkeypatch):
    """Both study files, converted fake downloads under data/, a few grid points with tiny networks."""
    from mosmoskit.notebook_runs import run_sweep

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    convert_btcv(make_btcv_raw(phantoms, tmp_path / "RawData"), data / "btcv")
    slice_volumes(data / "btcv", data / "btcv_slices", slices_per_case=2, spacing=(16.0, 16.0))
    convert_amos(make_amos22(phantoms, tmp_path / "amos22"), data / "amos_ct")
    shutil.copytree(phantoms, data / "report_pairs")  # 3D phantoms with their reports.jsonl
    slice_volumes(data / "report_pairs", data / "report_pairs_slices", slices_per_case=2, spacing=(16.0, 16.0))
    tiny = {**TINY_02, **TINY_03, "device": "cpu"}
    # the study files name data/... relative to where the command runs (here tmp_path): the runner resolves them
    btcv_rows = run_sweep(RECIPES["btcv"], tmp_path / "study_btcv", overrides={**tiny, **TINY["unetr3d"]},
                          html=False, log=print, where={"network": "unetr3d", "setting": "mosmos_decoder",
                                                       "03.label_fraction": 1.0, "03.seed": 0})
    btcv_rows = run_sweep(RECIPES["btcv"], tmp_path / "study_btcv", overrides={**tiny, **TINY["unet2d"]},
                          html=False, log=print, where={"network": "unet2d", "setting": "random",
                                                       "03.label_fraction": 1.0, "03.seed": 0})
    done = {(r["network"], r["setting"]): r for r in btcv_rows if r["status"] == "ok"}
    assert set(done) == {("unetr3d", "mosmos_decoder"), ("unet2d", "random")}, [r["status"] for r in btcv_rows]
    assert len(btcv_rows) == 108 and sum(r["status"] == "pending" for r in btcv_rows) == 106
    for row in done.values():
        assert 0.0 <= row["mean_dice"] <= 1.0
    metrics = _metrics(tmp_path / "study_btcv", done[("unetr3d", "mosmos_decoder")]["run"])
    assert metrics["protocol"]["variant"] == "mosmos"
    assert metrics["split"]["test"]["case_ids"] == ["img0003"]  # 1 of the 4 patients (test_fraction 0.25)
    metrics2d = _metrics(tmp_path / "study_btcv", done[("unet2d", "random")]["run"])
    # slices of the converted scans, each patient's slices on one side of the split
    assert metrics2d["split"]["test"]["case_ids"] == ["img0003_s00", "img0003_s01"]
    assert metrics2d["split"]["labelled"]["patients"] == 3 and metrics2d["split"]["labelled"]["cases"] == 6

    # AMOS: a random-init point (notebook 03 alone; the fake report pairs carry BTCV labels, which an amos
    # pre-training rightly refuses: real pairs for AMOS must be labelled with the amos map)
    amos_rows = run_sweep(RECIPES["amos"], tmp_path / "study_amos",
                          overrides={**tiny, **TINY["unetr3d"], "03.test_fraction": 0.5},
                          html=False, log=print, where={"network": "unetr3d", "setting": "random",
                                                       "03.label_fraction": 1.0, "03.seed": 0})
    ok = [r for r in amos_rows if r["status"] == "ok"]
    assert [(r["network"], r["setting"]) for r in ok] == [("unetr3d", "random")]
    metrics = _metrics(tmp_path / "study_amos", ok[0]["run"])
    cases = set(metrics["split"]["test"]["case_ids"]) | set(metrics["split"]["labelled"]["case_ids"])
    assert cases == {"amos_0001", "amos_0002"}  # the MRI case never reaches fine-tuning


def _metrics(study: Path, run: str) -> dict:
    state = json.loads((study / "runs" / run / "pipeline.json").read_text())
    return json.loads((Path(state["notebooks"]["03"]["output_dir"]) / "metrics.json").read_text())
