"""Tags no training report calls absent are left out of the tag loss and of the maps, and the run says which."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mosmoskit.labels import load_label_map
from mosmoskit.models import TagHead
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import tags_without_negatives
from mosmoskit.pretraining.map_check import learned_tags
from mosmoskit.pretraining.model import build_pretrain_model
from mosmoskit.pretraining.task import PretrainTask

BTCV = load_label_map("btcv")


def test_tags_without_negatives_follows_the_unmentioned_rule():
    tags = np.array([[1, 1, -1, 0], [1, -1, -1, 1], [1, 1, 1, 1]], dtype=np.float32)
    names = ["a", "b", "c", "d"]
    assert tags_without_negatives(tags, names) == ["a", "b", "c"]
    assert tags_without_negatives(tags, names, unmentioned="negative") == ["a"]
    with pytest.raises(ValueError, match=r"tags must be \(N, 4\)"):
        tags_without_negatives(tags[:, :3], names)


@pytest.mark.parametrize("readout", ["competition", "evidence", "decoder"])
def test_left_out_tags_have_zero_maps_and_survive_a_checkpoint(readout):
    torch.manual_seed(0)
    head = TagHead(num_tags=4, feature_dim=8, embed_dim=16, readout=readout)
    features = torch.randn(2, 36, 8)
    before = head(features, (6, 6))
    head.leave_out([1, 3])
    after = head(features, (6, 6))
    assert torch.equal(after.maps[:, [1, 3]], torch.zeros(2, 2, 6, 6))
    assert torch.equal(after.maps[:, [0, 2]], before.maps[:, [0, 2]]) and bool((after.maps[:, 0] > 0).any())
    assert torch.equal(after.logits, before.logits)

    reloaded = TagHead(num_tags=4, feature_dim=8, embed_dim=16, readout=readout)
    reloaded.load_state_dict(head.state_dict())
    assert reloaded.learned.tolist() == [True, False, True, False]

    old_state = {k: v for k, v in head.state_dict().items() if k != "learned"}  # written before the buffer
    older = TagHead(num_tags=4, feature_dim=8, embed_dim=16, readout=readout)
    older.load_state_dict(old_state)
    assert older.learned.all()
    with pytest.raises(ValueError, match=r"tag indices must be in \[0, 3\]"):
        head.leave_out([4])


def test_the_tag_loss_ignores_left_out_tags(tmp_path):
    cfg = PretrainConfig(output_dir=str(tmp_path), text_encoder="tiny", image_size=(32, 32), embed_dim=16,
                         tag_head_dim=16, contrastive_weight=0.0, tag_readout="competition")
    torch.manual_seed(0)
    model = build_pretrain_model(cfg, BTCV)
    model.tag_head.leave_out([0])
    task = PretrainTask(model, cfg, BTCV)
    images = torch.rand(4, 1, 32, 32)
    tags = torch.ones(4, 13)
    flipped = tags.clone()
    flipped[:, 0] = 0  # what a left-out tag's targets say does not matter
    changed = tags.clone()
    changed[:, 1] = 0  # a learned tag's do
    model.eval()  # BatchNorm: the same statistics for the three losses
    loss = task.step({"image": images, "tags": tags, "report": [""] * 4})["tags"]
    assert torch.equal(task.step({"image": images, "tags": flipped, "report": [""] * 4})["tags"], loss)
    assert not torch.equal(task.step({"image": images, "tags": changed, "report": [""] * 4})["tags"], loss)
    assert "spleen" not in learned_tags(model, BTCV) and "kidney_right" in learned_tags(model, BTCV)
