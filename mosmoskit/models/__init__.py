"""Networks: the model registry, image encoders, the organ-tag head, fine-tuning segmenters.

Importing this package registers every built-in model, so ``create_model("vit3d")`` and
``create_model("unetr3d", out_channels=14)`` work after ``import mosmoskit.models``. See
``registry.py`` for adding a backbone, ``segmenters.py`` for the fine-tuning variants and
``fusion.py`` for how attention maps enter a segmenter.
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
from mosmoskit.models.fusion import (
    FUSION_MODES,
    FusionMaps,
    concat_maps,
    prepare_fusion_maps,
    widen_conv_inputs,
    widen_input_channels,
)
from mosmoskit.models.segmenters import (  # noqa: E402  (registers "unetr3d", "unet2d-seg")
    DEFAULT_SEGMENTERS,
    SEGMENTER_FOR_ENCODER,
    UNETR_SKIP_BLOCKS,
    LoadedPart,
    LoadReport,
    MosmosSegmenter,
    build_segmenter,
    segmenter_kwargs_for_encoder,
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
    "FUSION_MODES",
    "FusionMaps",
    "concat_maps",
    "prepare_fusion_maps",
    "widen_conv_inputs",
    "widen_input_channels",
    "DEFAULT_SEGMENTERS",
    "SEGMENTER_FOR_ENCODER",
    "UNETR_SKIP_BLOCKS",
    "LoadedPart",
    "LoadReport",
    "MosmosSegmenter",
    "build_segmenter",
    "segmenter_kwargs_for_encoder",
]
