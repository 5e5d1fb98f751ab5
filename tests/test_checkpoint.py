"""Checkpoint files: round trip, refusal of corrupt/foreign/unsafe files, finding the newest."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import mosmoskit
from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.training import checkpoint as ckpt_module
from mosmoskit.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    checkpoint_name,
    checkpoint_step,
    describe_checkpoint,
    latest_checkpoint,
    link_last,
    list_checkpoints,
    load_checkpoint,
    payload_digest,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _save(path: Path, step: int = 7, **overrides) -> Path:
    model = _model()
    kwargs = dict(
        state={"model": model.state_dict(), "trainer": {"step": step, "epoch": 1}},
        config={"lr": 1e-3, "image_size": [96, 96], "text_encoder": "tiny"},
        label_map=None,
        kind="pretrain",
        extra={"note": "unit test", "metrics": {"dice": 0.5}},
    )
    kwargs.update(overrides)
    return save_checkpoint(path, **kwargs)


class _MarkerPayload:
    """Unpickling this would create a file: the stand-in for code a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (io.open, (self.marker, "w"))


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_keeps_state_config_and_label_map(tmp_path):
    label_map = load_label_map("btcv")
    model = _model()
    path = _save(tmp_path / "run" / "checkpoint_step000007.pt", label_map=label_map,
                 state={"model": model.state_dict(), "trainer": {"step": 7}})
    loaded = load_checkpoint(path)

    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["format_version"] == CHECKPOINT_FORMAT_VERSION == 2
    assert loaded["checksum"] == payload_digest(loaded) and loaded["checksum"].startswith("sha256:")
    assert loaded["kind"] == "pretrain"
    assert loaded["kit_version"] == mosmoskit.__version__
    assert loaded["torch_version"] == str(torch.__version__)
    assert loaded["created"].endswith("+00:00")
    assert loaded["config"] == {"lr": 1e-3, "image_size": [96, 96], "text_encoder": "tiny"}
    assert loaded["extra"] == {"note": "unit test", "metrics": {"dice": 0.5}}
    assert LabelMap.from_dict(loaded["label_map"]).to_dict() == label_map.to_dict()
    assert loaded["label_map"]["labels"]["liver"] == label_map.id_of("liver")
    restored = _model()
    for p in restored.parameters():
        torch.nn.init.zeros_(p)
    restored.load_state_dict(loaded["state"]["model"])
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name
    # Nothing but the file itself is left in the folder (the temporary file was renamed).
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_describe_needs_only_the_path(tmp_path):
    path = _save(tmp_path / "c.pt", step=12, label_map=load_label_map("btcv").to_dict())
    info = describe_checkpoint(path)
    # Linear(4, 3): 12 + 3; BatchNorm1d(3): weight, bias, running mean/var (3 each) + num_batches_tracked (1).
    assert info["num_parameters"] == 15 + 12 + 1
    assert info["step"] == 12
    assert info["kind"] == "pretrain"
    assert info["config"]["text_encoder"] == "tiny"
    assert info["label_map"]["name"] == "btcv"
    assert info["state_keys"] == ["model", "trainer"]
    assert info["size_bytes"] == path.stat().st_size


