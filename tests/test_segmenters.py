"""Fine-tuning segmenters (UNETR 3D, BasicUNet 2D) and the fusion of pixel-tag attention maps.

Everything is tiny and on CPU: a UNETR at (32, 32, 16) with a 48-wide ViT, a BasicUNet at 32x32
with widths 4-32, a three-organ label map. The pre-trained weights come from a freshly built
``MosmosPretrainModel`` (its state dict is what a pre-training checkpoint stores under
``state["model"]``), never from a checkpoint file.
"""

from __future__ import annotations

import copy

import pytest
import torch
from monai.inferers import sliding_window_inference

from mosmoskit.config import config_to_dict
from mosmoskit.labels import LabelMap
from mosmoskit.models import (
    BASIC_UNET_LEVELS,
    FUSION_MODES,
    LoadReport,
    MosmosSegmenter,
    TagHead,
    build_segmenter,
    concat_maps,
    create_model,
    list_models,
    load_encoder_into_basic_unet,
    load_encoder_into_unetr,
    model_test_kwargs,
    prepare_fusion_maps,
    segmenter_kwargs_for_encoder,
    widen_conv_inputs,
    widen_input_channels,
)
from mosmoskit.models.segmenters import SEGMENTER_FOR_ENCODER
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.model import build_pretrain_model

SEGMENTERS = list_models("segmenter")
TINY = LabelMap(name="tiny3", labels={"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3})
K = len(TINY.foreground_names)
TEXT_DIM = 8

CONFIGS = {
    2: PretrainConfig(label_map="tiny3", spatial_dims=2, image_encoder="unet2d", image_size=(32, 32),
                      encoder_width=4, tag_head_dim=16, embed_dim=16, feature_path="encoder"),
    3: PretrainConfig(label_map="tiny3", spatial_dims=3, image_encoder="vit3d", image_size=(32, 32, 16),
                      encoder_width=48, tag_head_dim=16, embed_dim=16),
}
ROI = {2: (32, 32), 3: (32, 32, 16)}
OPTIONS = {2: None, 3: {"feature_size": 8}}  # a thin UNETR decoder keeps the 3D tests fast


@pytest.fixture(scope="module")
def pretrained():
    """dims -> (pre-training model in eval mode, its state dict, its config as a checkpoint stores it)."""
    out = {}
    for dims, config in CONFIGS.items():
        torch.manual_seed(dims)
        model = build_pretrain_model(config, TINY, with_text_encoder=False, text_dim=TEXT_DIM)
        with torch.no_grad():
            # Non-trivial values everywhere a default init leaves constants (text query, BN statistics).
            model.tag_head.query_text.normal_()
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.8, 1.2)
        out[dims] = (model.eval(), model.state_dict(), config_to_dict(config))
    return out


def _build(pretrained, dims, fusion="none", init_encoder=False, tune_tag_head=False, seed=0, **kwargs):
    _, state, config = pretrained[dims]
    torch.manual_seed(seed)
    return build_segmenter(dims, TINY, ROI[dims], fusion, state, config, init_encoder, tune_tag_head,
                           segmenter_options=OPTIONS[dims], **kwargs)


def _image(dims, batch=2, seed=1, size=None):
    torch.manual_seed(seed)
    return torch.randn(batch, 1, *(size or ROI[dims]))


def _unused_by_monai(name: str) -> bool:
    """MONAI's ViT blocks hold a cross-attention LayerNorm that self-attention never uses."""
    return "norm_cross_attn" in name


def _encoder_blocks(dims):
    return ("vit",) if dims == 3 else BASIC_UNET_LEVELS


# ------------------------------------------------------------------------------ registered networks


def test_segmenters_are_registered():
    assert {"unetr3d", "unet2d-seg", "unet3d-seg"} <= set(SEGMENTERS)


@pytest.mark.parametrize("name", SEGMENTERS)
def test_registered_segmenter_shapes_and_monai_parity(name):
    torch.manual_seed(0)
    net = create_model(name, **model_test_kwargs(name)).eval()
    model = MosmosSegmenter(net, fusion="none").eval()
    size = model.img_size or (32,) * model.spatial_dims
    x = torch.randn(2, model.in_channels, *size)
    logits = model(x)
    assert logits.shape == (2, model_test_kwargs(name)["out_channels"], *size)
    # Our decomposed forward (encoder once, decoder from MONAI's submodules) is MONAI's forward.
    torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
    logits.square().mean().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == {n for n, _ in model.named_parameters() if not _unused_by_monai(n)}
    model.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    theirs = {"net." + n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys()
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-5, atol=1e-7)


def test_segmenter_requires_out_channels():
    with pytest.raises(TypeError, match=r"unet2d-seg.*out_channels"):
        create_model("unet2d-seg")


@pytest.mark.parametrize("encoder_name", ["vit3d", "unet2d"])
def test_segmenter_kwargs_for_encoder_load_the_encoder(encoder_name):
    encoder = create_model(encoder_name, **model_test_kwargs(encoder_name))
    name, kwargs = segmenter_kwargs_for_encoder(encoder)
    net = create_model(name, **kwargs, out_channels=3, **({"feature_size": 8} if name == "unetr3d" else {}))
    loader = load_encoder_into_unetr if name == "unetr3d" else load_encoder_into_basic_unet
    assert loader(encoder, net) == len(encoder.state_dict())


# ---------------------------------------------------------------------------------------- fusion.py


def test_widen_input_channels_keeps_weights_and_zeroes_new_channels():
    weight = torch.randn(5, 2, 3, 3)
    wide = widen_input_channels(weight, 4)
    assert wide.shape == (5, 6, 3, 3)
    assert torch.equal(wide[:, :2], weight) and torch.count_nonzero(wide[:, 2:]) == 0
    with pytest.raises(ValueError, match=r"convolution weight.*\(5, 2\)"):
        widen_input_channels(torch.randn(5, 2), 1)


def test_widen_conv_inputs_computes_the_same_function():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, kernel_size=1)
    wide = widen_conv_inputs(conv, 2)
    x, extra = torch.randn(2, 6, 4, 4), torch.randn(2, 2, 4, 4)
    assert wide.in_channels == 8
    torch.testing.assert_close(wide(torch.cat([x, extra], 1)), conv(x))
    with pytest.raises(ValueError, match="grouped"):
        widen_conv_inputs(torch.nn.Conv2d(4, 4, 1, groups=2), 1)
    with pytest.raises(ValueError, match="Linear"):
        widen_conv_inputs(torch.nn.Linear(3, 3), 1)


