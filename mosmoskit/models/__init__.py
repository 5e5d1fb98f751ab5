"""Networks: the model registry, image encoders, the organ-tag head.

Importing this package registers every built-in model, so ``create_model("vit3d")`` works after
``import mosmoskit.models``. See ``registry.py`` for adding a backbone.
"""

from mosmoskit.models.registry import (
    MODEL_KINDS,
    ModelEntry,
    create_model,
    list_models,
    model_entry,
    model_test_kwargs,
    register_model,
)
from mosmoskit.models.image_encoders import (  # noqa: E402  (registers "vit3d", "unet2d")
    BASIC_UNET_LEVELS,
    UNETR_NUM_LAYERS,
    UNETR_PATCH_SIZE,
    BasicUNetEncoder,
    EncoderOutput,
    ImageEncoder,
    UNETRViTEncoder,
    load_encoder_into_basic_unet,
    load_encoder_into_unetr,
)
from mosmoskit.models.tag_head import (
    MAP_NORMALIZATIONS,
    POS_ENCODINGS,
    GroupFC,
    TagDecoderLayer,
    TagHead,
    TagHeadOutput,
    normalize_maps,
    scale_maps_by_probability,
    sincos_position_encoding,
    upsample_maps,
)

__all__ = [
    "MODEL_KINDS",
    "ModelEntry",
    "create_model",
    "list_models",
    "model_entry",
    "model_test_kwargs",
    "register_model",
    "BASIC_UNET_LEVELS",
    "UNETR_NUM_LAYERS",
    "UNETR_PATCH_SIZE",
    "BasicUNetEncoder",
    "EncoderOutput",
    "ImageEncoder",
    "UNETRViTEncoder",
    "load_encoder_into_basic_unet",
    "load_encoder_into_unetr",
    "MAP_NORMALIZATIONS",
    "POS_ENCODINGS",
    "GroupFC",
    "TagDecoderLayer",
    "TagHead",
    "TagHeadOutput",
    "normalize_maps",
    "scale_maps_by_probability",
    "sincos_position_encoding",
    "upsample_maps",
]
