"""The notebook pipeline runner and YAML sweeps (mosmoskit.notebook_runs, ``run-notebooks``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("papermill")

from mosmoskit import cli  # noqa: E402
from mosmoskit.notebook_runs import expand_sweep, parse_assignments, plan_sweep, run_pipeline, run_sweep  # noqa: E402

# Tiny notebooks 02 and 03 (as in their own tests); 03 takes 02's encoder, so no encoder_width.
TINY_02 = {"02.text_encoder": "tiny", "02.phantom_cases": 5, "02.phantom_slices_per_case": 2,
           "02.image_size": [64, 64], "02.max_steps": 3, "02.batch_size": 4, "02.val_every": 3,
           "02.checkpoint_every": 3, "02.warmup_steps": 0}
TINY_03 = {"03.phantom_cases": 5, "03.phantom_slices_per_case": 2, "03.phantom_shape": [64, 64],
           "03.phantom_spacing": [6.0, 6.0], "03.roi_size": [64, 64], "03.max_steps": 2, "03.batch_size": 1,
           "03.crops_per_case": 1, "03.val_every": 2, "03.checkpoint_every": 2, "03.warmup_steps": 0,
           "03.val_max_cases": 1, "03.sw_batch_size": 2, "device": "cpu"}


def test_parse_assignments_reads_yaml_values():
    got = parse_assignments(["03.max_steps=400", "device=cpu", "03.roi_size=[96, 96]", "03.overwrite=true",
                             "03.pretrained_checkpoint="])
    assert got == {"03.max_steps": 400, "device": "cpu", "03.roi_size": [96, 96], "03.overwrite": True,
                   "03.pretrained_checkpoint": ""}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignments(["max_steps"])


@pytest.mark.parametrize("parameters, message", [
    ({"03.max_stepz": 3}, "has no parameter 'max_stepz'"),
    ({"max_stepz": 3}, "declared by none of the notebooks"),
    ({"02.max_steps": 3}, "which this run does not execute"),
    ({"07.max_steps": 3}, "there is no notebook 07"),
])
def test_unknown_parameters_are_refused_before_anything_runs(tmp_path, parameters, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        run_pipeline(run_dir, parameters, stages=["03"], log=None)
    assert not run_dir.exists()


def test_expand_sweep_makes_one_run_per_grid_point():
    runs = expand_sweep({"parameters": {"03.max_steps": 5},
                         "grid": {"03.label_fraction": [0.25, 1.0], "03.fusion": ["none", "decoder"]}})
    assert [r.name for r in runs] == ["label_fraction-0.25_fusion-none", "label_fraction-0.25_fusion-decoder",
                                      "label_fraction-1.0_fusion-none", "label_fraction-1.0_fusion-decoder"]
    assert all(r.parameters["03.max_steps"] == 5 and r.stages is None for r in runs)
    assert runs[1].parameters["03.fusion"] == "decoder" and runs[1].parameters["03.label_fraction"] == 0.25
    assert runs[1].labels == {"03.label_fraction": 0.25, "03.fusion": "decoder"}
    with pytest.raises(ValueError, match="non-empty list of values or a mapping of named bundles"):
        expand_sweep({"grid": {"03.seed": 3}})
    with pytest.raises(ValueError, match="unknown key"):
        expand_sweep({"gird": {"03.seed": [1]}})
    with pytest.raises(ValueError, match="both a fixed parameter and a grid axis"):
        expand_sweep({"parameters": {"03.seed": 1}, "grid": {"03.seed": [1, 2]}})


def test_relative_paths_are_read_from_where_the_runner_started(tmp_path):
    from mosmoskit.notebook_runs import _absolute_paths

    (tmp_path / "data" / "btcv").mkdir(parents=True)
    per = {"03": {"dataset": "data/btcv", "label_map": "btcv", "output_dir": "runs/x", "max_steps": 5},
           "02": {"dataset": "phantom", "pretrained_checkpoint": "", "text_encoder": "tiny"}}
    _absolute_paths(per, cwd=tmp_path)
    assert per["03"]["dataset"] == str((tmp_path / "data" / "btcv").resolve())
    assert per["03"]["output_dir"] == str((tmp_path / "runs" / "x").resolve())
    assert per["03"]["label_map"] == "btcv" and per["02"]["dataset"] == "phantom"  # names, not files here
    assert per["02"]["pretrained_checkpoint"] == "" and per["03"]["max_steps"] == 5


def test_named_bundles_change_parameters_together_and_may_skip_notebooks(tmp_path):
    spec = {"stages": ["02", "03"], "parameters": {"03.max_steps": 5},
            "grid": {"setting": {"random": {"stages": ["03"], "03.init_encoder": False},
                                 "mosmos": {"02.tag_loss_weight": 1.0, "03.fusion": "decoder"}},
                     "03.seed": [0, 1]}}
    runs = expand_sweep(spec)
    assert [r.name for r in runs] == ["setting-random_seed-0", "setting-random_seed-1",
                                      "setting-mosmos_seed-0", "setting-mosmos_seed-1"]
    assert runs[0].stages == ("03",) and runs[2].stages is None
    assert runs[0].labels == {"setting": "random", "03.seed": 0}
    assert runs[2].parameters == {"03.max_steps": 5, "02.tag_loss_weight": 1.0, "03.fusion": "decoder", "03.seed": 0}
    with pytest.raises(ValueError, match=r"parameter '03.max_steps' is set twice"):
        expand_sweep({"parameters": {"03.max_steps": 5}, "grid": {"s": {"a": {"03.max_steps": 6}}}})
    with pytest.raises(ValueError, match=r"bundle s.a must be a mapping"):
        expand_sweep({"grid": {"s": {"a": 3}}})

    import yaml

    path = tmp_path / "bundles.yaml"
    path.write_text(yaml.safe_dump({**spec, "parameters": {"03.max_steps": 5, "02.max_steps": 7}}, sort_keys=False))
    _, _, plans = plan_sweep(path, tmp_path / "sweep")
    random_run, mosmos_run = plans[0], plans[2]
    assert [s.key for s in random_run.stages] == ["03"] and set(random_run.per_notebook) == {"03"}
    assert "pretrained_checkpoint" not in random_run.per_notebook["03"]
    assert [s.key for s in mosmos_run.stages] == ["02", "03"] and mosmos_run.per_notebook["02"]["max_steps"] == 7
    # the two mosmos seeds share one pre-training folder; the random runs have none
    assert plans[2].stage_dirs["02"] == plans[3].stage_dirs["02"] and "02" not in plans[1].stage_dirs
    with pytest.raises(ValueError, match="cannot select on"):
        run_sweep(path, tmp_path / "sweep", where={"network": "x"}, log=None)


@pytest.mark.slow
def test_sweep_shares_pretraining_chains_checkpoints_and_resumes(tmp_path):
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"stages": ["02", "03"], "parameters": {**TINY_02, **TINY_03},
                                     "grid": {"03.seed": [0, 1]}}))
    out = tmp_path / "sweep"
    rows = run_sweep(sweep, out, html=True, log=None)

    assert [r["run"] for r in rows] == ["seed-0", "seed-1"] and all(r["status"] == "ok" for r in rows)
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in rows)
    # one pre-training shared by both fine-tuning runs, one fine-tuning folder per seed
    assert len(list((out / "stages").glob("02_pretrain_*"))) == 1
    assert len(list((out / "stages").glob("03_finetune_*"))) == 2
    for name in ("seed-0", "seed-1"):
        state = json.loads((out / "runs" / name / "pipeline.json").read_text())
        assert {k: v["status"] for k, v in state["notebooks"].items()} == {"02": "ok", "03": "ok"}
        ft_params = state["settings"]["parameters"]["03"]
        assert ft_params["pretrained_checkpoint"] == str(Path(state["notebooks"]["02"]["output_dir"]) / "last.pt")
        config = json.loads((Path(state["notebooks"]["03"]["output_dir"]) / "config.json").read_text())
        assert config.get("pretrained_checkpoint", config.get("finetune", {}).get("pretrained_checkpoint")) \
            == ft_params["pretrained_checkpoint"]
        executed = out / "runs" / name / "notebooks"
        assert (executed / "03_finetuning.ipynb").is_file() and (executed / "03_finetuning.html").is_file()
        assert "mean" in (out / "runs" / name / "results.md").read_text()
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[0].startswith("run,03.seed,status,mean_dice")

    # the same sweep again reuses every notebook: nothing is executed a second time
    stamp = (out / "runs" / "seed-1" / "notebooks" / "03_finetuning.ipynb").stat().st_mtime_ns
    again = run_sweep(sweep, out, html=True, log=None)
    assert [r["mean_dice"] for r in again] == [r["mean_dice"] for r in rows]
    assert (out / "runs" / "seed-1" / "notebooks" / "03_finetuning.ipynb").stat().st_mtime_ns == stamp

    # another setting in the same run folder is refused, not silently mixed in
    with pytest.raises(ValueError, match="other settings"):
        run_pipeline(out / "runs" / "seed-0", {**TINY_02, **TINY_03, "03.seed": 5}, stages=["02", "03"], log=None)


def test_cli_lists_run_notebooks_and_rejects_bad_names(tmp_path, capsys):
    assert "run-notebooks" in cli.COMMANDS
    code = cli.main(["run-notebooks", "--out", str(tmp_path / "r"), "--only", "03", "--set", "03.nope=1"])
    assert code == 2 and "has no parameter 'nope'" in capsys.readouterr().out


@pytest.mark.parametrize("sweep", sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_files_name_only_declared_parameters(sweep, tmp_path):
    """Every sweep file in sweeps/ expands, and every name in it is a parameter of its notebooks."""
    from mosmoskit.notebook_runs import plan_sweep

    spec, selected, plans = plan_sweep(sweep, tmp_path)
    assert plans and all(set(p.stage_dirs) == {s.key for s in p.stages} for p in plans)
    # runs that differ only downstream share the upstream notebook's folder
    first = [p.stage_dirs[p.stages[0].key] for p in plans]
    assert len(set(first)) <= len(plans)


@pytest.mark.slow
def test_main_job_runs_the_four_notebooks_and_resumes(tmp_path, capsys):
    """``python -m mosmoskit demo`` (the README's main command) with tiny sizes: 01 -> 02 -> 03 -> 04."""
    tiny = {"01.phantom_cases": 3, "01.phantom_shape": [40, 40, 24], "01.phantom_spacing": [9.0, 9.0, 12.0],
            **TINY_02, **TINY_03, "04.max_cases": 2}
    sets = [arg for name, value in tiny.items() for arg in ("--set", f"{name}={json.dumps(value)}")]
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    state = json.loads((out / "pipeline.json").read_text())
    assert [k for k, v in state["notebooks"].items() if v["status"] == "ok"] == ["01", "02", "03", "04"]
    assert state["settings"]["parameters"]["03"]["fusion"] == "decoder"  # the main job is MOSMOS
    assert state["settings"]["parameters"]["04"]["checkpoint"] == str(out / "03_finetune" / "last.pt")
    for name in ("01_data_exploration", "02_report_pretraining", "03_finetuning", "04_mask_inspection"):
        assert (out / "notebooks" / f"{name}.ipynb").is_file() and (out / "notebooks" / f"{name}.html").is_file()
    assert (out / "01_explore" / "exploration.json").is_file() and (out / "03_finetune" / "metrics.json").is_file()
    assert "results table" in printed and "fine-tuning (mosmos): test mean Dice" in printed
    # a second call reuses everything
    assert cli.main(["demo", "--out", str(out), *sets]) == 0
    again = capsys.readouterr().out
    assert "running" not in again and again.count("done before") == 4
