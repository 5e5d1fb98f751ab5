"""Multi-process training: DDP in the Trainer over gloo on the CPU, torchrun's environment, resume across sizes."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from mosmoskit import distributed
from mosmoskit.training import Trainer, TrainerConfig, load_checkpoint

WORLD = 2
LOCAL_BATCH = 3
IN_FEATURES = 4
TOLERANCE = 1e-6


# ------------------------------------------------------------------------------------ the task
class _Model(nn.Module):
    """A linear model plus two parameters that DDP's defaults cannot handle.

    ``log_scale`` is used by the task *after* the forward (as the contrastive loss's temperature is),
    ``unused`` never receives a gradient (as the text encoder when the contrastive weight is 0).
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(IN_FEATURES, 1)
        self.log_scale = nn.Parameter(torch.tensor(0.1))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _ScaledRegression:
    """Calls submodules through ``self.model`` as the kit's tasks do; the same weights in every process."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = _Model()

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"mse": F.mse_loss(self.model(x) * self.model.log_scale.exp(), y)}


class _BypassingTask(_ScaledRegression):
    """Runs the forward through a reference of its own: under DDP no gradient would be averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.net = self.model

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"mse": F.mse_loss(self.net(x), y)}


class _StopOnRank:
    """Requests a stop on one rank only (as a time limit measured on one process would)."""

    def __init__(self, rank: int, at_step: int) -> None:
        self.rank, self.at_step = rank, at_step

    def on_step_end(self, trainer: Trainer, step: int, logs: dict) -> None:
        if distributed.rank() == self.rank and step == self.at_step:
            trainer.request_stop()


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, IN_FEATURES, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.5)


def _config(out: Path, max_steps: int = 1, **kw: Any) -> TrainerConfig:
    # A constant lr so that a 1-step run and the first step of a 2-step run update alike.
    return TrainerConfig(max_steps=max_steps, lr=0.05, scheduler="constant", grad_clip_norm=100.0, device="cpu",
                         amp="off", progress=False, seed=5, output_dir=str(out), **kw)


