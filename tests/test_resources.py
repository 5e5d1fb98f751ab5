"""Memory budgets: reading what is free, estimating what the kit will allocate, refusing in time.

The estimates are checked against hand-computed sizes and against the arrays a real training
cache holds; the refusals and the automatic CPU accumulation are checked by pretending budgets
(``available_memory`` monkeypatched), so they run on any machine. One test needs CUDA.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import mosmoskit.inference as inference
from mosmoskit import resources
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import Volume
from mosmoskit.finetuning import FinetuneConfig, prepare_finetuning_data
from mosmoskit.finetuning.data import cache_memory_bytes, make_train_dataset
from mosmoskit.inference import predict_volume
from mosmoskit.resources import (
    ResourceError,
    available_memory,
    case_voxels,
    check_fits,
    estimate_cache_bytes,
    estimate_inference_bytes,
    host_available_bytes,
    inference_memory,
)

GB = 10**9


def pretend(monkeypatch, host_bytes=None, gpu_bytes=None) -> list:
    """Make every budget check see these free-memory numbers; returns the devices it was asked about."""
    asked = []

    def fake(device=None):
        asked.append(device)
        return {"host_bytes": host_bytes, "gpu_bytes": gpu_bytes}

    monkeypatch.setattr(resources, "available_memory", fake)
    return asked


# ------------------------------------------------------------------------------- what is free
def test_host_memory_is_read_from_meminfo(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    7654321 kB\n")
    assert host_available_bytes(meminfo) == 7654321 * 1024

    # no MemAvailable line (or no file): psutil if installed, else unknown
    meminfo.write_text("MemTotal: 16000000 kB\n")
    monkeypatch.setitem(sys.modules, "psutil",
                        types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(available=1234)))
    assert host_available_bytes(meminfo) == 1234
    assert host_available_bytes(tmp_path / "absent") == 1234
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    assert host_available_bytes(meminfo) is None


def test_available_memory_on_the_cpu_has_no_gpu_budget():
    memory = available_memory("cpu")
    assert memory["gpu_bytes"] is None
    if Path("/proc/meminfo").exists():
        assert isinstance(memory["host_bytes"], int) and memory["host_bytes"] > 0


def test_check_fits_refuses_with_both_numbers_and_the_hint():
    check_fits(0.8 * GB, 1 * GB, "x", "y")  # exactly 80 %: fits
    check_fits(10 * GB, None, "x", "y")  # unknown budget: nothing to check
    with pytest.raises(ResourceError) as info:
        check_fits(2.5 * GB, 2 * GB, "caching 3 cases", "lower cache_rate")
    assert isinstance(info.value, MemoryError)
    assert str(info.value) == ("caching 3 cases needs about 2.50 GB but only 1.60 GB (80% of 2.00 GB available) "
                               "may be used; lower cache_rate")
    with pytest.raises(ValueError, match="fraction"):
        check_fits(1, 2, "x", "y", fraction=1.5)


# ---------------------------------------------------------------------------------- estimates
def test_inference_estimate_by_hand():
    # (10, 20, 30) grid, 3 classes, 8^3 windows, 2 per batch
    need = inference_memory((10, 20, 30), 3, (8, 8, 8), 2)
    assert need.output_bytes == (3 + 1) * 6000 * 4  # scores + MONAI's count map
    assert need.input_bytes == 6000 * 4
    assert need.window_bytes == 2 * (1 + 3) * 512 * 4
    assert estimate_inference_bytes((10, 20, 30), 3, (8, 8, 8), 2) == 96000 + 24000 + 16384
    # a 2D model over the slices sums sw_batch_size slices at a time
    assert inference_memory((10, 20, 30), 3, (8, 8), 2, slices=True).output_bytes == 4 * (10 * 20 * 2) * 4
    with pytest.raises(ValueError, match="positive"):
        inference_memory((10, 0, 30), 3, (8, 8, 8), 2)


def test_cache_estimate_reads_headers_only(tmp_path):
    root = generate_cohort(tmp_path / "data", n=2, seed=3, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0),
                           progress=False)
    cases = [{"image": str(root / "imagesTr" / f"phantom_000{i}.nii.gz"),
              "label": str(root / "labelsTr" / f"phantom_000{i}.nii.gz")} for i in range(2)]
    assert estimate_cache_bytes(cases, 3) == 2 * 2 * 32**3 * 4
    assert estimate_cache_bytes(cases, 3, spacing=(20.0, 20.0, 40.0)) == 2 * 2 * (16 * 16 * 8) * 4
    assert estimate_cache_bytes(cases, 3, dtype_bytes=2, keys=("image",)) == 2 * 32**3 * 2

    # a header announcing 600 x 600 x 400 voxels with no voxels behind it: sized, never read
    big = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    big.header.set_data_shape((600, 600, 400))
    path = tmp_path / "big.nii"
    path.write_bytes(big.header.binaryblock + b"\0" * 4)
    assert case_voxels(path, 3) == 600 * 600 * 400
    assert case_voxels([path, path], 3) == 2 * 600 * 600 * 400  # one file per channel


# ------------------------------------------------------------------------ the training cache
def tiny_config(root: Path, dataset: Path, **overrides) -> FinetuneConfig:
    common = dict(dataset=str(dataset), spatial_dims=2, roi_size=(32, 32), encoder_width=8, test_fraction=0.25,
                  max_steps=1, batch_size=1, crops_per_case=1, val_max_cases=1, device="cpu", output_dir=str(root))
    common.update(overrides)
    return FinetuneConfig(**common)


@pytest.fixture(scope="module")
def cohort_2d(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("c2d") / "data", n=4, seed=3, shape=(32, 32), spacing=(12.0, 12.0),
                           spatial_dims=2, slices_per_case=2, progress=False)


def test_cache_estimate_matches_what_the_cache_holds(cohort_2d, tmp_path):
    config = tiny_config(tmp_path, cohort_2d)
    data = prepare_finetuning_data(config, progress=False)
    items = data.items(data.split.labelled)
    estimate = cache_memory_bytes(items, config, data.label_map.num_classes)
    # 32 x 32 slices: image and label float32, and at most one int64 index per voxel
    assert estimate == len(items) * (2 * 4 * 1024 + 8 * 1024)

    dataset = make_train_dataset(data, config)
    held = 0
    for cached in dataset._cache:
        held += cached["image"].numel() * cached["image"].element_size()
        held += cached["label"].numel() * cached["label"].element_size()
        held += sum(np.asarray(i).nbytes for i in cached["label_cls_indices"])
    assert held == estimate


def test_a_cache_that_does_not_fit_is_refused_before_loading(cohort_2d, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, cohort_2d, cache_rate=0.5)
    data = prepare_finetuning_data(config, progress=False)
    n = len(data.split.labelled)
    needed = cache_memory_bytes(data.items(data.split.labelled)[: n // 2], config, data.label_map.num_classes)

    def must_not_load(*args, **kwargs):
        raise AssertionError("CacheDataset built although the cache does not fit")

    monkeypatch.setattr("monai.data.CacheDataset", must_not_load)
    pretend(monkeypatch, host_bytes=needed)  # 80 % of it is usable: too little
    with pytest.raises(ResourceError) as info:
        make_train_dataset(data, config)
    message = str(info.value)
    assert f"caching {n // 2} of {n} training cases" in message and "cache_rate=0.5" in message
    assert f"needs about {needed / 1e9:.2f} GB" in message and "lower cache_rate" in message

    monkeypatch.undo()
    pretend(monkeypatch, host_bytes=2 * needed)  # fits: the dataset is built
    assert len(make_train_dataset(data, config)) == n


# --------------------------------------------------------------------------------- inference
class Pointwise(nn.Module):
    """A 1x1 'network' with two classes (out_channels says so, as the kit's segmenters do)."""

    out_channels = 2

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-8.0, 8.0]).view(2, 1, *[1] * spatial_dims))
            self.conv.bias.copy_(torch.tensor([4.0, -4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def scan(shape=(20, 18, 12)) -> Volume:
    array = np.linspace(-200.0, 200.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return Volume(array=array, affine=np.eye(4), original_affine=np.eye(4), original_shape=shape,
                  spacing=(1.0,) * len(shape), axcodes_original=("R", "A", "S")[: len(shape)], source="scan.nii.gz")


def spy_sliding(monkeypatch) -> list[bool]:
    """Record the accumulate_on_cpu each sliding window runs with."""
    calls: list[bool] = []
    real = inference._sliding

    def spy(*args, **kwargs):
        calls.append(args[6])
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "_sliding", spy)
    return calls


@pytest.mark.parametrize("dims, return_probabilities", [(3, False), (3, True), (2, False)])
def test_output_too_big_for_the_device_is_summed_on_the_cpu(monkeypatch, caplog, dims, return_probabilities):
    config = FinetuneConfig(spatial_dims=dims, roi_size=(16,) * dims, window=(-100.0, 100.0), sw_overlap=0.5)
    model = Pointwise(dims)
    expected, expected_probs = predict_volume(model, scan(), config, return_probabilities=return_probabilities)

    calls = spy_sliding(monkeypatch)
    asked = pretend(monkeypatch, host_bytes=10 * GB, gpu_bytes=1000)  # a device budget far too small
    with caplog.at_level(logging.WARNING, logger="mosmoskit.inference"):
        labels, probs = predict_volume(model, scan(), config, return_probabilities=return_probabilities)
    assert calls == [True]
    assert asked == [torch.device("cpu")]  # asked about the model's device
    lines = [r.getMessage() for r in caplog.records if r.name == "mosmoskit.inference"]
    assert len(lines) == 1 and "summing them in host memory instead" in lines[0] and "scan.nii.gz" in lines[0]
    np.testing.assert_array_equal(labels, expected)
    if return_probabilities:
        np.testing.assert_allclose(probs, expected_probs)

    # enough device memory: accumulated where the model runs, nothing logged
    calls.clear()
    caplog.clear()
    pretend(monkeypatch, host_bytes=10 * GB, gpu_bytes=10 * GB)
    predict_volume(model, scan(), config, return_probabilities=return_probabilities)
    assert calls == [False] and not [r for r in caplog.records if r.name == "mosmoskit.inference"]


def test_output_too_big_for_the_host_too_is_refused_before_any_window(monkeypatch):
    config = FinetuneConfig(spatial_dims=3, roi_size=(16, 16, 16), window=(-100.0, 100.0))
    calls = spy_sliding(monkeypatch)
    pretend(monkeypatch, host_bytes=20_000, gpu_bytes=1000)
    with pytest.raises(ResourceError) as info:
        predict_volume(Pointwise(3), scan(), config)
    assert not calls, "a window ran before the refusal"
    message = str(info.value)
    assert "segmenting scan.nii.gz (grid (20, 18, 12), 2 output channels) in host memory" in message
    assert "GB" in message and "coarser voxel size" in message

    # a model that does not say its number of classes is run as asked (nothing to estimate with)
    class Anonymous(Pointwise):
        out_channels = None

    predict_volume(Anonymous(3), scan(), config)
    assert calls == [False]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_budget_fallback_gives_the_same_labels(monkeypatch, caplog):
    config = FinetuneConfig(spatial_dims=3, roi_size=(32, 32, 32), window=(-100.0, 100.0), sw_overlap=0.25)
    model = Pointwise(3).to("cuda")
    volume = scan((96, 80, 64))
    free = available_memory("cuda")["gpu_bytes"]
    assert free is not None and free > 0
    expected, _ = predict_volume(model, volume, config)
    calls = spy_sliding(monkeypatch)
    monkeypatch.setattr(resources, "available_memory",
                        lambda device=None: {"host_bytes": 100 * GB, "gpu_bytes": 10_000})
    with caplog.at_level(logging.WARNING, logger="mosmoskit.inference"):
        labels, _ = predict_volume(model, volume, config)
    assert calls == [True] and any("host memory instead" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(labels, expected)
