"""The model registry and the image encoders.

The encoder tests are generated from ``list_models("image_encoder")``: a new registered backbone
gets its shape, gradient and bad-input tests without editing this file (it only has to give a tiny
``test_kwargs`` preset when registering).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNETR, BasicUNet

from mosmoskit.models import (
    BASIC_UNET_LEVELS,
    EncoderOutput,
    ImageEncoder,
    create_model,
    list_models,
    load_encoder_into_basic_unet,
    load_encoder_into_unetr,
    model_test_kwargs,
    register_model,
)
from mosmoskit.models import registry

ENCODERS = list_models("image_encoder")
# A preset is meant for a forward/backward pass in well under a second on a laptop CPU.
MAX_TINY_PARAMETERS = 2_000_000


def _tiny(name: str, seed: int = 0, **overrides) -> ImageEncoder:
    torch.manual_seed(seed)
    return create_model(name, **{**model_test_kwargs(name), **overrides})


def _input_size(encoder: ImageEncoder) -> tuple[int, ...]:
    if encoder.img_size is not None:
        return encoder.img_size
    return (2 * encoder.size_divisor,) * encoder.spatial_dims


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the registry that test registrations cannot leak out of."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# --------------------------------------------------------------------------------------------- registry


def test_builtin_encoders_are_registered():
    assert {"vit3d", "unet2d"} <= set(ENCODERS)
    assert list_models() == sorted(list_models())
    assert set(ENCODERS) <= set(list_models())
    assert list_models("segmenter") == sorted(n for n in list_models() if registry.model_entry(n).kind == "segmenter")


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'vit3' \(did you mean 'vit3d'\?\).*'unet2d'"):
        create_model("vit3")


def test_unknown_kwarg_names_the_model():
    with pytest.raises(TypeError, match=r"model 'unet2d': unknown argument\(s\) \['hidden_size'\].*accepts"):
        create_model("unet2d", hidden_size=8)


def test_list_models_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        list_models("imageencoder")


def test_register_and_create(private_registry):
    @register_model("toy_encoder", kind="image_encoder", test_kwargs={"width": 3})
    def toy_encoder(width: int = 5) -> nn.Module:
        return nn.Linear(width, width)

    assert "toy_encoder" in list_models("image_encoder")
    assert create_model("toy_encoder").in_features == 5
    assert create_model("toy_encoder", width=2).in_features == 2
    assert model_test_kwargs("toy_encoder") == {"width": 3}
    # The decorator returns the builder itself.
    assert toy_encoder(width=4).in_features == 4


def test_register_rejects_duplicates_bad_kind_and_stale_preset(private_registry):
    with pytest.raises(ValueError, match="'unet2d' is already registered"):
        register_model("unet2d", kind="image_encoder")(lambda: nn.Identity())
    with pytest.raises(ValueError, match="kind must be one of .* got 'encoder'"):
        register_model("toy_a", kind="encoder")(lambda: nn.Identity())
    with pytest.raises(ValueError, match=r"test_kwargs: model 'toy_b': unknown argument\(s\) \['depth'\]"):
        register_model("toy_b", kind="segmenter", test_kwargs={"depth": 2})(lambda width=1: nn.Identity())
    assert "toy_a" not in list_models() and "toy_b" not in list_models()


def test_builder_internal_type_error_is_not_relabelled(private_registry):
    @register_model("toy_broken", kind="segmenter")
    def toy_broken(width: int = 2) -> nn.Module:
        return nn.Linear(width)  # missing out_features: a bug inside the builder

    with pytest.raises(TypeError, match="out_features"):
        create_model("toy_broken")


# ------------------------------------------------------------------------ generated per-encoder tests


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_tiny_preset_is_small(name):
    encoder = _tiny(name)
    assert isinstance(encoder, ImageEncoder)
    n_params = sum(p.numel() for p in encoder.parameters())
    assert n_params < MAX_TINY_PARAMETERS, f"{name}'s test_kwargs build {n_params} parameters"


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_output_shapes(name):
    encoder = _tiny(name)
    size = _input_size(encoder)
    x = torch.randn(2, encoder.in_channels, *size)
    out = encoder(x)
    assert isinstance(out, EncoderOutput)
    assert out.grid == tuple(s // encoder.feature_stride for s in size) == encoder.feature_grid(size)
    assert out.features.shape == (2, math.prod(out.grid), encoder.feature_dim)
    assert out.pooled.shape == (2, encoder.pooled_dim)
    assert out.feature_map().shape == (2, encoder.feature_dim, *out.grid)
    assert len(out.hidden_states) >= 1 and all(h.shape[0] == 2 for h in out.hidden_states)
    assert torch.isfinite(out.features).all() and torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_backward_reaches_every_used_parameter_and_the_input(name):
    encoder = _tiny(name)
    # Only modules that run are expected to get gradients: MONAI's transformer blocks, for one,
    # always build a cross-attention norm that a plain ViT never calls.
    ran: set[str] = set()
    hooks = [
        module.register_forward_hook(lambda m, i, o, n=module_name: ran.add(n))
        for module_name, module in encoder.named_modules()
    ]
    x = torch.randn(2, encoder.in_channels, *_input_size(encoder), requires_grad=True)
    out = encoder(x)
    for hook in hooks:
        hook.remove()
    (out.features.square().mean() + out.pooled.square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    used = [
        (f"{module_name}.{p_name}".lstrip("."), p)
        for module_name, module in encoder.named_modules()
        if module_name in ran
        for p_name, p in module.named_parameters(recurse=False)
    ]
    n_used, n_all = sum(p.numel() for _, p in used), sum(p.numel() for p in encoder.parameters())
    assert n_used >= 0.9 * n_all, f"{name}: only {n_used} of {n_all} weights are in modules that ran"
    dead = [n for n, p in used if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"{name}: parameters without gradient: {dead[:5]}"


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_rejects_bad_inputs(name):
    encoder = _tiny(name)
    size = _input_size(encoder)
    with pytest.raises(ValueError, match=r"expects a \dD input"):
        encoder(torch.zeros(1, encoder.in_channels, *size, 1))
    with pytest.raises(ValueError, match=f"built for {encoder.in_channels} input channel"):
        encoder(torch.zeros(1, encoder.in_channels + 1, *size))
    if encoder.img_size is None and encoder.size_divisor == 1:
        pytest.skip("this encoder accepts every spatial size")
    bad = (size[0] + 1, *size[1:])
    with pytest.raises(ValueError, match=r"img_size|multiples of"):
        encoder(torch.zeros(1, encoder.in_channels, *bad))
    with pytest.raises(ValueError):
        encoder.feature_grid(bad)


def test_encoder_output_validates_its_shapes():
    with pytest.raises(ValueError, match=r"N=6 positions but grid \(2, 2\) has 4"):
        EncoderOutput(features=torch.zeros(1, 6, 3), grid=(2, 2), pooled=torch.zeros(1, 3), hidden_states=())
    with pytest.raises(ValueError, match="pooled must be"):
        EncoderOutput(features=torch.zeros(2, 4, 3), grid=(2, 2), pooled=torch.zeros(1, 3), hidden_states=())


# ------------------------------------------------------------------------------------------- vit3d


def test_vit3d_loads_into_unetr_and_matches_its_vit():
    encoder = _tiny("vit3d", img_size=(32, 48, 16)).eval()
    assert encoder.num_layers == 12  # UNETR always has 12 blocks
    torch.manual_seed(1)  # a differently initialised UNETR, so equality below proves the copy
    unetr = UNETR(**encoder.unetr_kwargs(), out_channels=3, feature_size=8).eval()
    x = torch.randn(2, 1, 32, 48, 16)
    with torch.no_grad():
        before, _ = unetr.vit(x)
        n_loaded = load_encoder_into_unetr(encoder.state_dict(), unetr)
        assert n_loaded == len(unetr.vit.state_dict())
        tokens, blocks = unetr.vit(x)
        out = encoder(x)
        assert not torch.allclose(before, out.features)
        torch.testing.assert_close(tokens, out.features, rtol=0, atol=0)
        for mine, theirs in zip(out.hidden_states, blocks):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        assert out.grid == (2, 3, 1) and out.features.shape == (2, 6, 48)
        torch.testing.assert_close(out.pooled, out.features.mean(dim=1))
        assert unetr(x).shape == (2, 3, 32, 48, 16)


def test_vit3d_loads_from_a_prefixed_checkpoint():
    encoder = _tiny("vit3d")
    checkpoint = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    checkpoint["tag_head.classifier.weight"] = torch.zeros(3, 4)  # other parts of the model are ignored
    unetr = UNETR(**encoder.unetr_kwargs(), out_channels=2, feature_size=8)
    assert load_encoder_into_unetr(checkpoint, unetr, prefix="image_encoder.") == len(unetr.vit.state_dict())
    torch.testing.assert_close(unetr.vit.patch_embedding.position_embeddings,
                               encoder.vit.patch_embedding.position_embeddings)
    with pytest.raises(ValueError, match="no key of the encoder state starts with prefix 'encoder.'"):
        load_encoder_into_unetr(checkpoint, unetr, prefix="encoder.")


def test_vit3d_with_fewer_blocks_cannot_fill_a_unetr():
    shallow = _tiny("vit3d", num_layers=4)
    with pytest.raises(ValueError, match="UNETR always has 12 transformer blocks; this encoder has 4"):
        shallow.unetr_kwargs()
    unetr = UNETR(**_tiny("vit3d").unetr_kwargs(), out_channels=2, feature_size=8)
    with pytest.raises(ValueError, match=r"UNETR tensor\(s\) missing from the encoder state: vit\.blocks\.10\."):
        load_encoder_into_unetr(shallow, unetr)


def test_vit3d_shape_mismatch_is_reported():
    encoder = _tiny("vit3d")
    unetr = UNETR(**{**encoder.unetr_kwargs(), "hidden_size": 64}, out_channels=2, feature_size=8)
    with pytest.raises(ValueError, match=r"shape mismatch.*vit\.blocks\.0\..*encoder \(48"):
        load_encoder_into_unetr(encoder, unetr)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"img_size": (32, 32, 24)}, "multiples of the patch size 16"),
        ({"img_size": (32, 32)}, "img_size must have 3 entries"),
        ({"hidden_size": 50}, r"hidden_size \(50\) must be divisible by num_heads \(4\)"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
    ],
)
def test_vit3d_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny("vit3d", **kwargs)


# ------------------------------------------------------------------------------------------ unet2d


def test_unet2d_levels_match_basic_unet_after_loading():
    encoder = _tiny("unet2d")
    x = torch.randn(3, 1, 32, 48)
    encoder.train()
    encoder(x)  # one training pass so the BatchNorm running statistics are not the defaults
    encoder.eval()
    torch.manual_seed(1)
    unet = BasicUNet(**encoder.basic_unet_kwargs(), out_channels=4).eval()
    assert isinstance(unet.down_2.convs.conv_0.adn.N, nn.BatchNorm2d)
    n_loaded = load_encoder_into_basic_unet(encoder, unet)
    expected = {k for k in unet.state_dict() if k.split(".", 1)[0] in BASIC_UNET_LEVELS}
    assert n_loaded == len(expected)
    with torch.no_grad():
        out = encoder(x)
        level = x
        for name, mine in zip(BASIC_UNET_LEVELS, out.hidden_states):
            level = getattr(unet, name)(level)
            torch.testing.assert_close(mine, level, rtol=0, atol=0)
        assert unet(x).shape == (3, 4, 32, 48)
    # Features default to the stride-4 level, unprojected; pooled is the deepest level's mean.
    assert encoder.feature_stride == 4 and out.grid == (8, 12)
    torch.testing.assert_close(out.feature_map(), out.hidden_states[2])
    torch.testing.assert_close(out.pooled, out.hidden_states[4].mean(dim=(2, 3)))


def test_unet2d_norm_must_match_the_target():
    encoder = _tiny("unet2d")  # BatchNorm: running statistics the instance-norm target does not have
    unet = BasicUNet(spatial_dims=2, features=encoder.features, out_channels=2)
    with pytest.raises(ValueError, match=r"encoder tensor\(s\) the BasicUNet lacks: .*running_mean"):
        load_encoder_into_basic_unet(encoder, unet)
    instance = _tiny("unet2d", norm=("instance", {"affine": True}))
    assert load_encoder_into_basic_unet(instance, unet) > 0


def test_unet2d_feature_level_and_projection():
    encoder = _tiny("unet2d", feature_level=1, feature_dim=12)
    out = encoder(torch.randn(2, 1, 32, 32))
    assert encoder.feature_stride == 2 and out.grid == (16, 16)
    assert out.features.shape == (2, 256, 12) and encoder.feature_dim == 12
    weight, bias = encoder.feature_proj.weight, encoder.feature_proj.bias
    expected = torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], out.hidden_states[1]) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out.feature_map(), expected, rtol=1e-5, atol=1e-5)
    # The projection is not part of BasicUNet and is left out of the transfer.
    unet = BasicUNet(**encoder.basic_unet_kwargs(), out_channels=2)
    assert load_encoder_into_basic_unet(encoder, unet) == sum(
        1 for k in encoder.state_dict() if not k.startswith("feature_proj.")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": (8, 8, 16, 16, 32)}, "features must be six positive widths"),
        ({"feature_level": 5}, r"feature_level must be in 0\.\.4"),
        ({"feature_dim": 0}, "feature_dim must be >= 1 or None"),
    ],
)
def test_unet2d_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny("unet2d", **kwargs)
