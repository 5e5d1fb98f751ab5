"""Run records: file hashes, the hash cache, what a record holds, and the Trainer writing one."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import mosmoskit
from mosmoskit import provenance
from mosmoskit.provenance import (
    RUN_RECORD_NAME,
    compare_run_records,
    environment_info,
    file_sha256,
    hash_files,
    read_run_record,
    write_run_record,
)
from mosmoskit.training import Trainer, TrainerConfig

HOUR_NS = 3600 * 10**9


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _fresh_cache():
    provenance._HASH_CACHE.clear()
    yield
    provenance._HASH_CACHE.clear()


@pytest.fixture
def count_hashing(monkeypatch):
    """Count the files actually read for hashing."""
    calls = []
    real = provenance.file_sha256

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(provenance, "file_sha256", counting)
    return calls


def _age(path: Path, ns: int = HOUR_NS) -> None:
    """Set a file's modification time into the past (so that its cache entry is not racy)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - ns))


# ------------------------------------------------------------------------------------ file hashes
@pytest.mark.parametrize("size", [0, 1, 4096, 10_000])
def test_file_sha256_matches_hashlib_across_chunk_boundaries(tmp_path, size):
    data = bytes((i * 37 + 11) % 256 for i in range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == _sha(data)
    assert file_sha256(path, chunk_size=4096) == _sha(data)  # several reads, the last one short


def test_file_sha256_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file .*missing\.nii\.gz does not exist"):
        file_sha256(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="is a folder"):
        file_sha256(tmp_path)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        file_sha256(tmp_path / "f", chunk_size=0)


def test_hash_files_expands_folders_and_keeps_order(tmp_path):
    series = tmp_path / "dicom"
    series.mkdir()
    for name, data in (("b.dcm", b"bb"), ("a.dcm", b"a"), ("sub/c.dcm", b"ccc")):
        (series / name).parent.mkdir(exist_ok=True)
        (series / name).write_bytes(data)
    single = tmp_path / "z_report.jsonl"
    single.write_bytes(b"{}")
    entries = hash_files([single, series, single])
    assert [Path(e["path"]).relative_to(tmp_path).as_posix() for e in entries] == [
        "z_report.jsonl", "dicom/a.dcm", "dicom/b.dcm", "dicom/sub/c.dcm", "z_report.jsonl"]
    assert [e["sha256"] for e in entries] == [_sha(b"{}"), _sha(b"a"), _sha(b"bb"), _sha(b"ccc"), _sha(b"{}")]
    assert [e["size"] for e in entries] == [2, 1, 2, 3, 2]
    with pytest.raises(FileNotFoundError, match=r"gone\.nii\.gz does not exist"):
        hash_files([single, tmp_path / "gone.nii.gz"])
    with pytest.raises(ValueError, match="must be a list of files, got the single path"):
        hash_files(str(single))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        hash_files([tmp_path / "empty"])


def test_unchanged_old_files_are_hashed_once(tmp_path, count_hashing):
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"volume")
    _age(path)
    first = hash_files([path, path])
    assert count_hashing == ["image.nii.gz"], "the second listing and later calls come from the cache"
    assert hash_files([path]) == first[:1] and count_hashing == ["image.nii.gz"]
    os.utime(path)  # touched: hashed again, even with the same content
    assert hash_files([path])[0]["sha256"] == _sha(b"volume")
    assert count_hashing == ["image.nii.gz", "image.nii.gz"]


def test_a_file_replaced_by_an_older_copy_is_hashed_again(tmp_path):
    """``tar`` extraction or ``rsync -t`` put back old modification times: the inode and size still differ."""
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"original")
    _age(path)
    assert hash_files([path])[0]["sha256"] == _sha(b"original")
    replacement = tmp_path / "restored.tmp"
    replacement.write_bytes(b"restored from a backup")
    stat = path.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert hash_files([path])[0]["sha256"] == _sha(b"restored from a backup")


