"""Losses: hand-computed values, parity with naive and reference implementations, bad inputs."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mosmoskit import distributed
from mosmoskit.losses import ContrastiveLoss, SegmentationLoss, TagLoss, frequency_class_weights


def _naive_info_nce(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE written as loops over the similarity matrix, in float64 Python."""
    u = [[float(v) for v in row] for row in F.normalize(image.double(), dim=-1)]
    w = [[float(v) for v in row] for row in F.normalize(text.double(), dim=-1)]
    n = len(u)
    z = [[scale * sum(a * b for a, b in zip(u[i], w[j])) for j in range(n)] for i in range(n)]
    image_to_text = 0.0
    for i in range(n):
        image_to_text += -z[i][i] + math.log(sum(math.exp(z[i][j]) for j in range(n)))
    text_to_image = 0.0
    for j in range(n):
        text_to_image += -z[j][j] + math.log(sum(math.exp(z[i][j]) for i in range(n)))
    return 0.5 * (image_to_text / n + text_to_image / n)


# ---------------------------------------------------------------------------------------------
# ContrastiveLoss


@pytest.mark.parametrize("seed,batch,dim", [(0, 2, 3), (1, 5, 7), (2, 9, 16)])
def test_contrastive_matches_naive_double_loop(seed, batch, dim):
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    loss_fn = ContrastiveLoss(init_temperature=0.2)
    got = loss_fn(image, text)["contrastive"]
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(_naive_info_nce(image, text, scale=5.0), rel=1e-5, abs=1e-6)


def test_contrastive_hand_computed_2x2():
    # Unit vectors: image rows e1, e2; text rows e1 and (0.6, 0.8). Temperature 1, so z = <u_i, v_j>:
    # z = [[1.0, 0.6], [0.0, 0.8]].
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    e = math.exp
    rows = (math.log(e(1.0) + e(0.6)) - 1.0) + (math.log(e(0.0) + e(0.8)) - 0.8)
    cols = (math.log(e(1.0) + e(0.0)) - 1.0) + (math.log(e(0.6) + e(0.8)) - 0.8)
    expected = 0.5 * (rows / 2 + cols / 2)
    got = ContrastiveLoss(init_temperature=1.0)(image, text)["contrastive"].item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.44888, abs=1e-5)  # rows 0.51301 + 0.37111, columns 0.31326 + 0.59813


def test_contrastive_normalises_its_inputs():
    # Identity pairs at temperature 0.5: every row is log(e^2 + 1) - 2, whatever the input norms.
    image = torch.tensor([[3.0, 0.0], [0.0, 0.2]])
    text = torch.tensor([[0.5, 0.0], [0.0, 7.0]])
    got = ContrastiveLoss(init_temperature=0.5)(image, text)["contrastive"].item()
    assert got == pytest.approx(math.log(math.exp(2.0) + 1.0) - 2.0, abs=1e-6)


def test_contrastive_gradients_reach_both_inputs_and_temperature():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(6, 8, generator=g, requires_grad=True)
    text = torch.randn(6, 8, generator=g, requires_grad=True)
    loss_fn = ContrastiveLoss()
    loss_fn(image, text)["contrastive"].backward()
    for grad in (image.grad, text.grad, loss_fn.log_logit_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Gradient of the scale matches a finite difference of the loss in log-scale.
    eps = 1e-3
    with torch.no_grad():
        values = []
        for delta in (eps, -eps):
            probe = ContrastiveLoss()
            probe.log_logit_scale.add_(delta)
            values.append(probe(image, text)["contrastive"].item())
    assert loss_fn.log_logit_scale.grad.item() == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-2)


def test_contrastive_temperature_starts_at_0_07_and_is_clamped():
    loss_fn = ContrastiveLoss()
    assert loss_fn.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert loss_fn.temperature == pytest.approx(0.07)
    image, text = torch.randn(4, 5), torch.randn(4, 5)
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(math.log(1000.0))  # as if the optimiser overshot
    assert loss_fn.logit_scale().item() == pytest.approx(100.0)
    assert loss_fn.temperature == pytest.approx(0.01)
    loss = loss_fn(image, text)["contrastive"]
    assert loss.item() == pytest.approx(_naive_info_nce(image, text, scale=100.0), rel=1e-4)
    loss.backward()
    assert loss_fn.log_logit_scale.grad.item() == 0.0  # beyond the bound the clamp passes no gradient
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(math.log(0.01))
    assert loss_fn.temperature == pytest.approx(1.0)  # min_logit_scale = 1
    custom = ContrastiveLoss(init_temperature=0.1, min_logit_scale=5.0, max_logit_scale=20.0)
    with torch.no_grad():
        custom.log_logit_scale.fill_(10.0)
    assert custom.temperature == pytest.approx(1 / 20.0)