def test_load_uses_weights_only(tmp_path, monkeypatch):
    path = _save(tmp_path / "c.pt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(path)
    describe_checkpoint(path)
    assert calls and all(c.get("weights_only") is True for c in calls)


# --------------------------------------------------------------------------------- bad files
def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = _save(tmp_path / "c.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt .*truncated or corrupt"):
        load_checkpoint(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt \(0 bytes\) is truncated or corrupt"):
        load_checkpoint(empty)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=r"noise\.pt"):
        load_checkpoint(path)


def test_foreign_torch_files_are_not_checkpoints(tmp_path):
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(_model().state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain_state_dict\.pt is a PyTorch file but not a mosmoskit checkpoint"):
        load_checkpoint(plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(CheckpointError, match=r"tensor\.pt is a PyTorch file but not a mosmoskit checkpoint .*Tensor"):
        load_checkpoint(tensor)


def test_newer_format_version_asks_for_an_upgrade(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_module, "CHECKPOINT_FORMAT_VERSION", 3)
    path = _save(tmp_path / "future.pt")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"future\.pt has format version 3.*reads up to version 2: upgrade"):
        load_checkpoint(path)


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "crafted.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "kind": "pretrain", "config": {},
                "state": {"model": {}}, "extra": {"x": _MarkerPayload(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"crafted\.pt was refused.*could run code"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        describe_checkpoint(path)
    assert not marker.exists()
    # The control: unrestricted unpickling of the same file does run the payload, so the test above
    # would catch a load path that forgot weights_only=True.
    torch.load(path, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize(
    "bad, where",
    [
        ({"arr": np.zeros(3)}, r"state\['arr'\] is a numpy.ndarray"),
        ({"path": Path("x")}, r"state\['path'\] is a pathlib.*PosixPath|WindowsPath"),
        ({"nested": {"fn": len}}, r"state\['nested'\]\['fn'\]"),
        ({"n": np.float32(1.0)}, r"state\['n'\] is a numpy.float32"),
    ],
)
def test_save_refuses_values_that_need_pickle(tmp_path, bad, where):
    with pytest.raises(TypeError, match=where):
        save_checkpoint(tmp_path / "c.pt", state=bad, config={}, kind="finetune")
    assert not any(tmp_path.iterdir()), "nothing may be left behind by a refused save"


def test_save_refuses_a_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="checkpoint kind must be a short name"):
        save_checkpoint(tmp_path / "c.pt", state={}, config={}, kind="")


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = _save(tmp_path / "c.pt", step=3)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, state={"bad": object()}, config={}, kind="pretrain")
    assert path.read_bytes() == before


# -------------------------------------------------------------------------------- run folders
def test_latest_checkpoint_by_step_number(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (9, 10, 2):
        _save(tmp_path / checkpoint_name(step), step=step)
    # A write killed half-way leaves only a temporary name, which never counts.
    (tmp_path / ".checkpoint_step000099.pt.abc.tmp.pt").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_step000010.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 9, 10]
    assert checkpoint_name(1234567) == "checkpoint_step1234567.pt"


def test_latest_checkpoint_considers_last_pt(tmp_path):
    only_last = tmp_path / "a"
    _save(only_last / "last.pt", step=5)
    assert latest_checkpoint(only_last) == only_last / "last.pt"

    newer_last = tmp_path / "b"
    _save(newer_last / checkpoint_name(4), step=4)
    _save(newer_last / "last.pt", step=8)
    assert latest_checkpoint(newer_last) == newer_last / "last.pt"
    assert checkpoint_step(newer_last / "last.pt") == 8

    linked = tmp_path / "c"
    path = _save(linked / checkpoint_name(6), step=6)
    link_last(path)
    assert latest_checkpoint(linked) == path


def test_latest_checkpoint_of_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing")


def test_prune_keeps_newest_and_last_survives(tmp_path):
    paths = [_save(tmp_path / checkpoint_name(s), step=s) for s in (1, 2, 3, 4)]
    last = link_last(paths[0])
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert removed == paths[:2]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    # last.pt was a link to the pruned step-1 file: it still holds that content.
    assert load_checkpoint(last)["state"]["trainer"]["step"] == 1
    with pytest.raises(ValueError, match="keep_last must be an integer >= 1"):
        prune_checkpoints(tmp_path, keep_last=0)


def test_link_last_replaces_atomically(tmp_path):
    first = _save(tmp_path / checkpoint_name(1), step=1)
    second = _save(tmp_path / checkpoint_name(2), step=2)
    link_last(first)
    link_last(second)
    assert load_checkpoint(tmp_path / "last.pt")["state"]["trainer"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_step000001.pt", "checkpoint_step000002.pt",
                                                           "last.pt"]
    if hasattr(os, "link"):
        assert os.path.samefile(tmp_path / "last.pt", second)


# ------------------------------------------------------------------------------------ checksums
def _tensor_record_offset(path: Path) -> tuple[int, int]:
    """(offset, size) of the largest tensor's raw bytes inside a ``torch.save`` zip archive."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _save_big(path: Path) -> tuple[Path, torch.Tensor]:
    weight = torch.arange(4096, dtype=torch.float32) / 7.0
    return save_checkpoint(path, state={"model": {"w": weight}}, config={"lr": 0.1}, kind="pretrain"), weight


def test_a_flipped_bit_in_a_weight_is_caught_by_the_checksum(tmp_path):
    path, weight = _save_big(tmp_path / "flip.pt")
    offset, size = _tensor_record_offset(path)
    assert size == weight.numel() * 4
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # The control: torch itself reads the damaged file without complaint, with a changed weight.
    silently = torch.load(path, weights_only=True)
    assert not torch.equal(silently["state"]["model"]["w"], weight)
    for kwargs in ({}, {"mmap": True}):
        with pytest.raises(CheckpointError, match=r"flip\.pt: checksum mismatch \(the file is corrupt or was modified\)"):
            load_checkpoint(path, **kwargs)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        describe_checkpoint(path)


def test_an_edited_checkpoint_is_caught_by_the_checksum(tmp_path):
    path, _ = _save_big(tmp_path / "edited.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["lr"] = 0.2  # re-saved with the old checksum, as a hand edit would be
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"edited\.pt: checksum mismatch"):
        load_checkpoint(path)


def test_missing_checksum_and_old_format_are_refused(tmp_path):
    path, _ = _save_big(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save(payload, tmp_path / "nosum.pt")
    with pytest.raises(CheckpointError, match=r"nosum\.pt has no valid checksum entry"):
        load_checkpoint(tmp_path / "nosum.pt")
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "v1.pt")
    with pytest.raises(CheckpointError, match=r"v1\.pt has format version 1.*before checkpoints carried a checksum"):
        load_checkpoint(tmp_path / "v1.pt")


def test_payload_digest_follows_its_documented_encoding():
    import hashlib

    def put(tag: bytes, content: bytes = b"") -> bytes:
        return tag + len(content).to_bytes(8, "little") + content

    # {"x": 1, "t": tensor([1., 2.])}: a map of 2 entries, keys sorted ("t" < "x").
    encoded = (put(b"M", (2).to_bytes(8, "little"))
               + put(b"S", b"t") + put(b"T", b"torch.float32(2,)") + put(b"R") + (8).to_bytes(8, "little")
               + np.array([1.0, 2.0], dtype="<f4").tobytes()
               + put(b"S", b"x") + put(b"I", b"1"))
    expected = "sha256:" + hashlib.sha256(encoded).hexdigest()
    assert payload_digest({"x": 1, "t": torch.tensor([1.0, 2.0])}) == expected
    # The stored checksum itself is never part of what it covers.
    assert payload_digest({"t": torch.tensor([1.0, 2.0]), "x": 1, "checksum": "sha256:0"}) == expected


def test_payload_digest_sees_values_dtypes_and_shapes():
    base = {"w": torch.zeros(2, 3), "lr": 0.1, "names": ["a", "b"]}
    digest = payload_digest(base)
    assert payload_digest({"names": ("a", "b"), "lr": 0.1, "w": torch.zeros(2, 3)}) == digest  # order, tuple
    changed_value = dict(base, w=torch.zeros(2, 3).index_fill_(1, torch.tensor([2]), 1e-30))
    changes = [changed_value, dict(base, w=torch.zeros(3, 2)), dict(base, w=torch.zeros(2, 3, dtype=torch.int32)),
               dict(base, lr=0.1000001), dict(base, names=["a", "c"]), dict(base, extra=None), {"w": base["w"]}]
    assert len({payload_digest(c) for c in changes} | {digest}) == len(changes) + 1
    # Values that look alike in JSON still differ: 1 vs 1.0 vs True vs "1".
    assert len({payload_digest({"v": v}) for v in (1, 1.0, True, "1")}) == 4
    with pytest.raises(TypeError, match=r"payload\['v'\] is a builtins.set"):
        payload_digest({"v": {1, 2}})


def test_load_verifies_on_the_cpu_then_moves_to_map_location(tmp_path):
    path, weight = _save_big(tmp_path / "c.pt")
    moved = load_checkpoint(path, map_location="meta")  # every machine has the meta device
    assert moved["state"]["model"]["w"].device.type == "meta"
    assert torch.equal(load_checkpoint(path, map_location=None)["state"]["model"]["w"], weight)
    with pytest.raises(ValueError, match="map_location must be a device"):
        load_checkpoint(path, map_location="gpu-please")


def test_remove_stale_temporaries_touches_only_killed_writes(tmp_path):
    keep = [tmp_path / "checkpoint_step000002.pt", tmp_path / "notes.txt", tmp_path / ".hidden_user_file"]
    stale = [tmp_path / ".checkpoint_step000004.pt.ab_12cd.tmp.pt", tmp_path / ".last.pt.x9y8z7w6.tmp.pt",
             tmp_path / ".history.jsonl.qwerty12.tmp.jsonl"]
    for p in keep + stale:
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, names=("history.jsonl",))
    assert removed == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    with pytest.raises(FileNotFoundError, match="missing"):
        remove_stale_temporaries(tmp_path / "missing")
