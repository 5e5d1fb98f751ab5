"""The generic training loop: learning, accumulation, clipping, history, exact resume, failures, devices."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from mosmoskit.device import (
    autocast,
    derive_seed,
    fork_rng,
    get_rng_state,
    move_to_device,
    resolve_amp,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from mosmoskit.labels import load_label_map
from mosmoskit.provenance import read_run_record
from mosmoskit.training import (
    Callback,
    LiveLossPlot,
    NonFiniteLossError,
    SeededBatchSampler,
    SeededDataset,
    Trainer,
    TrainerConfig,
    describe_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    make_train_loader,
    plot_history,
)

IN_FEATURES = 4


# ------------------------------------------------------------------------------------- fixtures
def _regression_data(n: int = 32, seed: int = 0) -> TensorDataset:
    """y = x @ w + 0.5 exactly: a linear model can drive the loss to zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return TensorDataset(x, x @ w + 0.5)


class AugmentedDataset(Dataset):
    """Random augmentation from all three global generators: only per-sample seeding makes it repeatable."""

    def __init__(self, n: int = 32) -> None:
        self.base = _regression_data(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        x, y = self.base[index]
        noise = 0.1 * torch.randn(IN_FEATURES) + float(np.random.uniform(-0.05, 0.05))
        scale = 1.0 + 0.01 * np.random.default_rng(torch.randint(0, 2**31, ()).item()).standard_normal()
        return {"x": x + noise, "y": y * scale, "id": f"case{index}"}


class RegressionTask:
    """A tiny MLP; ``dropout`` consumes the training process's own random stream."""

    def __init__(self, dropout: float = 0.0, hidden: int = 0, seed: int = 0) -> None:
        torch.manual_seed(seed)
        if hidden:
            self.model = torch.nn.Sequential(torch.nn.Linear(IN_FEATURES, hidden), torch.nn.Tanh(),
                                             torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1))
        else:
            self.model = torch.nn.Linear(IN_FEATURES, 1)
        self.calls = 0

    def step(self, batch):
        self.calls += 1
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        pred = self.model(x)
        return {"mse": F.mse_loss(pred, y), "l1": 0.1 * F.l1_loss(pred, y)}


class ValidatingTask(RegressionTask):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen_training_mode = []

    def validate(self, loader):
        self.seen_training_mode.append(self.model.training)
        errors = [F.mse_loss(self.model(x), y).item() for x, y in loader]
        return {"val_mse": sum(errors) / len(errors)}

    def extra_logs(self):
        return {"weight_norm": float(self.model.weight.norm())}


def _config(tmp_path, name: str = "run", **overrides) -> TrainerConfig:
    values = dict(max_steps=10, lr=0.05, warmup_steps=2, checkpoint_every=3, log_every=2, output_dir=str(tmp_path / name),
                  progress=False, seed=3, device="cpu")
    values.update(overrides)
    return TrainerConfig(**values)