def test_prepare_fusion_maps_hand_computed():
    # Map 0 is flat (any upsampling keeps it flat: peak-normalised to 1 everywhere), map 1 has all
    # its mass in one cell (nearest-free bilinear still peaks at 1 there after max-normalisation).
    raw = torch.tensor([[[[0.25, 0.25], [0.25, 0.25]], [[1.0, 0.0], [0.0, 0.0]]]])
    logits = torch.tensor([[0.0, 2.0]])
    fused = prepare_fusion_maps(raw, logits, (4, 4))
    assert fused.maps.shape == (1, 2, 4, 4) and fused.raw is raw and fused.logits is logits
    torch.testing.assert_close(fused.maps[0, 0], torch.full((4, 4), 0.5))  # 1 * sigmoid(0)
    p1 = torch.sigmoid(torch.tensor(2.0))
    assert fused.maps[0, 1].max() == pytest.approx(float(p1))
    assert fused.maps[0, 1, 0, 0] == pytest.approx(float(p1))  # the peak stays in the top-left cell
    unscaled = prepare_fusion_maps(raw, logits, (4, 4), normalize="max", scale_by_probability=False)
    torch.testing.assert_close(unscaled.maps.amax(dim=(2, 3)), torch.ones(1, 2))
    with pytest.raises(ValueError, match="normalize must be one of"):
        prepare_fusion_maps(raw, logits, (4, 4), normalize="peak")


