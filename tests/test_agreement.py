"""Agreement with another model's labels on a real scan (mosmoskit.evaluation.agreement, scripts/realscan_check.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mosmoskit.evaluation.agreement import agreement_metrics, reference_agreement
from mosmoskit.labels import load_label_map

ROOT = Path(__file__).resolve().parents[1]
BTCV, TOTALSEG = load_label_map("btcv"), load_label_map("totalseg_ct")


def test_a_prediction_equal_to_the_remapped_reference_agrees_fully():
    reference = np.zeros((20, 20, 4), dtype=np.uint8)
    reference[2:8, 2:8] = TOTALSEG.id_of("liver")
    reference[10:14, 10:14] = TOTALSEG.id_of("spleen")
    reference[15:18, 2:5] = TOTALSEG.id_of("urinary_bladder")  # BTCV has no bladder: background for the model
    prediction = np.zeros_like(reference)
    prediction[2:8, 2:8] = BTCV.id_of("liver")
    prediction[10:14, 10:14] = BTCV.id_of("spleen")
    out = agreement_metrics(prediction, reference, BTCV, TOTALSEG, (1.0, 1.0, 1.0))
    assert out["organs"]["liver"]["dice"] == 1.0 and out["organs"]["spleen"]["dice"] == 1.0
    assert out["mean_dice"] == 1.0  # organs absent from both are not scored
    assert math.isnan(out["organs"]["pancreas"]["dice"]) and out["model_only"] == []

    prediction[10:14, 10:14] = BTCV.id_of("kidney_left")  # the spleen called a kidney
    out = agreement_metrics(prediction, reference, BTCV, TOTALSEG, (1.0, 1.0, 1.0))
    assert out["organs"]["spleen"]["status"] == "missed" and out["organs"]["kidney_left"]["status"] == "false_positive"
    assert out["mean_dice"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"scan: prediction shape \(20, 20\) differs"):
        agreement_metrics(prediction[..., 0], reference, BTCV, TOTALSEG, (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tests.notebook_checks import tiny_mosmos_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tiny_mosmos_checkpoint(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(threads)


def test_phantom_network_on_the_real_ct_end_to_end(totalseg, tiny_checkpoint):
    out = reference_agreement(tiny_checkpoint, totalseg / "ct_abdomen_3mm.nii.gz",
                              totalseg / "ct_abdomen_3mm_labels.nii.gz", device="cpu")
    assert out["shape"] == (122, 101, 112) and out["spacing"] == (3.0, 3.0, 3.0)
    assert set(out["shared_organs"]) == set(BTCV.foreground_names)  # TotalSegmentator knows all 13
    assert out["organs"]["liver"]["gt_voxels"] > 10_000  # the reference was read and remapped by name
    assert out["organs"]["esophagus"]["gt_voxels"] == 0  # SOURCE.md: no esophagus in this label map
    assert 0.0 <= out["mean_dice"] <= 1.0 and out["variant"] == "mosmos"


def test_a_reference_on_another_grid_is_refused(totalseg, tiny_checkpoint):
    with pytest.raises(ValueError, match="ct_abdomen_3mm_labels"):
        reference_agreement(tiny_checkpoint, totalseg / "ct_dicom", totalseg / "ct_abdomen_3mm_labels.nii.gz",
                            device="cpu")


def test_realscan_script_writes_its_page_and_never_over_a_hand_written_one(totalseg, tiny_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location("realscan_check", ROOT / "scripts" / "realscan_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page = tmp_path / "realscan.md"
    args = ["--data", str(totalseg), "--results", str(page), "--checkpoint", f"tiny decoder={tiny_checkpoint}",
            "--device", "cpu"]
    assert script.main(args) == 0
    text = page.read_text()
    assert text.startswith(script.MARKER) and "agreement with TotalSegmentator (not accuracy)" in text
    assert "`ct_abdomen_3mm.nii.gz`: 122 x 101 x 112 voxels" in text and "`ct_dicom`: 512 x 512 x 20 voxels" in text
    assert text.count("| liver |") == 2  # one row per organ and scan
    numbers = json.loads(page.with_suffix(".json").read_text())
    assert len(numbers) == 2 and all(r["label"] == "tiny decoder" for r in numbers)
    # the 2D model was trained at 6 mm and does not resample: the 0.98 mm DICOM series is warned about
    assert any("does not resample" in w for w in numbers[1]["warnings"])
    hand = tmp_path / "mine.md"
    hand.write_text("notes\n")
    assert script.main([*args[:2], "--results", str(hand), *args[4:]]) == 2 and hand.read_text() == "notes\n"
