"""The enriched pre-training preset (PhantomConfig.pretraining): anatomy that varies as much as real
anatomy, every organ's presence and size varying independently, and absent organs replaced by what
really fills their place (no organ-shaped hole)."""

from __future__ import annotations

import numpy as np
import pytest

from mosmoskit.data.phantom import (
    ORGANS,
    PhantomConfig,
    _case_rng,
    _grid_axes,
    _sample_findings,
    make_case,
    make_slices,
    render,
    sample_anatomy,
)
from mosmoskit.data.phantom_reports import has_wording
from mosmoskit.labels import load_label_map
from mosmoskit.reports import extract_tags

BTCV = load_label_map("btcv")
TINY_3D = dict(shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
PRE = PhantomConfig.pretraining()


# ------------------------------------------------------------------ the preset
def test_preset_fields_and_overrides():
    assert PRE.body_width_mm == (280.0, 380.0) and PRE.report.extended_phrasing
    assert PRE.position_jitter_mm > PhantomConfig().position_jitter_mm
    assert PRE.global_shift_mm > PhantomConfig().global_shift_mm
    assert PRE.size_jitter > PhantomConfig().size_jitter and PRE.deformation_mm > PhantomConfig().deformation_mm
    assert PhantomConfig.pretraining(scan_range_prob=0.5).scan_range_prob == 0.5
    assert PhantomConfig.from_dict(PRE.to_dict()) == PRE
    # the default cohort never draws the new states
    assert PhantomConfig().congenital_absent_prob == {} and PhantomConfig().atrophic_prob == {}


@pytest.mark.parametrize("kwargs, match", [
    (dict(atrophic_prob={"aorta": 0.1}), "no atrophic form"),
    (dict(atrophic_prob={"liver": 0.7}, enlarged_prob={"liver": 0.5}), r"enlarged_prob \+ atrophic_prob"),
    (dict(absent_prob={"spleen": 0.8}, congenital_absent_prob={"spleen": 0.3}), r"absent_prob \+ congenital_absent_prob"),
    (dict(congenital_absent_prob={"brain": 0.1}), "unknown organs"),
    (dict(atrophic_scale=(0.9, 0.7)), "atrophic_scale"),
    (dict(organ_size_from_body=-1.0), "organ_size_from_body"),
])
def test_new_fields_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhantomConfig(**kwargs)


def test_every_organ_varies_in_presence_and_size_independently():
    """Absence 20-35% for every organ that can be missing (liver and aorta never are), an enriched
    share of enlarged, atrophic and lesion-bearing organs, states drawn without regard to anything
    else."""
    draws = [_sample_findings(np.random.default_rng([9, i]), PRE) for i in range(3000)]
    for organ in ORGANS:
        absent = np.mean([not d[organ]["present"] for d in draws])
        if organ in ("liver", "aorta"):
            assert absent == 0.0, organ
        else:
            assert 0.18 <= absent <= 0.37, (organ, absent)
        abnormal = np.mean([d[organ]["enlarged"] or d[organ]["atrophic"] or d[organ]["n_lesions"] > 0 for d in draws])
        assert abnormal >= 0.2, (organ, abnormal)
        assert not any(d[organ]["enlarged"] and d[organ]["atrophic"] for d in draws)
        if has_wording(organ, "atrophic"):
            assert np.mean([d[organ]["atrophic"] for d in draws]) >= 0.1, organ
    congenital = {o for o in ORGANS if any(d[o]["absence"] == "congenital" for d in draws)}
    assert {"kidney_left", "kidney_right", "inferior_vena_cava", "spleen", "gallbladder"} <= congenital
    # one patient keeps a kidney
    assert not any(not d["kidney_left"]["present"] and not d["kidney_right"]["present"] for d in draws)


# ------------------------------------------------------------------ anatomical variability
def _centroids(cfg: PhantomConfig, organs, n: int = 12) -> dict[str, np.ndarray]:
    out = {o: [] for o in organs}
    for i in range(n):
        case = make_case(21, i, config=cfg, **TINY_3D)
        for organ in organs:
            idx = np.argwhere(case.label == BTCV.id_of(organ))
            if len(idx):
                out[organ].append(((case.affine[:3, :3] @ idx.T).T + case.affine[:3, 3]).mean(0))
    return {o: np.array(v) for o, v in out.items()}


def test_large_organs_move_more_between_patients_than_in_the_default_cohort():
    """A fixed atlas (the mean mask of other patients) must not be a shortcut: the spread of each large
    organ's centroid over 12 patients (RMS distance to the mean centroid) is larger in the preset."""
    organs = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
    default, preset = _centroids(PhantomConfig(), organs), _centroids(PRE, organs)
    for organ in organs:
        assert len(preset[organ]) >= 5, organ

        def spread(c):
            return float(np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()))

        assert spread(preset[organ]) > spread(default[organ]), (organ, spread(preset[organ]), spread(default[organ]))
    # the kidneys move by about 1-2 cm between patients
    for kidney in ("kidney_right", "kidney_left"):
        c = preset[kidney]
        assert 10.0 <= np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()) <= 45.0


def test_body_width_spans_the_preset_range():
    widths = [2 * sample_anatomy(_case_rng(5, i), PRE).body.half_width for i in range(40)]
    assert 280 <= min(widths) < 300 and 360 < max(widths) <= 380