def test_concat_maps_checks_shapes():
    x, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 4, 8, 8)
    out = concat_maps(x, maps)
    assert out.shape == (2, 7, 8, 8) and torch.equal(out[:, 3:], maps)
    with pytest.raises(ValueError, match=r"maps \(2, 4, 4, 4\) cannot be concatenated to \(2, 3, 8, 8\)"):
        concat_maps(x, torch.rand(2, 4, 4, 4))


# ----------------------------------------------------------------------- every network x fusion mode


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_forward_backward_and_channel_counts(pretrained, dims, fusion):
    model, report = _build(pretrained, dims, fusion, init_encoder=True)
    model.train()
    x = _image(dims)
    logits = model(x)
    assert logits.shape == (2, TINY.num_classes, *ROI[dims])
    assert model.in_channels == 1 and model.out_channels == TINY.num_classes
    first_conv = [m for m in model.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][0]
    assert first_conv.in_channels == 1 + (K if fusion == "input" else 0)
    head = model.net.out.conv.conv if dims == 3 else model.net.final_conv
    decoder_width = 8 if dims == 3 else CONFIGS[2].encoder_width
    assert head.in_channels == decoder_width + (K if fusion == "decoder" else 0)
    assert model.num_tags == (0 if fusion == "none" else K) == report.num_tags
    logits.square().mean().backward()
    assert all(p.grad is not None for n, p in model.net.named_parameters() if not _unused_by_monai(n))
    if fusion != "none":
        # tune_tag_head=False: the map branch is frozen and stays in eval mode during training.
        assert all(not p.requires_grad and p.grad is None for p in model.tag_head.parameters())
        assert not model.tag_head.training
        maps = model.attention_maps(x)
        assert maps.maps.shape == (2, K, *ROI[dims]) and maps.logits.shape == (2, K)
        assert float(maps.maps.min()) >= 0.0 and float(maps.maps.max()) <= 1.0


@pytest.mark.parametrize("dims", [2, 3])
def test_tuned_map_branch_gets_gradients(pretrained, dims):
    model, report = _build(pretrained, dims, "input", init_encoder=False, tune_tag_head=True)
    model.train()
    assert model.map_encoder.training and model.tag_head.training
    model(_image(dims)).square().mean().backward()
    assert all(p.grad is not None for p in model.tag_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.map_encoder.parameters())
    assert all(part.trainable for part in report.parts)


