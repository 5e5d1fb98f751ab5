"""Retrieval, AUROC and pointing-game metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from mosmoskit.evaluation.localisation import PointingTally, fixed_position_points, pointing_hits
from mosmoskit.evaluation.retrieval import auroc, recall_at_k, retrieval_metrics, tag_aurocs


def test_recall_at_k_hand_computed():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.2, 0.3, 0.1]])
    # row 0: diag best -> rank 0; row 1: 0.8 > 0.5 -> rank 1; row 2: two above -> rank 2
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 3) == 1.0


def test_recall_ties_are_pessimistic():
    # identical reports give identical columns: a tie must not count as a hit at k=1
    assert recall_at_k(np.ones((4, 4)), 1) == 0.0
    assert recall_at_k(np.ones((4, 4)), 4) == 1.0


def test_retrieval_metrics_perfect_and_chance():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 8))
    m = retrieval_metrics(emb, emb)
    assert m["image_to_report_recall@1"] == 1.0 and m["report_to_image_recall@1"] == 1.0
    assert m["chance_recall@1"] == pytest.approx(0.1) and m["chance_recall@5"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both be"):
        retrieval_metrics(emb, emb[:5])


def test_auroc_hand_computed_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert auroc([1, 2, 3], [1, 1, 1]) != auroc([1, 2, 3], [1, 1, 1])  # NaN with one class


def test_tag_aurocs_ignore_unmentioned():
    logits = np.array([[0.1, 5.0], [0.9, -5.0], [100.0, 0.0]])
    targets = np.array([[0, 1], [1, 0], [-1, -1]])
    out = tag_aurocs(logits, targets, ["a", "b"])
    assert out == {"a": 1.0, "b": 1.0}  # the -1 row with a huge logit is ignored


def test_pointing_hits_and_tolerance():
    label = np.zeros((8, 8), dtype=int)
    label[2:4, 2:4] = 1
    label[6, 6] = 2
    maps = np.zeros((3, 8, 8))
    maps[0, 3, 3] = 1.0  # organ 1: inside
    maps[1, 5, 5] = 1.0  # organ 2: one voxel diagonal from (6, 6)
    maps[2, 0, 0] = 1.0  # organ 3: absent -> not scored
    assert pointing_hits(maps, label, [1, 2, 3]) == {1: True, 2: False}
    assert pointing_hits(maps, label, [1, 2, 3], tolerance=1) == {1: True, 2: True}
    with pytest.raises(ValueError, match="do not match"):
        pointing_hits(maps[:, :4], label, [1, 2, 3])


def test_fixed_position_baseline_and_tally():
    a = np.zeros((4, 4), dtype=int)
    a[0, 0] = 1
    b = np.zeros((4, 4), dtype=int)
    b[0, 0] = 1
    b[3, 3] = 1
    base = fixed_position_points([a, b], [1])
    assert base.shape == (1, 4, 4) and base[0, 0, 0] == 1.0 and base[0, 3, 3] == 0.5
    tally = PointingTally({1: "liver", 2: "spleen"})
    tally.add({1: True})
    tally.add({1: False, 2: True})
    rates = tally.rates()
    assert rates["liver"] == 0.5 and rates["spleen"] == 1.0


def test_large_organs_are_found_by_canonical_name_in_any_label_map():
    from mosmoskit.labels import load_label_map
    from mosmoskit.pretraining.evaluate import large_organs

    assert large_organs(load_label_map("btcv")) == ("spleen", "kidney_right", "kidney_left", "liver", "stomach")
    # AMOS spells the kidneys the other way round; the pointing game and notebook 02's figure use its names
    assert large_organs(load_label_map("amos")) == ("spleen", "right_kidney", "left_kidney", "liver", "stomach")
    assert large_organs(load_label_map("mmwhs")) == ()
