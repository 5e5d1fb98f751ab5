"""The benchmark command (benchmarks/run.py) and the GPU check script (scripts/gpu_check.py).

The slow tests run the real commands at the small/tiny size on the CPU and check that they work:
every row is there and every number is finite. They assert no timing: a shared CI machine cannot
promise one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# benchmarks/ is a top-level folder of the repository, not part of the installed package.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.run import (  # noqa: E402
    CASES,
    DATA_WAIT_TARGET,
    SIZES,
    BenchConfig,
    HostMemoryMeter,
    _add_ratios,
    build_benchmark_segmenter,
    format_table,
    run_benchmarks,
    select_cases,
)
from mosmoskit.labels import load_label_map  # noqa: E402
from mosmoskit.models import TagHead  # noqa: E402

SMALL = SIZES["small"]


def _run(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------ fast checks


def test_select_cases_by_pattern_and_unknown_pattern_raises():
    assert [c.name for c in select_cases(["finetune/*"])] == [
        "finetune/unetr_plain", "finetune/mosmos_decoder_shared", "finetune/mosmos_decoder", "finetune/mosmos_input"]
    assert len(select_cases(None)) == len(CASES)
    with pytest.raises(ValueError, match="match no benchmark case"):
        select_cases(["finetune/nope"])


@pytest.mark.parametrize("kwargs, message", [
    ({"size": "huge"}, "size must be one of"),
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"threads": -2}, "threads must be an integer >= 0"),
    ({"only": ["nothing/*"]}, "match no benchmark case"),
])
def test_run_benchmarks_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_benchmarks(**{"device": "cpu", **kwargs})


def test_bench_config_validates_sizes():
    fields = {**SMALL.__dict__}
    with pytest.raises(ValueError, match="multiples of 16"):
        BenchConfig(**{**fields, "roi_size": (30, 32, 32)})
    with pytest.raises(ValueError, match="smaller than roi_size"):
        BenchConfig(**{**fields, "volume_size": (16, 96, 96)})
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        BenchConfig(**{**fields, "batch_size": 1})


def test_segmenters_differ_from_plain_unetr_by_exactly_the_map_branch():
    """Shared decoder fusion adds the tag head and K input channels of the 1x1 head, nothing else (the
    ViT is not duplicated); the default decoder fusion adds exactly one frozen ViT copy on top."""
    label_map = load_label_map(SMALL.label_map)
    k, classes = len(label_map.foreground_names), label_map.num_classes
    torch.manual_seed(0)
    plain = build_benchmark_segmenter(SMALL, "none")
    shared = build_benchmark_segmenter(SMALL, "decoder-shared")
    decoder = build_benchmark_segmenter(SMALL, "decoder")
    head = TagHead(num_tags=k, feature_dim=SMALL.hidden_size, embed_dim=SMALL.tag_head_dim,
                   num_heads=SMALL.tag_head_heads, readout="evidence")

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(shared) - count(plain) == count(head) + k * classes
    assert count(decoder) - count(shared) == count(plain.vit)
    x = torch.rand(1, 1, *SMALL.roi_size)
    for model in (plain, shared, decoder, build_benchmark_segmenter(SMALL, "input")):
        with torch.no_grad():
            assert model.eval()(x).shape == (1, classes, *SMALL.roi_size)
    with pytest.raises(ValueError, match="fusion must be"):
        build_benchmark_segmenter(SMALL, "middle")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_host_memory_meter_sees_a_numpy_allocation():
    meter = HostMemoryMeter()
    meter.start()
    block = np.ones(200 * 2**20 // 8)  # 200 MB, every page touched
    del block
    assert meter.method.startswith("VmHWM")
    assert 190 <= meter.peak_mb() <= 400


def _row(case, median, peak, **extra):
    return {"case": case, "group": case.split("/")[0], "median_s": median, "times_s": [median, median],
            "peak_mb": peak, **extra}


def test_ratios_and_table_from_hand_made_rows():
    rows = [
        _row("finetune/unetr_plain", 1.0, 100.0),
        _row("finetune/mosmos_decoder_shared", 1.2, 110.0),
        _row("finetune/mosmos_input", 1.5, 150.0),
        _row("data/disk", 0.1, 50.0, samples_per_s=10.0, wait_fraction=0.3),
        _row("data/cache", 0.02, 80.0, samples_per_s=50.0, wait_fraction=0.05, volumes=4, crops_per_volume=2,
             num_workers=0, cache_fill_s=1.0, cache_mb=20.0),
    ]
    _add_ratios(rows)
    decoder, cache = rows[1], rows[4]
    assert decoder["time_ratio"] == pytest.approx(1.2)
    assert decoder["memory_ratio"] == pytest.approx(1.1)
    assert decoder["meets_target"] is False  # 1.2 > 1.15
    assert "meets_target" not in rows[2]  # input fusion has no target
    assert cache["speedup"] == pytest.approx(5.0)
    assert cache["meets_target"] is (0.05 < DATA_WAIT_TARGET)
    result = {"machine": {"cpu": "test CPU", "cpu_cores": 2, "torch_threads": 1, "torch": "t", "monai": "m",
                          "python": "p"},
              "device": "cpu", "amp": None, "size": "small", "config": {"phantom_shape": [8, 8, 8]},
              "timing_method": "t", "memory_method": "m", "rows": rows}
    table = format_table(result)
    assert "finetune/mosmos_decoder_shared" in table and "<= 1.15: MISSED" in table
    assert "1.20 (1.20-1.20)" in table
    assert "50.0 crops/s" in table and "(< 10%: met)" in table


# ------------------------------------------------------------------------------------ the commands


@pytest.mark.slow
def test_small_benchmark_runs_and_fills_every_row(tmp_path):
    out = tmp_path / "results.json"
    # One torch thread: CI machines are shared, and spin-waiting OpenMP threads make a loaded
    # 2-core machine many times slower.
    proc = _run(["-m", "benchmarks.run", "--size", "small", "--device", "cpu", "--repeats", "2", "--warmup", "0",
                 "--threads", "1", "--out", str(out)], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m benchmarks.run --size small")
    assert result["machine"]["cpu_cores"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert "VmHWM" in result["memory_method"] or "ru_maxrss" in result["memory_method"]
    rows = {row["case"]: row for row in result["rows"]}
    assert list(rows) == [case.name for case in CASES]
    for name, row in rows.items():
        assert len(row["times_s"]) == 2, name  # data rows: min(repeats, 3) loader passes
        assert math.isfinite(row["median_s"]) and row["median_s"] > 0, name
        assert row["peak_mb"] is None or (math.isfinite(row["peak_mb"]) and row["peak_mb"] > 0), name
        assert name in proc.stdout
        if "loss" in row:
            assert math.isfinite(row["loss"]), name
        case = next(c for c in CASES if c.name == name)
        if case.baseline and row["group"] != "data":
            assert math.isfinite(row["time_ratio"]) and row["time_ratio"] > 0, name
    if rows["finetune/unetr_plain"]["peak_mb"] is not None:
        for name in ("finetune/mosmos_decoder", "inference/mosmos_input"):
            assert math.isfinite(rows[name]["memory_ratio"]), name
    # 96 x 96 x 48 in 32^3 windows at 25% overlap: a 24-voxel stride gives 4 x 4 x 2 windows.
    for name in ("inference/unetr_plain", "inference/mosmos_decoder_shared", "inference/mosmos_decoder",
                 "inference/mosmos_input"):
        assert rows[name]["windows"] == 4 * 4 * 2
        assert rows[name]["output_shape"] == [1, 14, 96, 96, 48]
        assert rows[name]["output_device"] == "cpu" and rows[name]["output_sum_finite"]
    for name in ("pretrain/mosmos_text_frozen", "pretrain/mosmos_text_tuned"):
        assert set(rows[name]["terms"]) == {"contrastive", "tags", "background"}  # 3D: no 2D-only terms
    tuned, frozen = rows["pretrain/mosmos_text_tuned"], rows["pretrain/mosmos_text_frozen"]
    assert tuned["trainable_parameters"] > frozen["trainable_parameters"]
    disk, cache = rows["data/disk"], rows["data/cache"]
    for row in (disk, cache):
        assert row["samples_per_s"] > 0 and 0 <= row["wait_fraction"] < 1
        assert row["steps_timed"] == SMALL.data_steps - 1
    assert cache["cache_fill_s"] > 0 and (cache["cache_mb"] is None or cache["cache_mb"] > 0)
    assert isinstance(cache["meets_target"], bool)


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    proc = _run(["scripts/gpu_check.py", "--tiny", "--out", str(tmp_path), "--bench-only", "finetune/unetr_plain",
                 "finetune/mosmos_decoder"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    parts = report["parts"]
    assert parts["benchmark"]["status"] == "ok" and parts["pretrain"]["status"] == "ok"
    assert parts["finetune"]["status"] in ("ok", "skipped")
    assert math.isfinite(parts["pretrain"]["last_loss"])
    assert Path(parts["pretrain"]["checkpoint"]).is_file()
    for part in parts.values():
        assert part["host_peak_mb"] is None or part["host_peak_mb"] >= 0
    bench = json.loads((tmp_path / "benchmark.json").read_text())
    assert [row["case"] for row in bench["rows"]] == ["finetune/unetr_plain", "finetune/mosmos_decoder"]
    assert "finetune/mosmos_decoder" in proc.stdout


def test_gpu_check_refuses_an_unknown_part(tmp_path):
    proc = _run(["scripts/gpu_check.py", "--tiny", "--skip", "everything"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_unetr3d_full_labels_script_runs_tiny_on_cpu(tmp_path):
    """The 3D GPU check script works end to end (tiny sizes, two steps) and writes its summary."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "unetr3d_full_labels.py"
    spec = importlib.util.spec_from_file_location("unetr3d_full_labels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--tiny", "--max-steps", "2"]) == 0
    summary = json.loads((tmp_path / "unetr3d_full_labels.json").read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu" and 0.0 <= summary["mean_dice"] <= 1.0
    assert len(summary["organs"]) == 13