# ------------------------------------------------------------------ absent organs
def _render(anatomy, grid=TINY_3D):
    axes = _grid_axes(grid["shape"], grid["spacing"])
    return render(anatomy, *axes, [0.0, 0.0, 0.0], np.random.default_rng(0))[:2]


def _edge_ratio(hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean gradient magnitude on the outline of ``mask`` over that on the outline shifted by 3 voxels
    (in-plane, four ways): above 1 where the outline is an edge of the image."""
    from scipy import ndimage

    grad = np.sqrt(sum(g**2 for g in np.gradient(hu)))
    ring = mask & ~ndimage.binary_erosion(mask)
    shifted = np.mean([grad[np.roll(ring, s, axis=a)].mean() for a in (0, 1) for s in (-3, 3)])
    return float(grad[ring].mean() / shifted)


@pytest.mark.parametrize("organ", ["spleen", "stomach", "kidney_left"])
def test_absent_organ_leaves_no_hole_with_its_outline(organ):
    """The same patient with and without the organ (noise-free renders): where the organ would be,
    the image shows fat and bowel loops, and its would-be outline is no edge of the image (no
    stronger than the same outline shifted by 18 mm), unlike the outline of the present organ."""
    grid = dict(shape=(64, 64, 40), spacing=(6.0, 6.0, 8.0))
    base = dict(absent_prob={}, congenital_absent_prob={}, lesion_prob={}, enlarged_prob={}, atrophic_prob={}, noise_hu=0.0)
    ratios: dict[str, list[float]] = {"present": [], "absent": []}
    non_fat = []
    for index in range(4):
        present = sample_anatomy(_case_rng(8, index), PhantomConfig.pretraining(**base))
        gone = sample_anatomy(_case_rng(8, index), PhantomConfig.pretraining(**{**base, "absent_prob": {organ: 1.0}}))
        assert organ in present.organs and organ not in gone.organs
        hu_p, lab_p = _render(present, grid)
        hu_a, lab_a = _render(gone, grid)
        assert not (lab_a == BTCV.id_of(organ)).any()
        mask = lab_p == BTCV.id_of(organ)
        ratios["present"].append(_edge_ratio(hu_p, mask))
        ratios["absent"].append(_edge_ratio(hu_a, mask))
        non_fat.append(float((hu_a[mask] > -40).mean()))
    print(organ, {k: np.round(v, 2).tolist() for k, v in ratios.items()}, np.round(non_fat, 2).tolist())
    assert np.mean(ratios["absent"]) < 1.15 and np.mean(ratios["absent"]) < np.mean(ratios["present"]), ratios
    if organ in ("spleen", "stomach"):
        assert np.mean(non_fat) > 0.05, non_fat  # bowel loops move into the empty bed


def test_interrupted_ivc_has_an_azygos_continuation_and_portal_occlusion_collaterals():
    base = dict(absent_prob={}, congenital_absent_prob={}, lesion_prob={}, enlarged_prob={}, atrophic_prob={})
    with_ivc = sample_anatomy(_case_rng(3, 0), PhantomConfig.pretraining(**base))
    without = sample_anatomy(_case_rng(3, 0), PhantomConfig.pretraining(**{**base, "congenital_absent_prob": {"inferior_vena_cava": 1.0}}))
    assert without.findings["inferior_vena_cava"].absence == "congenital"
    veins = [s for s, t, _ in without.background if t == "vein"]
    assert len(veins) == len([s for s, t, _ in with_ivc.background if t == "vein"]) + 1  # the azygos vein
    occluded = sample_anatomy(_case_rng(3, 0), PhantomConfig.pretraining(**{**base, "absent_prob": {"portal_vein_and_splenic_vein": 1.0}}))
    assert len([s for s, t, _ in occluded.background if t == "vein"]) >= len(veins) + 2  # collaterals


def test_esophagectomy_pulls_the_stomach_up_as_a_conduit():
    base = dict(absent_prob={"esophagus": 1.0}, congenital_absent_prob={}, lesion_prob={}, enlarged_prob={}, atrophic_prob={})
    case = make_case(2, 1, config=PhantomConfig.pretraining(**base), shape=(64, 64, 48), spacing=(6.0, 6.0, 7.0))
    stomach = np.argwhere(case.label == BTCV.id_of("stomach"))
    top = (case.affine[:3, :3] @ stomach.T).T[:, 2].max() + case.affine[2, 3]
    anatomy = sample_anatomy(_case_rng(2, 1), PhantomConfig.pretraining(**base))
    assert not case.findings["esophagus"].present and case.findings["stomach"].present
    assert top > max(anatomy.body.dome_left_z, anatomy.body.dome_right_z)  # above the diaphragm


def test_congenital_absence_in_slices_and_reports():
    cfg = PhantomConfig.pretraining(congenital_absent_prob={"kidney_left": 1.0}, absent_prob={}, mention_prob_absent=1.0)
    for case in make_slices(4, 0, 3, shape=(64, 64), spacing=(6.0, 6.0), config=cfg):
        f = case.findings["kidney_left"]
        assert not f.present and f.absence == "congenital" and case.tags["kidney_left"] == 0
        assert extract_tags(case.report, "btcv")["kidney_left"] == 0, case.report
