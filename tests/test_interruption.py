"""Runs that are killed, resumed, repeated or started in a folder that already holds one.

The tests that matter most here run the training in separate processes, because that is what an
interruption is: the process dies with SIGKILL (no ``finally``, no flush, no cleanup) at a random
step or in the middle of a checkpoint write, and a *new* process resumes. This file is also the
script those processes run (``python tests/test_interruption.py child ...``), so the training they
do is defined next to the assertions about it.

Set ``MOSMOSKIT_TEST_KILL_SEED`` to replay the kill step of a failed run (the failure message
shows it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import mosmoskit
from mosmoskit.io import atomic_write_text
from mosmoskit.provenance import file_sha256, read_run_record
from mosmoskit.training import (
    Callback,
    CheckpointError,
    Trainer,
    TrainerConfig,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mosmoskit.training.lock import RunFolderBusyError

THIS_FILE = Path(__file__).resolve()
# The mosmoskit the tests import is the one the child processes must import too.
KIT_ROOT = Path(mosmoskit.__file__).resolve().parents[1]

# The child run: 40 samples in batches of 8 with 2 accumulated batches per update, so updates
# straddle epoch ends; dropout, random augmentation, warm-up + cosine, AdamW, clipping, validation.
MAX_STEPS = 16
CHECKPOINT_EVERY = 3
VAL_EVERY = 5
SEED = 11
CHILD_TIMEOUT_S = 180
STEP_SLEEP_S = 0.04  # slows the child down so that the parent can kill it between chosen steps


# ------------------------------------------------------------------------------------ the child
class NoisyRegression(Dataset):
    """A fixed regression problem with random augmentation from Python, NumPy and torch."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        noise = 0.1 * torch.randn(4) + float(np.random.uniform(-0.05, 0.05)) + random.uniform(-0.01, 0.01)
        return {"x": self.x[index] + noise, "y": self.y[index]}


class DropoutRegressionTask:
    """A small MLP with dropout (consumes the training process's own random stream)."""

    def __init__(self) -> None:
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                         torch.nn.Linear(16, 1))

    def step(self, batch):
        pred = self.model(batch["x"])
        return {"mse": F.mse_loss(pred, batch["y"]), "l1": 0.1 * F.l1_loss(pred, batch["y"])}

    def validate(self, loader):
        errors = [F.mse_loss(self.model(x), y).item() for x, y in loader]
        return {"val_mse": sum(errors) / len(errors)}


class ChildControl(Callback):
    """Records where the run started; optionally slows each step and never finishes on its own."""

    def __init__(self, sleep_s: float, hold_at: int | None) -> None:
        self.sleep_s, self.hold_at = sleep_s, hold_at
        self.start_step = None

    def on_train_start(self, trainer):
        self.start_step = trainer.step

    def on_step_end(self, trainer, step, logs):
        time.sleep(self.sleep_s)
        if self.hold_at is not None and step >= self.hold_at:
            time.sleep(CHILD_TIMEOUT_S)  # wait here to be killed: the run must not finish before the kill


def _die_inside_torch_save(at_step: int, marker: Path) -> None:
    """Make ``torch.save`` of the checkpoint of ``at_step`` write half of its bytes, then SIGKILL the process."""
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        step = obj.get("state", {}).get("trainer", {}).get("step") if isinstance(obj, dict) else None
        if step == at_step or at_step == -1:
            last = Path(f).parent / "last.pt"
            atomic_write_text(marker, json.dumps({"last_sha256": file_sha256(last) if last.exists() else None,
                                                  "target": str(f)}))
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save


