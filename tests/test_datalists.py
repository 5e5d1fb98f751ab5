"""Data lists: MSD dataset.json, image-report manifests, load_dataset detection, splits."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mosmoskit.data.datalists import (
    CaseList,
    case_id_from_path,
    load_dataset,
    load_image_report_pairs,
    load_msd_datalist,
    split_cases,
)
from mosmoskit.labels import load_label_map

BTCV_LABELS_MSD = {str(i): n for n, i in load_label_map("btcv").labels.items()}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # existence is all a data list checks
    return path


def make_msd(root: Path, n: int = 3, labels=None, extra: dict | None = None, create: bool = True) -> Path:
    entries = []
    for i in range(n):
        name = f"case_{i:02d}.nii.gz"
        if create:
            touch(root / "imagesTr" / name)
            touch(root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    data = {
        "name": "toy",
        "labels": labels if labels is not None else BTCV_LABELS_MSD,
        "training": entries,
        "test": [f"./imagesTr/case_{0:02d}.nii.gz"],
        "modality": {"0": "CT"},
        **(extra or {}),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


# ---------------------------------------------------------------------------------------------
# MSD
# ---------------------------------------------------------------------------------------------
def test_msd_paths_resolved_relative_to_json_and_label_map_built(tmp_path):
    dj = make_msd(tmp_path / "Task09", n=2)
    cases, lm = load_msd_datalist(dj)
    assert [c["case_id"] for c in cases] == ["case_00", "case_01"]
    assert cases[1]["image"] == str((tmp_path / "Task09" / "imagesTr" / "case_01.nii.gz").resolve())
    assert cases[1]["label"] == str((tmp_path / "Task09" / "labelsTr" / "case_01.nii.gz").resolve())
    assert lm.name == "toy" and lm.labels == load_label_map("btcv").labels
    test, _ = load_msd_datalist(dj, section="test")
    assert test == [{"image": cases[0]["image"], "case_id": "case_00"}]


def test_msd_labels_in_name_to_id_form_and_synonyms(tmp_path):
    # AMOS-style names ("right kidney", "postcava") reach the same canonical names
    labels = {"background": 0, "spleen": 1, "right kidney": 2, "postcava": 3}
    _, lm = load_msd_datalist(make_msd(tmp_path, n=1, labels=labels))
    assert lm.names == ("background", "spleen", "kidney_right", "inferior_vena_cava")
    _, lm2 = load_msd_datalist(make_msd(tmp_path / "b", n=1, labels={str(v): k for k, v in labels.items()}))
    assert lm2.labels == lm.labels


def test_msd_label_map_must_agree_by_name(tmp_path):
    _, lm = load_msd_datalist(make_msd(tmp_path / "ok", n=1), label_map="btcv")
    assert lm.name == "btcv"
    swapped = dict(BTCV_LABELS_MSD)
    swapped["1"], swapped["2"] = swapped["2"], swapped["1"]
    with pytest.raises(ValueError, match=r"disagree with label map 'btcv'.*different ids: \['kidney_right: 1 in the json, 2 in the map', 'spleen: 2 in the json, 1 in the map'\]"):
        load_msd_datalist(make_msd(tmp_path / "swap", n=1, labels=swapped), label_map="btcv")
    renamed = dict(BTCV_LABELS_MSD)
    renamed["4"] = "gall stone"
    with pytest.raises(ValueError, match=r"only in the json: \['gall_stone'\]; only in label map 'btcv': \['gallbladder'\]"):
        load_msd_datalist(make_msd(tmp_path / "ren", n=1, labels=renamed), label_map=load_label_map("btcv"))


def test_msd_label_map_key_and_raw_values(tmp_path):
    _, lm = load_msd_datalist(make_msd(tmp_path / "a", n=1, extra={"label_map": "btcv"}))
    assert lm.name == "btcv"
    mmwhs = load_label_map("mmwhs")
    raw_labels = {str(v): k for k, v in mmwhs.raw_values.items()}  # files store 205, 420, ...
    _, lm = load_msd_datalist(make_msd(tmp_path / "heart", n=1, labels=raw_labels), label_map="mmwhs")
    assert lm.name == "mmwhs"
    with pytest.raises(ValueError, match=r"do not form a label map.*pass label_map= a map with raw_values"):
        load_msd_datalist(make_msd(tmp_path / "heart2", n=1, labels=raw_labels))


def test_msd_missing_files_listed_with_count(tmp_path):
    dj = make_msd(tmp_path, n=6, create=False)  # 12 files, none on disk
    with pytest.raises(FileNotFoundError, match=r"12 file\(s\) listed do not exist") as info:
        load_msd_datalist(dj)
    msg = str(info.value)
    assert msg.count("dataset.json training[") == 10 and "... and 2 more" in msg
    assert "training[0] image:" in msg


def test_msd_structure_errors(tmp_path):
    dj = make_msd(tmp_path, n=1)
    with pytest.raises(ValueError, match=r"no section 'validation'; list-valued sections are \['training', 'test'\]"):
        load_msd_datalist(dj, section="validation")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_msd_datalist(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="nothing.json: no such file"):
        load_msd_datalist(tmp_path / "nothing.json")
    data = json.loads(dj.read_text())
    data["training"].append({"label": "./labelsTr/case_00.nii.gz"})
    dj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"training\[1\] has no 'image' key"):
        load_msd_datalist(dj)
    data["training"][1] = dict(data["training"][0])  # same image twice
    dj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"case ids must be unique; repeated:\n  'case_00' \(entries 0 and 1\)"):
        load_msd_datalist(dj)


def test_paths_may_not_escape_the_root(tmp_path):
    root = tmp_path / "data"
    dj = make_msd(root, n=1)
    outside = touch(tmp_path / "secret.nii.gz")
    data = json.loads(dj.read_text())
    data["training"][0]["image"] = "../../etc/passwd"
    dj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"path '../../etc/passwd' resolves to .* outside the data root .*allow_outside_root=True"):
        load_msd_datalist(dj)
    # a symlink inside the root that points outside is caught too (symlinks are resolved)
    os.symlink(outside, root / "imagesTr" / "link.nii.gz")
    data["training"][0]["image"] = "./imagesTr/link.nii.gz"
    dj.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="outside the data root"):
        load_msd_datalist(dj)
    cases, _ = load_msd_datalist(dj, allow_outside_root=True)
    assert cases[0]["image"] == str(outside.resolve())
    # data_root moves both the base of relative paths and the fence
    data["training"][0] = {"image": "secret.nii.gz"}
    dj.write_text(json.dumps(data))
    data_root_cases, _ = load_msd_datalist(dj, data_root=tmp_path)
    assert data_root_cases[0]["image"] == str(outside.resolve())


# ---------------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict], fieldnames=None) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames or list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_manifest(tmp_path):
    touch(tmp_path / "img" / "a.nii.gz")
    touch(tmp_path / "img" / "b.nii.gz")
    touch(tmp_path / "seg" / "a.nii.gz")
    path = write_csv(
        tmp_path / "pairs.csv",
        [
            {"case_id": "", "image": "img/a.nii.gz", "report": "Liver normal.", "label": "seg/a.nii.gz"},
            {"case_id": "patient_7", "image": "img/b.nii.gz", "report": "No spleen.", "label": ""},
        ],
    )
    cases = load_image_report_pairs(path)
    assert cases[0] == {
        "case_id": "a", "image": str((tmp_path / "img" / "a.nii.gz").resolve()),
        "report": "Liver normal.", "label": str((tmp_path / "seg" / "a.nii.gz").resolve()),
    }
    assert cases[1]["case_id"] == "patient_7" and "label" not in cases[1]


def test_manifest_errors_name_file_and_row(tmp_path):
    touch(tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"nocol.csv: missing column\(s\) \['report'\]; header has \['image', 'text'\]"):
        load_image_report_pairs(write_csv(tmp_path / "nocol.csv", [{"image": "a.nii.gz", "text": "x"}]))
    empty_report = write_csv(
        tmp_path / "empty.csv", [{"image": "a.nii.gz", "report": "ok"}, {"image": "a.nii.gz", "report": "   "}]
    )
    with pytest.raises(ValueError, match=r"empty.csv row 3: report must be non-empty text, got '   '"):
        load_image_report_pairs(empty_report)
    missing = write_csv(tmp_path / "missing.csv", [{"image": "gone.nii.gz", "report": "ok"}])
    with pytest.raises(FileNotFoundError, match=r"missing.csv row 2 image: .*gone.nii.gz"):
        load_image_report_pairs(missing)
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(json.dumps({"image": "a.nii.gz", "report": "fine"}) + "\n\n" + json.dumps({"image": "a.nii.gz", "report": 3}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl line 3: report must be non-empty text, got 3"):
        load_image_report_pairs(jl)
    jl.write_text('{"image": "a.nii.gz", "report": "x"}\n{"image": \n')
    with pytest.raises(ValueError, match=r"pairs.jsonl line 2: not valid JSON"):
        load_image_report_pairs(jl)
    jl.write_text(json.dumps({"image": "a.nii.gz", "report": "x"}) + "\n" + json.dumps({"image": "a.nii.gz", "report": "y"}) + "\n")
    with pytest.raises(ValueError, match="case ids must be unique"):
        load_image_report_pairs(jl)
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="blank.jsonl: manifest holds no rows"):
        load_image_report_pairs(tmp_path / "blank.jsonl")
    (tmp_path / "x.tsv").write_text("image\treport\n")
    with pytest.raises(ValueError, match=r"manifest must be .csv or .jsonl"):
        load_image_report_pairs(tmp_path / "x.tsv")


# ---------------------------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------------------------
def test_load_dataset_detects_each_layout(tmp_path):
    dj = make_msd(tmp_path / "ds", n=3)
    rows = [
        {"case_id": "case_00", "image": "imagesTr/case_00.nii.gz", "report": "Liver normal.", "tags": {"liver": 1}},
        {"case_id": "other_name", "image": "imagesTr/case_02.nii.gz", "report": "Spleen absent."},
    ]
    (tmp_path / "ds" / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset(tmp_path / "ds")
    assert isinstance(data, CaseList) and data.kind == "msd+reports" and data.source == dj
    assert data.case_ids == ["case_00", "case_01", "case_02"]
    assert data.cases[0]["report"] == "Liver normal." and data.cases[0]["tags"] == {"liver": 1}
    assert "report" not in data.cases[1]
    assert data.cases[2]["report"] == "Spleen absent."  # joined by image path, not by id
    assert [c["case_id"] for c in data.with_reports] == ["case_00", "case_02"]
    assert data.label_map.labels == load_label_map("btcv").labels

    assert load_dataset(dj).kind == "msd"
    manifest = load_dataset(tmp_path / "ds" / "reports.jsonl")
    assert manifest.kind == "manifest" and manifest.label_map is None and len(manifest) == 2
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither dataset.json nor reports.jsonl"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset(tmp_path / "absent")


def test_load_dataset_on_a_phantom_cohort(tmp_path):
    from mosmoskit.data.phantom import generate_cohort

    root = generate_cohort(tmp_path / "ph", n=3, seed=0, shape=(24, 24, 16), spacing=(16.0, 16.0, 20.0), progress=False)
    data = load_dataset(root)
    assert data.kind == "msd+reports" and len(data) == 3
    assert data.label_map.name == "btcv"
    assert all(isinstance(c["report"], str) and c["report"] for c in data.cases)
    assert all(Path(c["label"]).is_file() and Path(c["image"]).is_file() for c in data.cases)


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
IDS = [f"p{i:02d}" for i in range(10)]


def test_split_is_deterministic_and_independent_of_input_order():
    sizes = {"train": 0.7, "val": 0.1, "test": 0.2}
    a = split_cases(IDS, sizes, seed=3)
    b = split_cases(list(reversed(IDS)), sizes, seed=3)
    c = split_cases(list(np.random.default_rng(1).permutation(IDS)), sizes, seed=3)
    assert a == b == c
    assert [len(v) for v in a.values()] == [7, 1, 2]
    assert sorted(sum(a.values(), [])) == IDS and all(v == sorted(v) for v in a.values())
    assert split_cases(IDS, sizes, seed=4) != a
    # reference: the documented algorithm written out by hand
    order = np.random.default_rng(3).permutation(10)
    shuffled = [IDS[i] for i in order]
    assert a == {"train": sorted(shuffled[:7]), "val": sorted(shuffled[7:8]), "test": sorted(shuffled[8:])}


def test_split_counts_rest_and_minimum_one():
    out = split_cases(IDS, {"test": 3, "train": None}, seed=0)
    assert len(out["test"]) == 3 and len(out["train"]) == 7
    tiny = split_cases(IDS[:3], {"train": 0.9, "val": 0.05, "test": 0.05}, seed=0)
    assert [len(v) for v in tiny.values()] == [1, 1, 1]
    rounding = split_cases(IDS[:7], {"a": 0.5, "b": 0.5}, seed=0)
    assert sorted(len(v) for v in rounding.values()) == [3, 4]


def test_split_keeps_a_patient_together():
    slices = [f"p{p}_s{s}" for p in range(6) for s in range(4)]
    out = split_cases(slices, {"train": 0.5, "test": 0.5}, seed=0, groups=lambda c: c.split("_")[0])
    train_patients = {c.split("_")[0] for c in out["train"]}
    test_patients = {c.split("_")[0] for c in out["test"]}
    assert not train_patients & test_patients and len(train_patients) == len(test_patients) == 3
    assert len(out["train"]) == 12
    with pytest.raises(ValueError, match=r"groups has no patient for case ids \['p0_s0'"):
        split_cases(slices, {"all": 1.0}, groups={})


@pytest.mark.parametrize(
    ("ids", "sizes", "message"),
    [
        (IDS, {"a": 0.5, "b": 0.4}, "sum to 0.9; they must sum to 1"),
        (IDS, {"a": 5, "b": 4}, "sum to 9, but there are 10 cases"),
        (IDS, {"a": 5, "b": 0.5}, "mix counts"),
        (IDS, {"a": -0.5, "b": 1.5}, "must be a non-negative number"),
        (IDS, {"a": None, "b": None}, "at most one split may be None"),
        (IDS[:2], {"a": 0.4, "b": 0.3, "c": 0.3}, "3 non-empty splits"),
        (["x", "y", "x"], {"a": 1.0}, r"repeated: \['x'\]"),
        (IDS, {}, "at least one split"),
    ],
)
def test_split_rejects_bad_sizes(ids, sizes, message):
    with pytest.raises(ValueError, match=message):
        split_cases(ids, sizes)


def test_case_id_from_path():
    assert case_id_from_path("/d/imagesTr/img0001.nii.gz") == "img0001"
    assert case_id_from_path("x/scan.nii") == "scan"
    assert case_id_from_path("dicom/series_12") == "series_12"