def _record_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradients the optimiser steps with (after DDP's averaging and clipping), by parameter name."""
    seen: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in trainer.task.model.named_parameters()}

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.clear()
        for group in optimizer.param_groups:
            seen.update({names[id(p)]: p.grad.clone() for p in group["params"] if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(hook)
    return seen


# ---------------------------------------------------------------------------------- the processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One process as torchrun would start it: its environment, then init_from_env and the Trainer."""
    import mosmoskit.training.loop as loop_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    started = distributed.init_from_env("cpu")
    out_dir = Path(out)
    try:
        saves: list[str] = []
        save_checkpoint = loop_module.save_checkpoint

        def counting_save(path: Path, **kwargs: Any) -> Path:
            saves.append(Path(path).name)
            return save_checkpoint(path, **kwargs)

        loop_module.save_checkpoint = counting_save
        task = _ScaledRegression()
        trainer = Trainer(task, _config(out_dir / "two"), train_dataset=_data(), batch_size=LOCAL_BATCH)
        grads = _record_gradients(trainer)
        result = trainer.fit()
        first_saves = list(saves)

        stopper = Trainer(_ScaledRegression(), _config(out_dir / "stop", max_steps=5),
                          train_dataset=_data(), batch_size=LOCAL_BATCH, callbacks=[_StopOnRank(1, at_step=2)])
        stopped = stopper.fit()

        bypass = Trainer(_BypassingTask(), _config(out_dir / "bypass"), train_dataset=_data(), batch_size=LOCAL_BATCH)
        try:
            bypass.fit()
            bypass_error = ""
        except ValueError as err:
            bypass_error = str(err)

        torch.save({
            "started": started, "world_size": distributed.world_size(), "rank": distributed.rank(),
            "backend": torch.distributed.get_backend(), "task_model_is_plain": type(task.model) is _Model,
            "weights": {k: v.clone() for k, v in task.model.state_dict().items()}, "grads": dict(grads),
            "history": result.history, "last_checkpoint": str(result.last_checkpoint), "saves": first_saves,
            "stopped_step": stopped.step, "stopped_early": stopped.stopped_early, "bypass_error": bypass_error,
        }, out_dir / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One 2-process gloo run shared by the tests below (starting processes is the slow part)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_two_processes_step_like_one_process_on_the_combined_batch(two_processes, tmp_path):
    out, ranks = two_processes
    assert [r["started"] for r in ranks] == [True, True]
    assert [(r["world_size"], r["rank"], r["backend"]) for r in ranks] == [(2, 0, "gloo"), (2, 1, "gloo")]
    assert all(r["task_model_is_plain"] for r in ranks)  # the wrapper is lent to step() only

    task = _ScaledRegression()
    trainer = Trainer(task, _config(tmp_path / "one"), train_dataset=_data(), batch_size=WORLD * LOCAL_BATCH)
    ref_grads = _record_gradients(trainer)
    ref = trainer.fit().history[0]
    ref_weights = task.model.state_dict()

    for r in ranks:
        logged = r["history"][0]
        # The logged loss is the mean over the processes: the loss of the combined batch.
        for key in ("mse", "loss", "grad_norm"):
            assert logged[key] == pytest.approx(ref[key], rel=TOLERANCE, abs=TOLERANCE), key
        # DDP averaged the gradients, including log_scale's (used after the forward); `unused` has none.
        assert sorted(r["grads"]) == sorted(ref_grads) == ["linear.bias", "linear.weight", "log_scale"]
        for name, grad in ref_grads.items():
            assert torch.allclose(r["grads"][name], grad, atol=TOLERANCE, rtol=TOLERANCE), name
        for name, value in ref_weights.items():
            assert torch.allclose(r["weights"][name], value, atol=TOLERANCE, rtol=TOLERANCE), name
        assert not torch.equal(r["weights"]["linear.weight"], _ScaledRegression().model.linear.weight.detach())
    for name in ref_weights:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name


@pytest.mark.slow
def test_only_rank_0_writes_and_every_rank_knows_the_checkpoint(two_processes):
    out, ranks = two_processes
    assert ranks[0]["saves"] == ["checkpoint_step000001.pt"] and ranks[1]["saves"] == []
    assert ranks[0]["last_checkpoint"] == ranks[1]["last_checkpoint"] == str(out / "two" / "checkpoint_step000001.pt")
    state = load_checkpoint(out / "two" / "checkpoint_step000001.pt")["state"]
    # The plain module's keys (no "module." of the DDP wrapper), rank 0's weights.
    assert sorted(state["model"]) == sorted(ranks[0]["weights"])
    for name, value in state["model"].items():
        assert torch.equal(value, ranks[0]["weights"][name]), name
    assert state["trainer"]["data"]["world_size"] == WORLD


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_all_and_a_bypassed_wrapper_is_refused(two_processes):
    _, ranks = two_processes
    assert [(r["stopped_step"], r["stopped_early"]) for r in ranks] == [(2, True), (2, True)]
    for r in ranks:
        assert "did not call self.model(...)" in r["bypass_error"] and "_BypassingTask" in r["bypass_error"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:resuming .* in another setting than its last session")  # 1 vs 2 threads
def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, tmp_path):
    out, ranks = two_processes
    run = tmp_path / "resumed"
    shutil.copytree(out / "two", run)
    task = _ScaledRegression()
    trainer = Trainer(task, _config(run, max_steps=2), train_dataset=_data(), batch_size=WORLD * LOCAL_BATCH)
    with pytest.warns(UserWarning, match=r"world_size: 2 -> 1"):
        result = trainer.fit()
    assert result.step == 2 and [r["step"] for r in result.history] == [1, 2]
    assert result.history[0] == ranks[0]["history"][0]  # read back from history.jsonl
    # Same global batch and order: the resumed run ends where an uninterrupted 1-process run does.
    straight = _ScaledRegression()
    Trainer(straight, _config(tmp_path / "straight", max_steps=2), train_dataset=_data(),
            batch_size=WORLD * LOCAL_BATCH).fit()
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(task.model.state_dict()[name], value, atol=1e-5, rtol=0), name


def test_init_from_env_without_torchrun_variables(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: a plain process
    assert distributed.init_from_env("auto") is False
    assert not distributed.is_distributed() and distributed.world_size() == 1
    distributed.cleanup()  # nothing to destroy: no error


def test_init_from_env_names_what_is_wrong(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"\['LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'\] are not"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        distributed.init_from_env("cpu")
    assert not distributed.is_distributed()


# ------------------------------------------------------------------------------- the real launcher
def _torchrun(command: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=2 -m mosmoskit COMMAND`` on the CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
            "-m", "mosmoskit", command, "--output-dir", str(out), "--device", "cpu", "--max-steps", "2",
            "--val-every", "2", "--checkpoint-every", "2", "--warmup-steps", "0", *options]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 2 processes" in done.stdout and done.stdout.count("wrote ") == 1  # rank 0 reports, once
    state = load_checkpoint(out / "last.pt")["state"]
    assert state["trainer"]["step"] == 2 and state["trainer"]["data"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])
    assert (out / "metrics.json").is_file()
    return done


@pytest.mark.slow
def test_torchrun_finetune_on_two_cpu_processes(tmp_path):
    _torchrun("finetune", tmp_path / "ft", "--phantom-cases", "4", "--phantom-slices-per-case", "1",
              "--phantom-shape", "32", "32", "--phantom-spacing", "10", "10", "--roi-size", "32", "32",
              "--encoder-width", "8", "--test-fraction", "0.25", "--batch-size", "1", "--crops-per-case", "1",
              "--val-max-cases", "1", "--sw-batch-size", "2", "--no-save-predictions")


@pytest.mark.slow
def test_torchrun_pretrain_on_two_cpu_processes(tmp_path):
    """The contrastive loss gathers over both processes; its temperature and the text encoder train."""
    out = tmp_path / "pt"
    _torchrun("pretrain", out, "--phantom-cases", "8", "--phantom-slices-per-case", "1", "--image-size", "32", "32",
              "--max-shift", "2", "--encoder-width", "8", "--text-encoder", "tiny", "--text-freeze", "none",
              "--embed-dim", "16", "--tag-head-dim", "16", "--batch-size", "2", "--grad-accum-steps", "2")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train = [r for r in history if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["contrastive"]) and math.isfinite(r["tags"]) for r in train)
    assert train[1]["temperature"] != pytest.approx(0.07, abs=1e-7)  # the temperature was updated