def child_main(argv: list[str]) -> int:
    """The training a child process runs (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="test_interruption.py child")
    parser.add_argument("out")
    parser.add_argument("--result", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--hold-at", type=int, default=None)
    parser.add_argument("--die-in-save-at", type=int, default=None)
    parser.add_argument("--marker", default=None)
    parser.add_argument("--overwrite-and-die", action="store_true",
                        help="save a checkpoint at OUT, then die while overwriting it (no training)")
    args = parser.parse_args(argv)

    if args.overwrite_and_die:
        save_checkpoint(args.out, state={"w": torch.arange(50_000.0)}, config={"version": 1}, kind="pretrain")
        _die_inside_torch_save(-1, Path(args.marker))
        save_checkpoint(args.out, state={"w": -torch.arange(50_000.0)}, config={"version": 2}, kind="pretrain")
        return 1  # never reached

    torch.manual_seed(SEED)  # the initial weights; a resume replaces them with the checkpoint's
    task = DropoutRegressionTask()
    g = torch.Generator().manual_seed(1)
    val_x = torch.randn(12, 4, generator=g)
    val = DataLoader(TensorDataset(val_x, val_x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.5), batch_size=4)
    control = ChildControl(args.sleep, args.hold_at)
    if args.die_in_save_at is not None:
        _die_inside_torch_save(args.die_in_save_at, Path(args.marker))
    config = TrainerConfig(max_steps=MAX_STEPS, lr=0.05, warmup_steps=3, grad_accum_steps=2, grad_clip_norm=1.0,
                           checkpoint_every=CHECKPOINT_EVERY, keep_last_checkpoints=2, val_every=VAL_EVERY, log_every=1,
                           seed=SEED, device="cpu", output_dir=args.out, progress=False)
    result = Trainer(task, config, train_dataset=NoisyRegression(), batch_size=8, val_loader=val,
                     callbacks=[control], kind="pretrain", run_config={"experiment": "interruption"}).fit()
    atomic_write_text(args.result, json.dumps({"step": result.step, "metrics": result.metrics,
                                               "start_step": control.start_step}))
    return 0


# --------------------------------------------------------------------------------- the parent side
def _child_command(out: Path, result: Path, *extra: str) -> list[str]:
    return [sys.executable, str(THIS_FILE), "child", str(out), "--result", str(result), *extra]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(KIT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # One thread: cheaper on a shared machine, and the same reduction order in every child.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _run_child(out: Path, result: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_child_command(out, result, *extra), env=_child_env(), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    return proc


def _run_child_ok(out: Path, result: Path, *extra: str) -> dict:
    proc = _run_child(out, result, *extra)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(result.read_text())


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def _last_step_logged(folder: Path) -> int:
    path = folder / "history.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return max(steps)


def _assert_same_final_state(a: Path, b: Path) -> None:
    """Every tensor of the final checkpoints (model, optimiser, RNG...) is bit-identical."""
    sa, sb = load_checkpoint(a / "last.pt")["state"], load_checkpoint(b / "last.pt")["state"]
    for name, tensor in sa["model"].items():
        assert torch.equal(tensor, sb["model"][name]), f"weight {name} differs"
    for key, slots in sa["optimizer"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, sb["optimizer"]["state"][key][slot]), f"optimiser state {key}/{slot} differs"
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    assert sa["scheduler"] == sb["scheduler"]
    assert sa["trainer"]["step"] == sb["trainer"]["step"] == MAX_STEPS
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run in a fresh process: the yardstick of every test below."""
    root = tmp_path_factory.mktemp("reference")
    result = _run_child_ok(root / "run", root / "result.json")
    assert result["start_step"] == 0 and result["step"] == MAX_STEPS
    return root / "run", result


def _kill_step() -> tuple[int, int]:
    seed = int(os.environ.get("MOSMOSKIT_TEST_KILL_SEED", time.time_ns() % 2**32))
    # After the first checkpoint (so that the resume has one to start from), before the last one.
    return random.Random(seed).randint(CHECKPOINT_EVERY + 1, MAX_STEPS - 3), seed


