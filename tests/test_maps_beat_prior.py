"""The standing map check as a test: pre-training with the defaults must give maps that beat the atlas.

A short seeded run of the default recipe on a phantom cohort of its own (seed 7: neither the pilots'
seed 5 nor the study's seeds), judged by the map check on held-out patients moved by shifts,
rotations and zooms, beside the fixed-position prior (each organ's mean training mask). Maps that
lean on where an organ usually is, or that do not move with the image, lose to the prior and fail
this test.
"""

from __future__ import annotations

import pytest

from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.run import run_pretraining

#: the defaults' budget (about 9 minutes here): 600 steps did not yet beat the prior on this seed
STEPS = 1200


@pytest.mark.slow
def test_default_maps_beat_the_fixed_prior_on_moved_held_out_patients(tmp_path):
    config = PretrainConfig(output_dir=str(tmp_path / "run"), seed=7, max_steps=STEPS, val_every=STEPS,
                            checkpoint_every=STEPS)
    m = run_pretraining(config, progress=False).metrics
    organs = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")
    report = {o: (m[f"maps/pointing/{o}"], m[f"maps/pointing_prior/{o}"]) for o in organs}
    assert m["maps/pointing/mean"] >= m["maps/pointing_prior/mean"] + 0.05, report
    assert m["maps/dice_argmax/mean"] > m["maps/dice_prior/mean"], m
    # a tag read from its organ: erasing the organ moves the logit far more than erasing a blob elsewhere
    assert m["maps/erase_drop/mean"] >= m["maps/blob_drop/mean"] + 2.0, m