def test_frozen_map_branch_keeps_statistics_and_weights(pretrained):
    model, _ = _build(pretrained, 2, "input", init_encoder=False)
    model.train()
    before = copy.deepcopy(model.map_encoder.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(_image(2)).square().mean().backward()
    optimizer.step()
    after = model.map_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not model.map_encoder.training


# ---------------------------------------------------------------------------------- weight loading


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("fusion", ["none", "decoder"])
def test_encoder_weights_load_into_the_segmenter(pretrained, dims, fusion):
    _, state, _ = pretrained[dims]
    loaded, report = _build(pretrained, dims, fusion, init_encoder=True)
    random, random_report = _build(pretrained, dims, "none", init_encoder=False)
    net_state = loaded.net.state_dict()
    copied = [k for k in net_state if k.split(".", 1)[0] in _encoder_blocks(dims)]
    assert copied and all(torch.equal(net_state[k], state["image_encoder." + k]) for k in copied)
    part = report.part("segmenter encoder")
    assert part.tensors == len(copied) and part.source == "image_encoder."
    assert part.parameters == sum(
        p.numel() for n, p in loaded.net.named_parameters() if n.split(".", 1)[0] in _encoder_blocks(dims)
    )
    assert random_report.parts == () and random_report.tensors == 0
    x = _image(dims)
    loaded.eval(), random.eval()
    assert not torch.allclose(loaded(x), random(x))


@pytest.mark.parametrize("dims", [2, 3])
def test_input_fusion_widens_the_first_layer_with_zeros(pretrained, dims):
    pretrain_model, state, _ = pretrained[dims]
    model, report = _build(pretrained, dims, "input", init_encoder=True)
    part = report.part("segmenter encoder")
    (key,) = part.widened
    weight = model.net.state_dict()[key]
    source = state["image_encoder." + key]
    assert weight.shape[1] == source.shape[1] + K
    assert torch.equal(weight[:, :1], source) and torch.count_nonzero(weight[:, 1:]) == 0
    assert f"{K} zero-initialised map input channels in {key}" in report.summary()
    # So at initialisation the segmenter's encoder computes the pre-trained encoder's function of the image.
    model.eval()
    x = _image(dims)
    with torch.no_grad():
        fused_input = concat_maps(x, model.attention_maps(x).maps)
        if dims == 3:
            mine, theirs = model.net.vit(fused_input)[0], pretrain_model.image_encoder.vit(x)[0]
        else:
            mine, theirs = model.net.down_4(model.net.down_3(model.net.down_2(model.net.down_1(
                model.net.conv_0(fused_input))))), pretrain_model.image_encoder(x).hidden_states[-1]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    # The map branch is a copy of the pre-trained encoder and tag head, tensor for tensor.
    assert report.part("map encoder").tensors == sum(k.startswith("image_encoder.") for k in state)
    assert report.part("tag head").tensors == sum(k.startswith("tag_head.") for k in state)
    for k, v in model.tag_head.state_dict().items():
        assert torch.equal(v, state["tag_head." + k])


@pytest.mark.parametrize("dims", [2, 3])
def test_load_report_parts_per_variant(pretrained, dims):
    expected = {
        ("none", False): [],
        ("none", True): ["segmenter encoder"],
        ("input", False): ["map encoder", "tag head"],
        ("input", True): ["segmenter encoder", "map encoder", "tag head"],
        ("decoder", False): ["map encoder", "tag head"],
        ("decoder", True): ["segmenter encoder", "map encoder", "tag head"],  # a frozen copy makes the maps
        ("decoder", "shared"): ["segmenter encoder", "tag head"],
    }
    for (fusion, init), names in expected.items():
        shared = init == "shared"
        model, report = _build(pretrained, dims, fusion, init_encoder=bool(init), share_encoder=shared)
        assert isinstance(report, LoadReport)
        assert [p.name for p in report.parts] == names, (fusion, init)
        assert report.shares_encoder == shared == model.shares_encoder
        assert (model.map_encoder is not None) == (fusion != "none" and not report.shares_encoder)
        assert report.to_dict()["parts"] == [
            {"name": p.name, "source": p.source, "tensors": p.tensors, "parameters": p.parameters,
             "widened": list(p.widened), "trainable": p.trainable} for p in report.parts
        ]
    with pytest.raises(KeyError, match=r"no part 'tag head'.*\['segmenter encoder'\]"):
        report = _build(pretrained, dims, "none", init_encoder=True)[1]
        report.part("tag head")


# ------------------------------------------------------------------------------- decoder fusion


@pytest.mark.parametrize("dims", [2, 3])
def test_decoder_fusion_runs_the_encoder_once_and_reuses_it_for_the_maps(pretrained, dims):
    pretrain_model, _, _ = pretrained[dims]
    model, _ = _build(pretrained, dims, "decoder", init_encoder=True, share_encoder=True)
    model.eval()
    calls = []
    watched = model.net.vit if dims == 3 else model.net.down_4
    handle = watched.register_forward_hook(lambda *args: calls.append(1))
    x = _image(dims)
    with torch.no_grad():
        model(x)
    assert len(calls) == 1
    handle.remove()
    # The maps read from the segmenter's encoder are the pre-training model's own maps.
    with torch.no_grad():
        expected, expected_logits = pretrain_model.attention_maps(x, normalize="max", scale_by_probability=True)
    maps = model.attention_maps(x)
    torch.testing.assert_close(maps.maps, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps.logits, expected_logits, rtol=1e-4, atol=1e-5)


def test_decoder_fusion_with_random_encoder_reads_maps_from_a_separate_copy(pretrained):
    model, _ = _build(pretrained, 3, "decoder", init_encoder=False)
    model.eval()
    calls = {"segmenter": 0, "maps": 0}
    model.net.vit.register_forward_hook(lambda *a: calls.__setitem__("segmenter", calls["segmenter"] + 1))
    model.map_encoder.vit.register_forward_hook(lambda *a: calls.__setitem__("maps", calls["maps"] + 1))
    with torch.no_grad():
        model(_image(3))
    assert calls == {"segmenter": 1, "maps": 1}
    _, state, _ = pretrained[3]
    assert all(torch.equal(v, state["image_encoder." + k]) for k, v in model.map_encoder.state_dict().items())
    key = "vit.patch_embedding.patch_embeddings.weight"
    assert not torch.equal(model.net.state_dict()[key], state["image_encoder." + key])


# the segmenters that have a pre-training encoder (the 3D U-Net has none yet)
@pytest.mark.parametrize("name", sorted(SEGMENTER_FOR_ENCODER.values()))
def test_decoder_fusion_starts_as_the_plain_network(pretrained, name):
    dims = 3 if name == "unetr3d" else 2
    pretrain_model = copy.deepcopy(pretrained[dims][0])
    _, kwargs = segmenter_kwargs_for_encoder(pretrain_model.image_encoder)
    torch.manual_seed(0)
    net = create_model(name, **kwargs, out_channels=TINY.num_classes, **(OPTIONS[dims] or {})).eval()
    reference = copy.deepcopy(net)
    model = MosmosSegmenter(net, "decoder", pretrain_model.tag_head, pretrain_model.image_encoder).eval()
    x = _image(dims)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ inference helpers


@pytest.mark.parametrize(("dims", "fusion", "size"), [(2, "input", (48, 64)), (3, "decoder", (48, 32, 16))])
def test_sliding_window_inference(pretrained, dims, fusion, size):
    model, _ = _build(pretrained, dims, fusion, init_encoder=True)
    model.eval()
    image = _image(dims, batch=1, size=size)
    with torch.no_grad():
        out = sliding_window_inference(image, ROI[dims], sw_batch_size=2, predictor=model, overlap=0.25)
    assert out.shape == (1, TINY.num_classes, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_architecture_only_rebuilds_the_same_modules(pretrained, fusion):
    trained, _ = _build(pretrained, 2, fusion, init_encoder=True)
    config = pretrained[2][2]
    rebuilt, report = build_segmenter(2, TINY, ROI[2], fusion, None, config, True, architecture_only=True,
                                      text_dim=TEXT_DIM)
    assert report.parts == ()
    rebuilt.load_state_dict(trained.state_dict())  # strict: same keys and shapes
    trained.eval(), rebuilt.eval()
    x = _image(2)
    torch.testing.assert_close(rebuilt(x), trained(x))


# ------------------------------------------------------------------------------------- bad inputs


def test_another_label_map_names_both_maps(pretrained):
    _, state, config = pretrained[2]
    amos_like = LabelMap(name="five", labels={"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3,
                                              "stomach": 4, "aorta": 5})
    with pytest.raises(ValueError, match=r"K=3 tags \(label map 'tiny3'.*'five' has K=5"):
        build_segmenter(2, amos_like, (32, 32), "input", state, config, True)
    renamed = LabelMap(name="other", labels={"background": 0, "liver": 1, "kidney_left": 2, "spleen": 3})
    with pytest.raises(ValueError, match=r"'tiny3' and the fine-tuning label map 'other' differ at 2: 'spleen' vs"):
        build_segmenter(2, renamed, (32, 32), "decoder", state, config, True, pretrain_label_map=TINY.to_dict())
    # Without maps the tags do not matter: a pre-trained encoder may be fine-tuned on another label map.
    model, report = build_segmenter(2, amos_like, (32, 32), "none", state, config, True)
    assert model.out_channels == 6 and report.part("segmenter encoder").tensors > 0


def test_another_spatial_dimension_is_refused(pretrained):
    _, state, config = pretrained[2]
    with pytest.raises(ValueError, match=r"'unet2d' is 2D .* spatial_dims=3 was asked"):
        build_segmenter(3, TINY, (32, 32, 16), "none", state, config, True)
    _, state3, _ = pretrained[3]
    # A 3D state with a 2D config: every key is named as missing or unexpected.
    message = (r"cannot load the pre-trained image encoder.*missing.*image_encoder\.conv_0.*"
               r"tensor\(s\) the pre-trained image encoder lacks: image_encoder\.vit\.blocks")
    with pytest.raises(ValueError, match=message):
        build_segmenter(2, TINY, (32, 32), "none", state3, config, True)


def test_unetr_roi_must_equal_the_pretraining_image_size(pretrained):
    _, state, config = pretrained[3]
    with pytest.raises(ValueError, match=r"roi_size \(48, 32, 16\) differs .*\(32, 32, 16\).*UNETR needs img_size == "
                                         r"pre-training image_size"):
        build_segmenter(3, TINY, (48, 32, 16), "decoder", state, config, True, segmenter_options={"feature_size": 8})
    # The random-init baseline loads nothing, so it may use another roi (a multiple of 16).
    model, _ = build_segmenter(3, TINY, (48, 32, 16), "none", None, config, segmenter_options={"feature_size": 8})
    assert model.img_size == (48, 32, 16)
    with pytest.raises(ValueError, match=r"unet2d-seg needs roi_size divisible by 16, got \(40, 32\)"):
        build_segmenter(2, TINY, (40, 32), "none")


def test_mismatched_state_names_keys_and_shapes(pretrained):
    _, state, config = pretrained[2]
    wider = dict(config, encoder_width=8)
    with pytest.raises(ValueError, match=r"60 shape mismatch\(es\): image_encoder\.conv_0\.conv_0\.adn\.N\.bias: "
                                         r"checkpoint \(4,\) vs pre-trained image encoder \(8,\)"):
        build_segmenter(2, TINY, (32, 32), "none", state, wider, True)
    broken = {k: v for k, v in state.items() if k != "tag_head.input_proj.weight"}
    with pytest.raises(ValueError, match=r"cannot load the tag head.*missing.*tag_head\.input_proj\.weight"):
        build_segmenter(2, TINY, (32, 32), "input", broken, config, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "late"}, r"fusion must be one of \['none', 'input', 'decoder'\], got 'late'"),
        ({"fusion": "input", "pretrained_checkpoint_state": None}, r"needs the pre-trained model: pass "
                                                                   r"pretrained_checkpoint_state"),
        ({"init_encoder": True, "pretrain_config": None}, r"pretrain_config is needed"),
        ({"tune_tag_head": True}, r"tune_tag_head=True has no effect with fusion='none'"),
        ({"segmenter_options": {"features": (8, 8, 8, 8, 8, 8)}}, r"segmenter_options may not set \['features'\]"),
        ({"in_channels": 2, "init_encoder": True}, r"in_channels=2 but the pre-trained encoder takes 1"),
        ({"roi_size": (32,)}, r"roi_size must be 2 positive sizes"),
    ],
)
def test_bad_build_arguments(pretrained, kwargs, message):
    _, state, config = pretrained[2]
    args = {"spatial_dims": 2, "label_map": TINY, "roi_size": (32, 32), "fusion": "none",
            "pretrained_checkpoint_state": state, "pretrain_config": config, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_segmenter(**args)


def test_whole_checkpoint_and_foreign_state_are_refused(pretrained):
    _, state, config = pretrained[2]
    checkpoint = {"config": config, "label_map": TINY.to_dict(), "state": {"model": state}}
    with pytest.raises(ValueError, match=r"looks like a whole checkpoint.*checkpoint\['state'\]\['model'\]"):
        build_segmenter(2, TINY, (32, 32), "input", checkpoint, config, True)
    with pytest.raises(ValueError, match=r"no 'image_encoder\.\*' keys.*conv_0"):
        build_segmenter(2, TINY, (32, 32), "none", {"conv_0.weight": torch.zeros(1)}, config, True)


def test_forward_rejects_bad_inputs(pretrained):
    model, _ = _build(pretrained, 3, "input", init_encoder=True)
    with pytest.raises(ValueError, match=r"takes 1 image channel\(s\), got shape \(1, 4, 32, 32, 16\) \(the K maps"):
        model(torch.zeros(1, 1 + K, 32, 32, 16))
    with pytest.raises(ValueError, match=r"UNETR was built for img_size \(32, 32, 16\).*sliding_window_inference"):
        model(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"expected a 5D input \(B, C, H, W, D\)"):
        model(torch.zeros(1, 1, 32, 32))
    plain, _ = _build(pretrained, 2, "none")
    with pytest.raises(ValueError, match="divisible by 16"):
        plain(torch.zeros(1, 1, 32, 40))
    with pytest.raises(ValueError, match="fusion='none': it has no tag head"):
        plain.attention_maps(torch.zeros(1, 1, 32, 32))


def test_segmenter_constructor_checks(pretrained):
    pretrain_model = copy.deepcopy(pretrained[2][0])
    _, kwargs = segmenter_kwargs_for_encoder(pretrain_model.image_encoder)
    net = create_model("unet2d-seg", **kwargs, out_channels=4)
    with pytest.raises(ValueError, match="fusion='input' needs map_encoder"):
        MosmosSegmenter(net, "input", pretrain_model.tag_head)
    with pytest.raises(ValueError, match=r"takes 1 input channels but needs image channels \+ maps = 1 \+ 3 = 4"):
        MosmosSegmenter(net, "input", pretrain_model.tag_head, pretrain_model.image_encoder)
    with pytest.raises(ValueError, match="fusion='decoder' needs the pre-trained tag_head"):
        MosmosSegmenter(net, "decoder")
    with pytest.raises(ValueError, match="fusion='none' uses no maps"):
        MosmosSegmenter(net, "none", pretrain_model.tag_head)
    with pytest.raises(ValueError, match="wraps monai UNETR or BasicUNet, got Conv2d"):
        MosmosSegmenter(torch.nn.Conv2d(1, 1, 1))
    wrong_head = TagHead(num_tags=K, feature_dim=16, embed_dim=16)
    with pytest.raises(ValueError, match=r"tag head reads 16-channel features but encoder level down_2 has 8"):
        MosmosSegmenter(net, "decoder", wrong_head, tag_feature_level=2)


def test_default_decoder_fusion_keeps_the_maps_of_the_pretrained_encoder_while_the_segmenter_changes(pretrained):
    """share_encoder=False (default): the maps come from a frozen copy, so fine-tuning the segmenter's
    encoder does not move them; with the shared encoder the same change moves them."""
    x = _image(3)
    for share, moves in ((False, False), (True, True)):
        model, report = _build(pretrained, 3, "decoder", init_encoder=True, share_encoder=share)
        assert report.shares_encoder is share
        before = model.attention_maps(x).maps
        with torch.no_grad():
            for p in model.net.vit.parameters():
                p.add_(0.05 * torch.randn_like(p))  # what fine-tuning does to the segmenter's encoder
        after = model.attention_maps(x).maps
        assert (not torch.allclose(before, after, atol=1e-6)) is moves, share


@pytest.mark.parametrize("fusion", ["none", "decoder"])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(pretrained, fusion):
    from unittest import mock

    import torch.utils.checkpoint as ckpt

    plain, _ = _build(pretrained, 3, fusion, init_encoder=True)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing = True
    x = _image(3)
    outputs, grads = [], []
    for model in (plain, checkpointed):
        model.train()
        with mock.patch.object(ckpt, "checkpoint", wraps=ckpt.checkpoint) as spy:
            out = model(x)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls = spy.call_count
    assert calls == len(checkpointed.net.vit.blocks)  # every block of the checkpointed model, none of the plain
    torch.testing.assert_close(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # evaluation never checkpoints
        checkpointed.eval()
        torch.testing.assert_close(checkpointed(x), plain.eval()(x))