def _history_file(config: TrainerConfig) -> list[dict]:
    with open(f"{config.output_dir}/history.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


class _Interrupt(Exception):
    pass


class InterruptAt(Callback):
    """Simulate a crash (after the step's record, before any checkpoint of that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise _Interrupt(step)


# -------------------------------------------------------------------------------------- learning
def test_loss_goes_down_on_a_tiny_regression(tmp_path):
    config = _config(tmp_path, max_steps=80, warmup_steps=5, checkpoint_every=80, lr=0.1)
    result = Trainer(RegressionTask(), config, train_dataset=_regression_data(64), batch_size=16).fit()
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert len(losses) == 80 and result.step == 80
    assert losses[0] > 5.0, "the untrained model must start far from the target"
    assert sum(losses[-5:]) / 5 < 0.02 * losses[0]


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    data = _regression_data(32)
    big = RegressionTask(hidden=8)
    small = RegressionTask(hidden=8)
    Trainer(big, _config(tmp_path, "big", max_steps=8), train_dataset=data, batch_size=8).fit()
    result = Trainer(small, _config(tmp_path, "acc", max_steps=8, grad_accum_steps=2), train_dataset=data,
                     batch_size=4).fit()
    for (name, a), b in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert small.calls == 2 * big.calls == 16
    # Each logged value is the mean over the micro-batches: the loss of the whole batch of 8.
    big_hist = _history_file(_config(tmp_path, "big"))
    assert [r["loss"] for r in result.history] == pytest.approx([r["loss"] for r in big_hist], rel=1e-5)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_clipping_is_applied_and_the_logged_norm_is_the_raw_one(tmp_path, monkeypatch):
    clip = 0.05
    data = _regression_data(16)
    task = RegressionTask()
    reference = RegressionTask()  # same initial weights (same seed)
    trainer = Trainer(task, _config(tmp_path, max_steps=3, grad_clip_norm=clip), train_dataset=data, batch_size=8)
    norms_at_step = []
    real_step = trainer.optimizer.step

    def spying_step(*args, **kwargs):
        norms_at_step.append(float(torch.norm(torch.stack([p.grad.norm() for p in task.model.parameters()]))))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", spying_step)
    result = trainer.fit()
    assert norms_at_step == pytest.approx([clip] * 3, rel=1e-4)

    # The logged norm is the norm before clipping: recompute step 1 by hand on the same first batch.
    x, y = next(iter(make_train_loader(data, 8, seed=3, epoch=0)))
    terms = reference.step((x, y))
    sum(terms.values()).backward()
    raw = float(torch.norm(torch.stack([p.grad.norm() for p in reference.model.parameters()])))
    assert raw > 10 * clip
    assert result.history[0]["grad_norm"] == pytest.approx(raw, rel=1e-5)


def test_history_records_every_term_lr_extra_logs_and_validation(tmp_path):
    calls = []

    class Recorder(Callback):
        def on_train_start(self, trainer):
            calls.append(("start", trainer.step))

        def on_step_end(self, trainer, step, logs):
            calls.append(("step", step, sorted(logs)))

        def on_validation_end(self, trainer, step, metrics):
            calls.append(("val", step, dict(metrics)))

        def on_train_end(self, trainer, result):
            calls.append(("end", result.step))

    task = ValidatingTask()
    val_loader = torch.utils.data.DataLoader(_regression_data(8, seed=9), batch_size=4)
    config = _config(tmp_path, max_steps=6, val_every=3, warmup_steps=2)
    result = Trainer(task, config, train_dataset=_regression_data(32), batch_size=8, val_loader=val_loader,
                     callbacks=[Recorder()]).fit()

    train = [r for r in result.history if r["split"] == "train"]
    val = [r for r in result.history if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert set(train[0]) == {"step", "epoch", "split", "lr", "mse", "l1", "loss", "grad_norm", "weight_norm"}
    for r in train:
        assert r["loss"] == pytest.approx(r["mse"] + r["l1"], rel=1e-6)
    # lr of update s is lr * lr_factor(s - 1): warm-up 1/2, 2/2, then cos over 4 updates: 1, (1 + cos(pi/4)) / 2, ...
    cosine = [(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    expected = [0.05 * f for f in (0.5, 1.0, *cosine)]
    assert [r["lr"] for r in train] == pytest.approx(expected)
    assert [lr_factor(s, max_steps=6, warmup_steps=2, scheduler="constant") for s in range(4)] == [0.5, 1, 1, 1]
    assert lr_factor(9, max_steps=10, warmup_steps=0, scheduler="cosine", min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert [r["epoch"] for r in train] == [0, 0, 0, 0, 1, 1]
    assert [r["step"] for r in val] == [3, 6]
    assert result.metrics == {"val_mse": val[-1]["val_mse"]}
    assert task.seen_training_mode == [False, False]
    assert task.model.training
    assert _history_file(config) == result.history
    assert calls[0] == ("start", 0) and calls[-1] == ("end", 6)
    assert [c[1] for c in calls if c[0] == "val"] == [3, 6]
    assert calls[1] == ("step", 1, sorted(train[0]))


def test_checkpoint_carries_config_label_map_and_kind(tmp_path):
    label_map = load_label_map("btcv")
    run_config = {"dataset": "phantom", "image_size": [64, 64]}
    config = _config(tmp_path, max_steps=4, checkpoint_every=2, keep_last_checkpoints=1)
    result = Trainer(RegressionTask(), config, train_dataset=_regression_data(16), batch_size=8, kind="finetune",
                     run_config=run_config, label_map=label_map).fit()
    info = describe_checkpoint(result.last_checkpoint)
    assert info["kind"] == "finetune" and info["step"] == 4
    assert info["config"] == run_config
    assert info["label_map"] == label_map.to_dict()
    assert info["state_keys"] == ["model", "optimizer", "rng", "scaler", "scheduler", "trainer"]
    names = sorted(p.name for p in tmp_path.joinpath("run").iterdir())
    assert names == ["checkpoint_step000004.pt", "history.jsonl", "last.pt", "run_record.json"]
    assert latest_checkpoint(config.output_dir) == result.last_checkpoint


# ---------------------------------------------------------------------------------- exact resume
def _assert_same_run(a: Trainer, b: Trainer) -> None:
    for (name, pa), pb in zip(a.task.model.named_parameters(), b.task.model.parameters()):
        assert torch.equal(pa, pb), f"parameter {name} differs after resume"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for key in sa["state"]:
        for field in sa["state"][key]:
            assert torch.equal(sa["state"][key][field], sb["state"][key][field]), f"optimiser {key}/{field}"
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


@pytest.mark.parametrize(
    "num_workers, checkpoint_every, accum, interrupt_at",
    [
        (0, 3, 1, 8),  # checkpoint at 6 = inside epoch 1 (4 batches per epoch): skip 2 batches on resume
        (0, 2, 2, 7),  # checkpoint at 6 = 12 batches = exactly at an epoch end
        (2, 3, 1, 7),  # loader worker processes
    ],
)
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, num_workers, checkpoint_every, accum,
                                                                 interrupt_at):
    def make(name, callbacks=()):
        config = _config(tmp_path, name, max_steps=10, checkpoint_every=checkpoint_every, grad_accum_steps=accum)
        task = RegressionTask(hidden=8, dropout=0.2, seed=0)
        return Trainer(task, config, train_dataset=AugmentedDataset(32), batch_size=8, num_workers=num_workers,
                       callbacks=callbacks), config

    straight, _ = make("straight")
    reference = straight.fit()

    interrupted, config = make("resumed", [InterruptAt(interrupt_at)])
    with pytest.raises(_Interrupt):
        interrupted.fit()
    assert latest_checkpoint(config.output_dir).name == "checkpoint_step000006.pt"
    # The records of the steps after the checkpoint reached the file before the "crash".
    assert _history_file(config)[-1]["step"] == interrupt_at

    # A fresh process would build a new task (its random init does not matter: the checkpoint wins).
    resumed, config = make("resumed")
    resumed.task = RegressionTask(hidden=8, dropout=0.2, seed=123)
    resumed = Trainer(resumed.task, config, train_dataset=AugmentedDataset(32), batch_size=8,
                      num_workers=num_workers)
    result = resumed.fit()

    assert result.step == 10
    _assert_same_run(straight, resumed)
    assert result.history == reference.history
    assert _history_file(config) == reference.history, "records after the checkpoint must not be duplicated"


def test_resume_with_another_seed_diverges(tmp_path):
    """The control for the test above: the comparison does detect a different trajectory."""
    config = _config(tmp_path, "a", max_steps=6, checkpoint_every=3)
    a = Trainer(RegressionTask(hidden=8, dropout=0.2), config, train_dataset=AugmentedDataset(32), batch_size=8)
    a.fit()
    b = Trainer(RegressionTask(hidden=8, dropout=0.2), _config(tmp_path, "b", max_steps=6, checkpoint_every=3, seed=4),
                train_dataset=AugmentedDataset(32), batch_size=8)
    b.fit()
    assert not all(torch.equal(p, q) for p, q in zip(a.task.model.parameters(), b.task.model.parameters()))


def test_resuming_a_finished_run_does_nothing(tmp_path):
    config = _config(tmp_path, max_steps=4, checkpoint_every=2)
    first = Trainer(RegressionTask(), config, train_dataset=_regression_data(16), batch_size=8).fit()
    task = RegressionTask(seed=5)
    again = Trainer(task, config, train_dataset=_regression_data(16), batch_size=8).fit()
    assert task.calls == 0
    assert again.step == 4 and again.history == first.history
    assert again.last_checkpoint == first.last_checkpoint
    saved = load_checkpoint(first.last_checkpoint)["state"]["model"]
    assert torch.equal(task.model.weight, saved["weight"])


def test_resume_warns_when_trajectory_settings_change(tmp_path):
    config = _config(tmp_path, max_steps=4, checkpoint_every=2)
    trainer = Trainer(RegressionTask(), config, train_dataset=_regression_data(16), batch_size=8,
                      callbacks=[InterruptAt(3)])
    with pytest.raises(_Interrupt):
        trainer.fit()
    changed = _config(tmp_path, max_steps=4, checkpoint_every=2, lr=0.01)
    with pytest.warns(UserWarning, match=r"lr: 0.05 -> 0.01"):
        Trainer(RegressionTask(), changed, train_dataset=_regression_data(16), batch_size=8).fit()


def test_existing_run_is_not_clobbered_without_permission(tmp_path):
    config = _config(tmp_path, max_steps=2, checkpoint_every=2, warmup_steps=0)
    Trainer(RegressionTask(), config, train_dataset=_regression_data(16), batch_size=8).fit()
    fresh = _config(tmp_path, max_steps=2, checkpoint_every=2, warmup_steps=0, resume=False)
    with pytest.raises(FileExistsError, match="holds an earlier run.*resume=True.*overwrite=True"):
        Trainer(RegressionTask(), fresh, train_dataset=_regression_data(16), batch_size=8).fit()
    over = _config(tmp_path, max_steps=3, checkpoint_every=3, resume=False, overwrite=True)
    task = RegressionTask()
    result = Trainer(task, over, train_dataset=_regression_data(16), batch_size=8).fit()
    assert task.calls == 3
    assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == ["checkpoint_step000003.pt", "history.jsonl",
                                                                           "last.pt", "run_record.json"]
    # The earlier run's record went with it: the new record knows one session only.
    assert len(read_run_record(tmp_path / "run")["sessions"]) == 1
    assert [r["step"] for r in _history_file(over)] == [1, 2, 3] == [r["step"] for r in result.history]


# ------------------------------------------------------------------------------ data order/seeding
def test_seeded_batch_sampler_order_is_a_function_of_seed_and_epoch():
    def batches(**kw):
        args = dict(num_samples=10, batch_size=3, seed=1, epoch=0, rank=0, world_size=1)
        args.update(kw)
        return list(SeededBatchSampler(**args))

    first = batches()
    assert first == batches()
    assert [i for b in first for _, i in b] != [i for b in batches(epoch=1) for _, i in b]
    assert all(e == 0 for b in first for e, _ in b)
    assert len(first) == 3 and sorted(i for b in first for _, i in b) != list(range(9))  # shuffled, last one dropped
    assert batches(start_batch=2) == first[2:]
    assert len(SeededBatchSampler(10, 3, seed=1, epoch=0, start_batch=2)) == 1
    assert len(batches(drop_last=False)) == 4
    assert [i for b in batches(shuffle=False) for _, i in b] == list(range(9))
    # Two ranks: disjoint halves of the same epoch order, same number of batches.
    r0, r1 = batches(rank=0, world_size=2, batch_size=2), batches(rank=1, world_size=2, batch_size=2)
    i0, i1 = {i for b in r0 for _, i in b}, {i for b in r1 for _, i in b}
    assert len(r0) == len(r1) == 2 and not i0 & i1 and len(i0 | i1) == 8
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        SeededBatchSampler(10, 3, seed=1, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        SeededBatchSampler(10, 0, seed=1, epoch=0)


def test_seeded_dataset_makes_augmentation_a_function_of_seed_epoch_index():
    data = SeededDataset(AugmentedDataset(8), seed=0)
    before = torch.get_rng_state()
    a, b = data[(2, 5)], data[(2, 5)]
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert not torch.equal(a["x"], data[(3, 5)]["x"]), "another epoch must draw another augmentation"
    assert not torch.equal(a["x"], SeededDataset(AugmentedDataset(8), seed=1)[(2, 5)]["x"])
    assert torch.equal(torch.get_rng_state(), before), "the global stream must not be consumed"
    with pytest.raises(IndexError, match="sample index 8 out of range"):
        data[(0, 8)]


def test_seeded_dataset_seeds_monai_randomizable_transforms():
    monai = pytest.importorskip("monai")
    from monai.transforms import Compose, RandGaussianNoised

    items = [{"image": np.zeros((1, 4, 4), dtype=np.float32)} for _ in range(3)]
    transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=1.0)])
    data = SeededDataset(monai.data.Dataset(items, transform=transform), seed=0)
    first = np.asarray(data[(1, 2)]["image"])
    transform.set_random_state(seed=999)  # whatever state the transform was left in...
    assert np.array_equal(np.asarray(data[(1, 2)]["image"]), first)  # ...the sample is the same
    assert not np.array_equal(np.asarray(data[(2, 2)]["image"]), first)


def test_train_loader_with_workers_gives_the_same_batches():
    data = AugmentedDataset(16)
    plain = list(make_train_loader(data, 4, seed=2, epoch=1))
    workers = list(make_train_loader(data, 4, seed=2, epoch=1, num_workers=2))
    assert len(plain) == len(workers) == 4
    for p, w in zip(plain, workers):
        assert torch.equal(p["x"], w["x"]) and p["id"] == w["id"]


def test_seeding_helpers():
    seed_everything(7)
    a = (np.random.rand(), torch.rand(1).item())
    state = get_rng_state()
    b = (np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (np.random.rand(), torch.rand(1).item()) == b
    seed_everything(7)
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert 0 <= derive_seed(2**40, 3) < 2**32
    with fork_rng(5):
        inside = torch.rand(1).item()
    with fork_rng(5):
        assert torch.rand(1).item() == inside
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="derive_seed part 1"):
        derive_seed(0, 1.5)


# ------------------------------------------------------------------------------------- failures
class NaNAtStep(RegressionTask):
    def __init__(self, bad_call: int, checkpoint_dir) -> None:
        super().__init__()
        self.bad_call, self.checkpoint_dir = bad_call, checkpoint_dir
        self.bytes_before = None

    def step(self, batch):
        terms = super().step(batch)
        if self.calls == self.bad_call:
            self.bytes_before = (self.checkpoint_dir / "checkpoint_step000004.pt").read_bytes()
            terms["mse"] = terms["mse"] * float("nan")
        return terms


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    config = _config(tmp_path, max_steps=10, checkpoint_every=2)
    task = NaNAtStep(bad_call=5, checkpoint_dir=tmp_path / "run")
    message = r"non-finite loss at step 5: mse=nan, l1=\d.*, loss=nan \(epoch 1.*checkpoint_step000004\.pt"
    with pytest.raises(NonFiniteLossError, match=message) as err:
        Trainer(task, config, train_dataset=_regression_data(32), batch_size=8).fit()
    assert err.value.step == 5 and math.isnan(err.value.terms["mse"]) and math.isfinite(err.value.terms["l1"])
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_step000002.pt", "checkpoint_step000004.pt",
                                                        "history.jsonl", "last.pt", "run_record.json"]
    assert (folder / "checkpoint_step000004.pt").read_bytes() == task.bytes_before
    assert load_checkpoint(folder / "last.pt")["state"]["trainer"]["step"] == 4
    assert [r["step"] for r in _history_file(config)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_steps", 0, "max_steps must be an integer >= 1, got 0"),
        ("lr", -1.0, "lr must be > 0, got -1.0"),
        ("lr", float("nan"), "lr must be a finite number"),
        ("betas", (0.9, 1.0), r"betas must be a tuple of two numbers in \[0, 1\)"),
        ("scheduler", "linear", r"scheduler must be one of \['cosine', 'constant'\], got 'linear'"),
        ("grad_accum_steps", 0, "grad_accum_steps must be an integer >= 1"),
        ("grad_clip_norm", 0.0, "grad_clip_norm must be a positive number or None"),
        ("amp", "fp8", r"amp must be one of \['auto', 'bf16', 'fp16', 'off'\], got 'fp8'"),
        ("keep_last_checkpoints", 0, "keep_last_checkpoints must be an integer >= 1"),
        ("seed", -3, "seed must be an integer >= 0, got -3"),
        ("log_every", 2.5, "log_every must be an integer >= 1, got 2.5"),
        ("output_dir", "", "output_dir must be a non-empty folder path"),
        ("overwrite", True, "resume=True and overwrite=True contradict"),
        ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\]"),
    ],
)
def test_config_rejects_bad_values(tmp_path, field, value, message):
    values = dict(max_steps=10, output_dir=str(tmp_path))
    values[field] = value
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**values)


def test_trainer_rejects_bad_inputs(tmp_path):
    config = _config(tmp_path, max_steps=2)
    data = _regression_data(16)
    with pytest.raises(ValueError, match="exactly one of train_dataset"):
        Trainer(RegressionTask(), config)
    with pytest.raises(ValueError, match="exactly one of train_dataset"):
        Trainer(RegressionTask(), config, train_dataset=data, batch_size=4, train_loader_factory=lambda e, s: [])
    with pytest.raises(ValueError, match="train_dataset must be map-style"):
        Trainer(RegressionTask(), config, train_dataset=iter([data[0]]), batch_size=4)
    with pytest.raises(ValueError, match="train_dataset needs a batch_size"):
        Trainer(RegressionTask(), config, train_dataset=data)
    with pytest.raises(ValueError, match="16 samples: too few for one batch of 32"):
        Trainer(RegressionTask(), config, train_dataset=data, batch_size=32)
    with pytest.raises(ValueError, match="has no validate"):
        Trainer(RegressionTask(), config, train_dataset=data, batch_size=4, val_loader=[data[0]])
    with pytest.raises(ValueError, match="checkpoint kind must be a short name"):
        Trainer(RegressionTask(), config, train_dataset=data, batch_size=4, kind="pre train")
    with pytest.raises(ValueError, match="task must have a `model`"):
        Trainer(object(), config, train_dataset=data, batch_size=4)

    class Reserved(RegressionTask):
        def step(self, batch):
            return {"loss": super().step(batch)["mse"]}

    with pytest.raises(ValueError, match="loss term name 'loss' is reserved"):
        Trainer(Reserved(), _config(tmp_path, "r", max_steps=2), train_dataset=data, batch_size=4).fit()

    class NotScalar(RegressionTask):
        def step(self, batch):
            x, y = batch
            return {"mse": (self.model(x) - y) ** 2}

    with pytest.raises(ValueError, match=r"loss term 'mse' must be a scalar tensor, got \(4, 1\)"):
        Trainer(NotScalar(), _config(tmp_path, "s", max_steps=2), train_dataset=data, batch_size=4).fit()

    with pytest.raises(ValueError, match="produced no batch in epoch 0"):
        Trainer(RegressionTask(), _config(tmp_path, "e", max_steps=2), train_loader_factory=lambda e, s: []).fit()


def test_callback_can_stop_training(tmp_path):
    class StopAt(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 3:
                trainer.request_stop()

    config = _config(tmp_path, max_steps=10, checkpoint_every=5)
    result = Trainer(RegressionTask(), config, train_dataset=_regression_data(16), batch_size=8,
                     callbacks=[StopAt()]).fit()
    assert result.stopped_early and result.step == 3
    assert result.last_checkpoint.name == "checkpoint_step000003.pt"


def test_parameter_groups_with_lr_scale(tmp_path):
    class Groups(RegressionTask):
        def parameters_for_optimizer(self):
            return [{"params": [self.model.weight]}, {"params": [self.model.bias], "lr_scale": 0.1, "weight_decay": 0.0}]

    trainer = Trainer(Groups(), _config(tmp_path, max_steps=2, warmup_steps=0, scheduler="constant"),
                      train_dataset=_regression_data(16), batch_size=8)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.005])
    assert [g["weight_decay"] for g in groups] == [trainer.config.weight_decay, 0.0]
    trainer.fit()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.05, 0.005])


def test_train_loader_factory(tmp_path):
    data = _regression_data(16)
    requested = []

    def factory(epoch, start_batch):
        requested.append((epoch, start_batch))
        return make_train_loader(data, 8, seed=0, epoch=epoch, start_batch=start_batch)

    result = Trainer(RegressionTask(), _config(tmp_path, max_steps=5), train_loader_factory=factory).fit()
    assert result.step == 5 and requested == [(0, 0), (1, 0), (2, 0)]


# ------------------------------------------------------------------------------ devices and AMP
def test_device_auto_and_amp_on_this_machine(tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_amp("auto", "cpu") is None
    assert resolve_amp("off", "cpu") is None
    assert isinstance(autocast("cpu", torch.bfloat16), contextlib.nullcontext)
    with pytest.raises(ValueError, match="amp='bf16' needs a CUDA device"):
        resolve_amp("bf16", "cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
        trainer = Trainer(RegressionTask(), _config(tmp_path, device="auto", amp="auto"),
                          train_dataset=_regression_data(16), batch_size=8)
        assert trainer.device == torch.device("cpu")
        assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()


def test_move_to_device_keeps_structure_and_non_tensors():
    batch = {"image": torch.ones(2, 1, 4, 4), "report": ["a", "b"], "meta": ({"id": 3}, torch.zeros(2))}
    moved = move_to_device(batch, "cpu")
    assert moved["report"] == ["a", "b"] and moved["meta"][0] == {"id": 3}
    assert isinstance(moved["meta"], tuple) and torch.equal(moved["image"], batch["image"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_cuda_training_with_mixed_precision(tmp_path, amp):
    config = _config(tmp_path, max_steps=40, lr=0.05, device="auto", amp=amp, checkpoint_every=20)
    trainer = Trainer(ValidatingTask(hidden=16), config, train_dataset=AugmentedDataset(64), batch_size=16,
                      val_loader=[_regression_data(8)[:]])
    assert trainer.device.type == "cuda"
    assert trainer.scaler.is_enabled() == (trainer.amp_dtype == torch.float16)
    result = trainer.fit()
    train = [r["loss"] for r in result.history if r["split"] == "train"]
    assert sum(train[-5:]) / 5 < 0.5 * train[0]
    state = load_checkpoint(result.last_checkpoint)["state"]
    assert "cuda" in state["rng"]
    # Resuming a finished CUDA run restores the CUDA generators without training again.
    again = Trainer(ValidatingTask(hidden=16), config, train_dataset=AugmentedDataset(64), batch_size=16,
                    val_loader=[_regression_data(8)[:]]).fit()
    assert again.step == 40 and again.metrics == result.metrics


# ------------------------------------------------------------------------------------ callbacks
def test_live_loss_plot_writes_a_png(tmp_path):
    plot = LiveLossPlot(every=2, path=tmp_path / "loss.png")
    Trainer(ValidatingTask(), _config(tmp_path, max_steps=4, val_every=2), train_dataset=_regression_data(16),
            batch_size=8, val_loader=[_regression_data(4)[:]], callbacks=[plot]).fit()
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = plot_history([{"step": 1, "split": "train", "loss": 1.0, "mse": 0.5}], keys=["loss"])
    assert len(ax.get_lines()) == 1
    with pytest.raises(ValueError, match=r"keys \['dice'\] appear in no training record"):
        plot_history([{"step": 1, "split": "train", "loss": 1.0}], keys=["dice"])
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        LiveLossPlot(every=0)