def test_a_racy_cache_entry_is_not_trusted(tmp_path):
    """A rewrite with the same size and the same modification time (one clock tick) is still seen."""
    path = tmp_path / "label.nii.gz"
    path.write_bytes(b"AAAA")
    before = path.stat()
    assert hash_files([path])[0]["sha256"] == _sha(b"AAAA")
    path.write_bytes(b"BBBB")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert hash_files([path])[0]["sha256"] == _sha(b"BBBB")


# ------------------------------------------------------------------------------------ run records
def test_run_record_holds_environment_config_and_data(tmp_path):
    image, label = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    image.write_bytes(b"image bytes")
    label.write_bytes(b"label")
    config = {"lr": 0.001, "image_size": [96, 96], "text_encoder": "tiny", "nested": {"a": None}}
    path = write_run_record(tmp_path / "run", config, [image, label], device="cpu", extra={"kind": "pretrain"})
    assert path == tmp_path / "run" / RUN_RECORD_NAME
    record = json.loads(path.read_text())
    assert record["format"] == "mosmoskit-run-record" and record["format_version"] == 1
    assert record["kit_version"] == mosmoskit.__version__
    assert record["python"] == platform.python_version() and record["platform"] == platform.platform()
    assert record["versions"]["torch"] == str(torch.__version__)
    for name in ("monai", "transformers", "numpy", "nibabel"):
        assert record["versions"][name] == metadata.version(name)
    assert record["device"]["type"] == "cpu" and record["torch_build"]["threads"] == torch.get_num_threads()
    assert record["config"] == config
    assert record["config_sha256"] == _sha(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    files = record["data"]["files"]
    assert [(f["path"], f["size"], f["sha256"]) for f in files] == [
        (str(image), 11, _sha(b"image bytes")), (str(label), 5, _sha(b"label"))]
    assert record["data"]["count"] == 2 and record["data"]["total_bytes"] == 16
    assert record["extra"] == {"kind": "pretrain"}
    assert len(record["sessions"]) == 1 and record["sessions"][0]["data_sha256"] == record["data"]["sha256"]
    assert not [p for p in path.parent.iterdir() if p.name != RUN_RECORD_NAME], "written atomically, nothing else"


def test_a_changed_data_file_changes_the_record(tmp_path):
    data = tmp_path / "case.nii.gz"
    data.write_bytes(b"0123456789")
    write_run_record(tmp_path / "run", {"lr": 0.1}, [data])
    first = read_run_record(tmp_path / "run")
    data.write_bytes(b"0123456780")  # one byte, same size
    write_run_record(tmp_path / "run", {"lr": 0.1}, [data])
    second = read_run_record(tmp_path / "run")
    assert second["data"]["files"][0]["sha256"] == _sha(b"0123456780") != first["data"]["files"][0]["sha256"]
    assert second["data"]["sha256"] != first["data"]["sha256"]
    assert compare_run_records(first, second) == ["data: 1 changed (case.nii.gz)"]
    # The record keeps its history: created once, one session per write.
    assert second["created"] == first["created"] and len(second["sessions"]) == 2
    assert [s["data_sha256"] for s in second["sessions"]] == [first["data"]["sha256"], second["data"]["sha256"]]


def test_rewriting_a_record_reuses_its_hashes(tmp_path, count_hashing):
    data = tmp_path / "ct.nii.gz"
    data.write_bytes(b"x" * 1000)
    _age(data)
    write_run_record(tmp_path / "run", {}, [data])
    provenance._HASH_CACHE.clear()  # as in a new process: only the record on disk remembers
    write_run_record(tmp_path / "run", {}, [data])
    assert count_hashing == ["ct.nii.gz"]


def test_compare_run_records_lists_what_changed(tmp_path):
    a = {"config": {"lr": 0.1, "seed": 0}, "data": None, "kit_version": "0.1.0", "python": "3.11.7",
         "versions": {"torch": "2.12.0", "monai": "1.6.0"}, "torch_build": {"threads": 2}, "device": {"type": "cpu"}}
    b = {"config": {"lr": 0.2, "seed": 0, "new": 1}, "data": {"sha256": "x", "files": []}, "kit_version": "0.1.0",
         "python": "3.11.7", "versions": {"torch": "2.13.0", "monai": "1.6.0"}, "torch_build": {"threads": 8},
         "device": {"type": "cuda"}}
    assert compare_run_records(a, b) == [
        "config lr: 0.1 -> 0.2", "config new: '<absent>' -> 1", "data: not listed -> listed",
        "torch: 2.12.0 -> 2.13.0", "torch build: {'threads': 2} -> {'threads': 8}", "device: cpu -> cuda"]
    assert compare_run_records(a, a) == []
    assert compare_run_records(a, b, config=False)[0] == "data: not listed -> listed"


def test_run_record_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"config must hold only JSON values"):
        write_run_record(tmp_path / "a", {"path": Path("x")})
    with pytest.raises(ValueError, match=r"config must hold only JSON values.*NaN"):
        write_run_record(tmp_path / "a", {"lr": float("nan")})
    with pytest.raises(ValueError, match="config must be a dict"):
        write_run_record(tmp_path / "a", [1, 2])
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz does not exist"):
        write_run_record(tmp_path / "a", {}, [tmp_path / "nope.nii.gz"])
    broken = tmp_path / "b" / RUN_RECORD_NAME
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"run record .*run_record\.json is not valid JSON"):
        write_run_record(tmp_path / "b", {})
    assert broken.read_text() == "{not json", "an unreadable record is never overwritten"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / RUN_RECORD_NAME).write_text('{"some": "thing"}')
    with pytest.raises(ValueError, match="is not a mosmoskit run record"):
        read_run_record(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_run_record(tmp_path / "d")


def test_environment_info_names_the_device():
    info = environment_info("cpu")
    assert info["device"]["type"] == "cpu" and info["kit_version"] == mosmoskit.__version__
    assert set(provenance.MAIN_DEPENDENCIES) <= set(info["versions"])
    head = info["kit_git_head"]
    assert head is None or (len(head) == 40 and int(head, 16) >= 0)


# ------------------------------------------------------------------------------- the trainer's record
class _Linear:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(2, 1)

    def step(self, batch):
        x, y = batch
        return {"mse": F.mse_loss(self.model(x), y)}


def test_the_trainer_records_every_session(tmp_path):
    data_file = tmp_path / "cases.jsonl"
    data_file.write_bytes(b'{"image": "a.nii.gz"}\n')
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(x, x.sum(1, keepdim=True))
    run_config = {"model": "linear", "width": 2}

    def fit(max_steps):
        config = TrainerConfig(max_steps=max_steps, checkpoint_every=2, output_dir=str(tmp_path / "run"),
                               progress=False, device="cpu")
        return Trainer(_Linear(), config, train_dataset=dataset, batch_size=4, kind="finetune",
                       run_config=run_config, data_files=[data_file]).fit()

    fit(2)
    with pytest.warns(UserWarning, match="max_steps: 2 -> 4"):
        fit(4)  # resumed and extended
    record = read_run_record(tmp_path / "run")
    assert record["config"] == run_config
    assert record["data"]["files"][0]["sha256"] == _sha(data_file.read_bytes())
    assert [s["extra"]["start_step"] for s in record["sessions"]] == [0, 2]
    assert record["sessions"][1]["extra"]["resumed_from"] == "checkpoint_step000002.pt"
    assert record["extra"]["kind"] == "finetune" and record["extra"]["trainer"]["max_steps"] == 4
    with pytest.raises(ValueError, match="data_files must be a list of paths"):
        Trainer(_Linear(), TrainerConfig(output_dir=str(tmp_path / "x"), device="cpu"), train_dataset=dataset,
                batch_size=4, data_files=str(data_file))
