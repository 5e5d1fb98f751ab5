"""Pre-training data memory does not grow with the cohort when images are read from disk.

A cohort of 20 and one of 400 phantom volumes (64^3 voxels, 1 MiB each as float32; copies of two
generated phantoms) go through the pre-training dataset for one full pass, each in a fresh process
whose peak resident memory is read back. With ``cache_rate=0`` the 400-volume pass must need no
more than the 20-volume one (a few MiB of report text aside); with ``cache_rate=1`` it needs far
more, which shows that the measurement sees a growing cache. Measured when written: 18 and 21 MiB
above the process's start without a cache, 42 and 455 MiB with one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mosmoskit

THIS_FILE = Path(__file__).resolve()
KIT_ROOT = Path(mosmoskit.__file__).resolve().parents[1]
MIB = 1024 * 1024


def _child(cohort: str, n: int, cache_rate: float) -> None:
    from mosmoskit.data.datalists import load_dataset
    from mosmoskit.labels import load_label_map
    from mosmoskit.pretraining.data import ImageReportDataset

    pairs = load_dataset(cohort).with_reports
    cases = [dict(pairs[i % len(pairs)], case_id=f"copy_{i:04d}") for i in range(n)]
    before = _peak_rss_kib()
    dataset = ImageReportDataset(cases, load_label_map("btcv"), (64, 64, 64), cache_rate=cache_rate)
    for index in range(len(dataset)):
        dataset[index]
    print(json.dumps({"grown_mib": (_peak_rss_kib() - before) / 1024}))


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux keeps that across
    ``execve``, so a child of a large test process would start at its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _grown_mib(cohort: Path, n: int, cache_rate: float) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(KIT_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(THIS_FILE), str(cohort), str(n), str(cache_rate)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["grown_mib"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc (Linux)")
def test_memory_of_a_pass_over_400_volumes_equals_that_over_20_without_a_cache(tmp_path):
    from mosmoskit.data.phantom import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", n=2, seed=4, shape=(64, 64, 64), spacing=(6.0, 6.0, 5.0),
                             progress=False)
    small, large = _grown_mib(cohort, 20, 0.0), _grown_mib(cohort, 400, 0.0)
    assert large < small + 30, f"without a cache, 400 volumes took {large:.0f} MiB, 20 took {small:.0f} MiB"
    cached = _grown_mib(cohort, 400, 1.0)
    assert cached > large + 300, f"a full cache of 400 MiB of volumes should show: {cached:.0f} vs {large:.0f} MiB"


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
