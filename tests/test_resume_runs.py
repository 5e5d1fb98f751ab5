"""A pre-training and a fine-tuning run killed with SIGKILL and started again end bit-identical.

Each run is a separate process (an interruption is a process that dies without cleanup); this file
is also the script those processes run (``python tests/test_resume_runs.py KIND OUT [KILL_AT]``).
The killed run dies right after a training step past its first checkpoint, so the resumed run
must restore everything the uninterrupted one kept in memory: weights, optimiser, schedule, the
random generators, the data order, and any cache that feeds the loss (pre-training's frozen
report vectors).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mosmoskit
from mosmoskit.training import load_checkpoint

THIS_FILE = Path(__file__).resolve()
KIT_ROOT = Path(mosmoskit.__file__).resolve().parents[1]
MAX_STEPS = 24
CHECKPOINT_EVERY = 8
KILL_AT = 13  # past the step-8 checkpoint: the resumed run redoes steps 9..13
CHILD_TIMEOUT_S = 300


# ------------------------------------------------------------------------------------ the child
def _config(kind: str, out: Path):
    if kind == "pretrain":
        from mosmoskit.pretraining.config import PretrainConfig

        return PretrainConfig(
            output_dir=str(out), text_encoder="tiny", phantom_cases=6, phantom_slices_per_case=4, image_size=(64, 64),
            max_steps=MAX_STEPS, batch_size=4, val_every=CHECKPOINT_EVERY, checkpoint_every=CHECKPOINT_EVERY,
            warmup_steps=2, embed_dim=32, tag_head_dim=32, max_shift=4, unmentioned="negative",
        )
    from mosmoskit.finetuning.config import FinetuneConfig

    return FinetuneConfig(
        output_dir=str(out), phantom_cases=6, phantom_slices_per_case=2, phantom_shape=(48, 48),
        phantom_spacing=(8.0, 8.0), roi_size=(32, 32), encoder_width=8, max_steps=MAX_STEPS, batch_size=2,
        val_every=CHECKPOINT_EVERY, checkpoint_every=CHECKPOINT_EVERY, warmup_steps=2, test_fraction=0.34,
        val_max_cases=2, save_predictions=False, device="cpu",
    )


def _child(kind: str, out: str, kill_at: int) -> None:
    from mosmoskit.training.callbacks import Callback

    class KillAfter(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    config = _config(kind, Path(out))
    callbacks = [KillAfter()] if kill_at else []
    if kind == "pretrain":
        from mosmoskit.pretraining.run import run_pretraining

        run_pretraining(config, callbacks=callbacks, progress=False)
    else:
        from mosmoskit.finetuning.run import run_finetuning

        run_finetuning(config, callbacks=callbacks, progress=False)


# ------------------------------------------------------------------------------------ the tests
def _run_child(kind: str, out: Path, kill_at: int = 0) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(KIT_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(THIS_FILE), kind, str(out), str(kill_at)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"{kind} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / f"checkpoint_step{MAX_STEPS:06d}.pt")["state"]["model"]


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(kind, tmp_path):
    _run_child(kind, tmp_path / "straight")
    assert _run_child(kind, tmp_path / "killed", kill_at=KILL_AT) == -signal.SIGKILL
    assert (tmp_path / "killed" / f"checkpoint_step{CHECKPOINT_EVERY:06d}.pt").is_file()
    assert not (tmp_path / "killed" / f"checkpoint_step{MAX_STEPS:06d}.pt").exists()
    _run_child(kind, tmp_path / "killed")  # the same command again: resumes from step 8
    straight, resumed = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ after the resume, e.g. {differing[:5]}"


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