# ------------------------------------------------------------------------------------------ tests
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path, reference_run):
    reference, reference_result = reference_run
    kill_at, seed = _kill_step()
    where = f"(kill after step {kill_at}; replay with MOSMOSKIT_TEST_KILL_SEED={seed})"
    run = tmp_path / "run"
    child = subprocess.Popen(_child_command(run, tmp_path / "killed.json", "--sleep", str(STEP_SLEEP_S),
                                            "--hold-at", str(MAX_STEPS - 1)),
                             env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while _last_step_logged(run) < kill_at:
            assert child.poll() is None, f"child ended early {where}: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"child too slow {where}"
            time.sleep(0.005)
        # The child keeps running while we get here: the kill lands anywhere in the next steps,
        # possibly inside a history append or a checkpoint write.
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=CHILD_TIMEOUT_S)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL, where
    survived = load_checkpoint(latest_checkpoint(run))["state"]["trainer"]["step"]
    assert CHECKPOINT_EVERY <= survived < MAX_STEPS, where

    resumed = _run_child_ok(run, tmp_path / "resumed.json")

    assert resumed["start_step"] == survived, f"the new process must start from the checkpoint {where}"
    _assert_same_final_state(reference, run)
    assert _history(run) == _history(reference), f"history differs {where}"
    assert resumed["metrics"] == reference_result["metrics"] and resumed["step"] == MAX_STEPS
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name], "temporaries of the killed run remain"
    sessions = read_run_record(run)["sessions"]
    assert [s["extra"]["start_step"] for s in sessions] == [0, survived]


def test_two_fresh_processes_with_the_same_seed_are_bit_identical(tmp_path, reference_run):
    reference, reference_result = reference_run
    again = _run_child_ok(tmp_path / "run", tmp_path / "result.json")
    _assert_same_final_state(reference, tmp_path / "run")
    assert _history(tmp_path / "run") == _history(reference)
    assert again["metrics"] == reference_result["metrics"]
    first, second = read_run_record(reference), read_run_record(tmp_path / "run")
    assert first["config_sha256"] == second["config_sha256"] and first["versions"] == second["versions"]


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference_run):
    reference, _ = reference_run
    run, marker = tmp_path / "run", tmp_path / "marker.json"
    dying_step = 3 * CHECKPOINT_EVERY
    proc = _run_child(run, tmp_path / "x.json", "--die-in-save-at", str(dying_step), "--marker", str(marker))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = json.loads(marker.read_text())
    # It died half-way through the file: the half-written temporary is still there...
    partial = Path(written["target"])
    assert partial.exists() and partial.parent == run and partial.name.startswith(".checkpoint_step")
    # ...but no checkpoint of that step exists, and last.pt is the previous one, unchanged and readable.
    previous = dying_step - CHECKPOINT_EVERY
    assert not (run / f"checkpoint_step{dying_step:06d}.pt").exists()
    assert file_sha256(run / "last.pt") == written["last_sha256"]
    assert load_checkpoint(run / "last.pt")["state"]["trainer"]["step"] == previous
    assert latest_checkpoint(run).name == f"checkpoint_step{previous:06d}.pt"

    resumed = _run_child_ok(run, tmp_path / "resumed.json")
    assert resumed["start_step"] == previous
    _assert_same_final_state(reference, run)
    assert _history(run) == _history(reference)
    assert not partial.exists(), "the next start clears temporaries of killed writes"


def test_sigkill_while_overwriting_a_checkpoint_keeps_the_old_file(tmp_path):
    path, marker = tmp_path / "last.pt", tmp_path / "marker.json"
    proc = _run_child(path, tmp_path / "unused.json", "--overwrite-and-die", "--marker", str(marker))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert file_sha256(path) == json.loads(marker.read_text())["last_sha256"]
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"version": 1} and torch.equal(ckpt["state"]["w"], torch.arange(50_000.0))
    assert any(p.name.startswith(".last.pt.") for p in tmp_path.iterdir()), "the kill must have hit the write"


# ---------------------------------------------------------------------- run folders, in process
def _quick_config(folder: Path, **overrides) -> TrainerConfig:
    values = dict(max_steps=4, lr=0.05, checkpoint_every=2, log_every=1, seed=0, device="cpu",
                  output_dir=str(folder), progress=False)
    values.update(overrides)
    return TrainerConfig(**values)


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class _Linear:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.calls = 0

    def step(self, batch):
        self.calls += 1
        x, y = batch
        return {"mse": F.mse_loss(self.model(x), y)}


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise KeyboardInterrupt  # what Ctrl-C in a notebook does


def _interrupted_run(folder: Path, **trainer_kwargs) -> None:
    with pytest.raises(KeyboardInterrupt):
        Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4, callbacks=[_StopAt(3)],
                **trainer_kwargs).fit()