def test_contrastive_logits_stay_float32_under_autocast():
    g = torch.Generator().manual_seed(4)
    image, text = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    loss_fn = ContrastiveLoss(init_temperature=0.01)  # scale 100 magnifies any rounding error
    reference = loss_fn(image, text)["contrastive"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(image.bfloat16(), text.bfloat16())["contrastive"]
    assert mixed.dtype == torch.float32
    # Only the bfloat16 rounding of the inputs remains (the matmul itself ran in float32).
    expected = _naive_info_nce(image.bfloat16().float(), text.bfloat16().float(), scale=100.0)
    assert mixed.item() == pytest.approx(expected, rel=1e-5)
    assert reference.item() == pytest.approx(_naive_info_nce(image, text, scale=100.0), rel=1e-5)


def test_contrastive_fixed_temperature_is_a_buffer():
    loss_fn = ContrastiveLoss(init_temperature=0.1, learnable_temperature=False)
    assert list(loss_fn.parameters()) == []
    assert "log_logit_scale" in loss_fn.state_dict()
    image = torch.randn(3, 4, requires_grad=True)
    loss_fn(image, torch.randn(3, 4))["contrastive"].backward()
    assert image.grad is not None and loss_fn.temperature == pytest.approx(0.1)


def test_contrastive_rejects_bad_inputs():
    loss_fn = ContrastiveLoss()
    with pytest.raises(ValueError, match=r"at least 2 image-report pairs per \(global\) batch, got 1"):
        loss_fn(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(ValueError, match=r"\(4, 8\) and text_emb \(3, 8\)"):
        loss_fn(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(4, 8\) and text_emb \(4, 6\)"):
        loss_fn(torch.randn(4, 8), torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"shape \(B, d\), got \(2, 4, 8\)"):
        loss_fn(torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="floating-point"):
        loss_fn(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"init_temperature 0.005 is outside the allowed range \[0.01, 1\]"):
        ContrastiveLoss(init_temperature=0.005)
    with pytest.raises(ValueError, match="min_logit_scale .* must be <= max_logit_scale"):
        ContrastiveLoss(min_logit_scale=50.0, max_logit_scale=10.0)
    with pytest.raises(ValueError, match="init_temperature must be a finite number > 0"):
        ContrastiveLoss(init_temperature=0.0)


def test_distributed_helpers_without_a_process_group():
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(rank: int, world: int, port: int, image: torch.Tensor, text: torch.Tensor, out: str) -> None:
    """One process of the gloo run: local rows of the combined batch, loss and gradients saved."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        b = image.shape[0] // world
        local_image = image[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        local_text = text[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss_fn = ContrastiveLoss(init_temperature=0.1)
        loss = loss_fn(local_image, local_text)["contrastive"]
        loss.backward()
        # An uneven batch (rank 1 has one pair more) must raise on every process, not hang.
        uneven = 2 + rank
        try:
            loss_fn(torch.randn(uneven, image.shape[1]), torch.randn(uneven, image.shape[1]))
            uneven_error = ""
        except ValueError as err:
            uneven_error = str(err)
        torch.save(
            {"loss": loss.detach(), "image_grad": local_image.grad, "text_grad": local_text.grad,
             "scale_grad": loss_fn.log_logit_scale.grad, "uneven_error": uneven_error,
             "world_size": distributed.world_size(), "rank": distributed.rank()},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_contrastive_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    import torch.multiprocessing as mp

    world, local_batch, dim = 2, 3, 8
    g = torch.Generator().manual_seed(7)
    image = torch.randn(world * local_batch, dim, generator=g)
    text = torch.randn(world * local_batch, dim, generator=g)
    mp.spawn(_two_process_worker, args=(world, _free_port(), image, text, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    ref_image, ref_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    ref_fn = ContrastiveLoss(init_temperature=0.1)
    ref_loss = ref_fn(ref_image, ref_text)["contrastive"]
    ref_loss.backward()

    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    # DDP averages over processes: mean of the local losses and of the gradients equals the 1-process run.
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.stack([r["scale_grad"] for r in ranks]).mean().item() == pytest.approx(
        ref_fn.log_logit_scale.grad.item(), rel=1e-4, abs=1e-6)
    for r, result in enumerate(ranks):
        rows = slice(r * local_batch, (r + 1) * local_batch)
        # The gather's backward sums all processes' contributions: W times the 1-process gradient.
        torch.testing.assert_close(result["image_grad"] / world, ref_image.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result["text_grad"] / world, ref_text.grad[rows], rtol=1e-4, atol=1e-6)
        assert "different shapes [(2, 8), (3, 8)]" in result["uneven_error"]
    # And the local losses differ from each other, so the check above is not trivially true.
    assert abs(ranks[0]["loss"].item() - ranks[1]["loss"].item()) > 1e-4


# ---------------------------------------------------------------------------------------------
# TagLoss


def _random_tags(seed: int, batch: int = 4, k: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, k, generator=g)
    targets = torch.randint(-1, 2, (batch, k), generator=g)
    targets[0, :3] = torch.tensor([1, 0, -1])  # every kind present whatever the seed
    return logits, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_tag_bce_equals_torch_on_unmasked_entries(seed):
    logits, targets = _random_tags(seed)
    valid = targets != -1
    masked = TagLoss("bce", unmentioned="mask")(logits, targets)["tags"]
    expected = F.binary_cross_entropy_with_logits(logits[valid], targets[valid].float())
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)
    negative = TagLoss("bce", unmentioned="negative")(logits, targets)["tags"]
    expected = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).float())
    assert negative.item() == pytest.approx(expected.item(), rel=1e-6)
    pos_weight = torch.linspace(0.5, 3.0, logits.shape[1])
    weighted = TagLoss("bce", pos_weight=pos_weight)(logits, targets)["tags"]
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).float(), pos_weight=pos_weight,
                                                   reduction="none")
    assert weighted.item() == pytest.approx(per_entry[valid].mean().item(), rel=1e-6)


def test_tag_bce_hand_computed_1x2():
    # present with logit 2: log(1 + e^-2); absent with logit -1: log(1 + e^-1).
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    got = TagLoss("bce")(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]]))["tags"].item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.220095, abs=1e-6)


@pytest.mark.parametrize("kind", ["bce", "asl"])
def test_tag_masking_removes_entries(kind):
    logits, targets = _random_tags(2)
    logits.requires_grad_(True)
    loss_fn = TagLoss(kind, unmentioned="mask")
    loss = loss_fn(logits, targets)["tags"]
    loss.backward()
    masked = targets == -1
    assert (logits.grad[masked] == 0).all()
    if kind == "bce":  # (ASL also zeroes the gradient of negatives easier than its margin)
        assert (logits.grad[~masked] != 0).all()
    changed = logits.detach().clone()
    changed[masked] = torch.tensor([100.0, -100.0]).repeat(int(masked.sum()))[: int(masked.sum())]
    assert loss_fn(changed, targets)["tags"].item() == loss.item()
    # The mean is over the valid entries only: dropping the masked ones gives the same number.
    valid_only = loss_fn(logits.detach()[~masked].unsqueeze(0), targets[~masked].unsqueeze(0))["tags"]
    assert valid_only.item() == pytest.approx(loss.item(), rel=1e-6)
    # In "negative" mode the same entries count, as absent.
    as_negative = TagLoss(kind, unmentioned="negative")(changed, targets)["tags"]
    assert as_negative.item() != pytest.approx(loss.item())


def test_tag_all_masked_gives_a_zero_that_backpropagates():
    logits = torch.randn(2, 3, requires_grad=True)
    loss = TagLoss("asl")(logits, -torch.ones(2, 3))["tags"]
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def _naive_asl(logits, targets, gamma_pos, gamma_neg, clip) -> float:
    """Ridnik et al. (2021), eq. for L+ / L-, entry by entry in float64, mean over y != -1."""
    total, count = 0.0, 0
    for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        if y == -1:
            continue
        p = 1.0 / (1.0 + math.exp(-x))
        if y == 1:
            total += -((1 - p) ** gamma_pos) * math.log(p)
        else:
            p_m = max(p - clip, 0.0)
            total += -(p_m ** gamma_neg) * math.log(1 - p_m)
        count += 1
    return total / count


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.2), (0.5, 0.5, 0.0)])
def test_tag_asl_matches_the_paper_formula(gamma_pos, gamma_neg, clip):
    logits, targets = _random_tags(4, batch=5, k=7)
    got = TagLoss("asl", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)(logits, targets)["tags"]
    assert got.item() == pytest.approx(_naive_asl(logits, targets, gamma_pos, gamma_neg, clip), rel=1e-5)


def test_tag_asl_defaults_are_the_paper_defaults():
    loss_fn = TagLoss("asl")
    assert (loss_fn.gamma_pos, loss_fn.gamma_neg, loss_fn.clip) == (0.0, 4.0, 0.05)
    # A negative with p <= clip is dropped entirely: p = sigmoid(-3) = 0.047 < 0.05.
    assert loss_fn(torch.tensor([[-3.0]]), torch.tensor([[0]]))["tags"].item() == 0.0


def test_tag_asl_without_focusing_or_margin_is_bce():
    logits, targets = _random_tags(5)
    pos_weight = torch.linspace(0.5, 2.0, logits.shape[1])
    for unmentioned in ("mask", "negative"):
        asl = TagLoss("asl", unmentioned=unmentioned, gamma_pos=0, gamma_neg=0, clip=0, pos_weight=pos_weight)
        bce = TagLoss("bce", unmentioned=unmentioned, pos_weight=pos_weight)
        assert asl(logits, targets)["tags"].item() == pytest.approx(bce(logits, targets)["tags"].item(), rel=1e-6)


@pytest.mark.parametrize("kind,gamma_neg", [("bce", 4.0), ("asl", 4.0), ("asl", 0.5), ("asl", 0.0)])
def test_tag_loss_is_finite_at_extreme_logits(kind, gamma_neg):
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0, 0]])
    loss = TagLoss(kind, gamma_neg=gamma_neg)(logits, targets)["tags"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # The wrong present tag costs log(1 + e^100) = 100 nats. The wrong absent tag costs 100 under BCE;
    # under ASL its probability is shifted to p_m = 1 - 0.05, so it costs 0.95^gamma_neg * -log(0.05).
    wrong_absent = 100.0 if kind == "bce" else 0.95**gamma_neg * -math.log(0.05)
    assert loss.item() == pytest.approx((100.0 + wrong_absent) / 4, rel=1e-5)
    for dtype in (torch.float16, torch.bfloat16):
        low = TagLoss(kind, gamma_neg=gamma_neg)(logits.detach().to(dtype), targets)["tags"]
        assert torch.isfinite(low)


def test_tag_loss_rejects_bad_inputs():
    loss_fn = TagLoss()
    with pytest.raises(ValueError, match=r"found 0\.5, 2\.0 in 2 of 3 entries"):
        loss_fn(torch.zeros(1, 3), torch.tensor([[2.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"found -2 in 1 of"):
        loss_fn(torch.zeros(1, 2), torch.tensor([[-2, 1]]))
    with pytest.raises(ValueError, match=r"logits \(2, 3\) and targets \(2, 4\)"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"logits \(2, 3, 1\)"):
        loss_fn(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="pos_weight has 2 entries but logits have K = 3"):
        TagLoss(pos_weight=[1.0, 2.0])(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pos_weight must be a 1-D tensor"):
        TagLoss(pos_weight=[1.0, -2.0])
    with pytest.raises(ValueError, match="kind must be 'bce' or 'asl', got 'focal'"):
        TagLoss("focal")
    with pytest.raises(ValueError, match="unmentioned must be 'mask' or 'negative'"):
        TagLoss(unmentioned="ignore")
    with pytest.raises(ValueError, match=r"clip .* must be in \[0, 1\)"):
        TagLoss("asl", clip=1.0)


# ---------------------------------------------------------------------------------------------
# SegmentationLoss


@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 3)])
@pytest.mark.parametrize("include_background,dice_weight,ce_weight", [(False, 1.0, 1.0), (True, 0.7, 1.3)])
def test_segmentation_terms_sum_to_monai_dice_ce(spatial, include_background, dice_weight, ce_weight):
    from monai.losses import DiceCELoss, DiceLoss

    g = torch.Generator().manual_seed(len(spatial))
    num_classes = 4
    logits = torch.randn(2, num_classes, *spatial, generator=g, requires_grad=True)
    labels = torch.randint(0, num_classes, (2, 1, *spatial), generator=g)
    terms = SegmentationLoss(num_classes, dice_weight, ce_weight, include_background=include_background)(logits, labels)
    assert sorted(terms) == ["ce", "dice"]
    reference = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                           lambda_dice=dice_weight, lambda_ce=ce_weight)(logits, labels)
    assert (terms["dice"] + terms["ce"]).item() == pytest.approx(reference.item(), rel=1e-6)
    dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True)(logits, labels)
    ce = F.cross_entropy(logits, labels[:, 0])
    assert terms["dice"].item() == pytest.approx(dice_weight * dice.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce_weight * ce.item(), rel=1e-6)
    (terms["dice"] + terms["ce"]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_segmentation_perfect_prediction_is_near_zero_and_float_labels_work():
    labels = torch.tensor([[[[0, 1, 2], [2, 1, 0]]]])  # (1, 1, 2, 3)
    logits = 50.0 * F.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    loss_fn = SegmentationLoss(num_classes=3)
    terms = loss_fn(logits, labels)
    assert terms["dice"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["ce"].item() == pytest.approx(0.0, abs=1e-5)
    wrong = loss_fn(logits.roll(1, dims=1), labels)
    assert wrong["dice"].item() > 0.9 and wrong["ce"].item() > 40
    float_terms = loss_fn(logits, labels.float())
    assert float_terms["dice"].item() == terms["dice"].item() and float_terms["ce"].item() == terms["ce"].item()


def test_segmentation_loss_rejects_bad_inputs():
    loss_fn = SegmentationLoss(num_classes=3)
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"found 3, 7 in 2 voxel\(s\)"):
        labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        labels[0, 0, 0, 0], labels[1, 0, 1, 1] = 7, 3
        loss_fn(logits, labels)
    with pytest.raises(ValueError, match="found -1"):
        loss_fn(logits, -torch.ones(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"found 1\.5"):
        loss_fn(logits, torch.full((2, 1, 4, 4), 1.5))
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\) .* got \(2, 4, 4\) \(add the channel"):
        loss_fn(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(2, 1, 4, 5\)"):
        loss_fn(logits, torch.zeros(2, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits have 5 channels .* num_classes is 3"):
        loss_fn(torch.randn(2, 5, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4\)"):
        loss_fn(torch.randn(2, 3, 4), torch.zeros(2, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SegmentationLoss(num_classes=1)
    with pytest.raises(ValueError, match="both 0"):
        SegmentationLoss(num_classes=3, dice_weight=0.0, ce_weight=0.0)
    with pytest.raises(ValueError, match="dice_weight must be a finite number >= 0"):
        SegmentationLoss(num_classes=3, dice_weight=-1.0)


# ------------------------------------------------------------------------------ class weights
def test_class_weighted_cross_entropy_is_torch_weighted_mean_and_dice_is_unchanged():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    weights = [1.0, 4.0, 9.0]
    plain, weighted = SegmentationLoss(3)(logits, labels), SegmentationLoss(3, ce_class_weights=weights)(logits, labels)
    expected = F.cross_entropy(logits, labels[:, 0], weight=torch.tensor(weights))
    assert torch.allclose(weighted["ce"], expected) and not torch.allclose(weighted["ce"], plain["ce"])
    assert torch.equal(weighted["dice"], plain["dice"])
    # equal weights are the plain mean
    assert torch.allclose(SegmentationLoss(3, ce_class_weights=[2.0] * 3)(logits, labels)["ce"], plain["ce"])


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, 0.0, 2.0], [1.0, float("nan"), 1.0]])
def test_class_weights_must_be_one_positive_number_per_class(weights):
    with pytest.raises(ValueError, match="ce_class_weights must be 3 finite numbers > 0"):
        SegmentationLoss(3, ce_class_weights=weights)


def test_frequency_weights_are_square_root_inverse_frequency():
    assert frequency_class_weights([10000, 100, 1, 0]) == [1.0, 10.0, 100.0, 1.0]
    assert frequency_class_weights([50, 200]) == [2.0, 1.0]  # relative to the most frequent class
    for bad in ([], [0, 0], [1, -1], [1, float("inf")]):
        with pytest.raises(ValueError, match="voxel_counts"):
            frequency_class_weights(bad)