def test_a_second_trainer_cannot_write_into_a_busy_folder(tmp_path):
    folder = tmp_path / "run"
    seen = []

    class TryAnother(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 2:
                other = Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4)
                with pytest.raises(RunFolderBusyError, match=r"another training run is writing into .*run"):
                    other.fit()
                seen.append(other.task.calls)

    Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4, callbacks=[TryAnother()]).fit()
    assert seen == [0], "the refused trainer must not have trained"
    # Released at the end: the same folder can be resumed (here: a finished run, nothing to do).
    again = _Linear()
    assert Trainer(again, _quick_config(folder), train_dataset=_data(), batch_size=4).fit().step == 4
    assert again.calls == 0


def test_resume_refuses_another_kind_or_label_map(tmp_path):
    from mosmoskit.labels import load_label_map

    btcv, amos = load_label_map("btcv"), load_label_map("amos")
    _interrupted_run(tmp_path / "run", kind="pretrain", label_map=btcv)
    with pytest.raises(ValueError, match=r"belongs to a 'pretrain' run but this trainer's kind is 'finetune'"):
        Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4, kind="finetune",
                label_map=btcv).fit()
    with pytest.raises(ValueError, match=r"was trained with the labels .*spleen.*output channels would change"):
        Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4, kind="pretrain",
                label_map=amos).fit()
    result = Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4,
                     kind="pretrain", label_map=btcv).fit()
    assert result.step == 4


def test_resume_warns_about_changed_run_config_and_data(tmp_path):
    data_file = tmp_path / "case.txt"
    data_file.write_bytes(b"first version")
    run_config = {"model": "tiny", "width": 8, "num_workers": 0, "finetune": {"depth": 2, "progress": True}}
    _interrupted_run(tmp_path / "run", run_config=run_config, data_files=[data_file])
    data_file.write_bytes(b"second version")
    # num_workers and progress are bookkeeping (no warning for them), also inside a nested config.
    changed = dict(run_config, width=16, num_workers=2, finetune={"depth": 3, "progress": False})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4,
                run_config=changed, data_files=[data_file]).fit()
    messages = [str(w.message) for w in caught]
    assert any("config finetune.depth: 2 -> 3; config width: 8 -> 16)" in m and "num_workers" not in m
               and "progress" not in m for m in messages), messages
    assert any("data: 1 changed (case.txt)" in m for m in messages), messages


def test_resume_with_unchanged_settings_is_silent(tmp_path):
    data_file = tmp_path / "case.txt"
    data_file.write_bytes(b"same")
    _interrupted_run(tmp_path / "run", run_config={"model": "tiny"}, data_files=[data_file])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4,
                run_config={"model": "tiny"}, data_files=[data_file]).fit()


def test_a_damaged_newest_checkpoint_stops_the_resume_with_its_path(tmp_path):
    _interrupted_run(tmp_path / "run")
    newest = latest_checkpoint(tmp_path / "run")
    with zipfile.ZipFile(newest) as archive:  # flip one bit inside the largest tensor's bytes
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(newest.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len + record.file_size // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{newest.name}"):
        Trainer(_Linear(), _quick_config(tmp_path / "run"), train_dataset=_data(), batch_size=4).fit()


def test_history_without_a_checkpoint_is_discarded_with_a_warning(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # stopped at step 1, before the first checkpoint (step 2)
        Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4, callbacks=[_StopAt(1)]).fit()
    assert _history(folder)[-1]["step"] == 1
    with pytest.warns(UserWarning, match=r"history.jsonl belongs to a run that stopped before its first checkpoint"):
        result = Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4).fit()
    assert [r["step"] for r in _history(folder)] == [1, 2, 3, 4] == [r["step"] for r in result.history]


def test_an_existing_run_needs_resume_or_overwrite(tmp_path):
    folder = tmp_path / "run"
    Trainer(_Linear(), _quick_config(folder), train_dataset=_data(), batch_size=4).fit()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match=r"holds an earlier run.*set resume=True.*overwrite=True"):
        Trainer(_Linear(), _quick_config(folder, resume=False), train_dataset=_data(), batch_size=4).fit()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "a refused start must change nothing"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} child OUT --result FILE [...] (run the tests with pytest)")
