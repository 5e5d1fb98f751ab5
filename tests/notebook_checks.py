"""Checks every numbered notebook must pass, shared by the per-notebook test files."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any


def read_notebook(path: Path) -> Any:
    import nbformat

    return nbformat.read(str(path), as_version=4)


def parameter_values(path: Path) -> dict[str, Any]:
    """The literals of the tagged ``# Parameters`` cell; fails unless every line is ``name = literal  # type: ...``."""
    cells = [c for c in read_notebook(path).cells if c.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    lines = cells[0].source.splitlines()
    assert lines[0] == "# Parameters"
    values = {}
    for line in lines[1:]:
        assert "  # type: " in line, f"parameter line without a '# type: <type> <help>' comment: {line!r}"
        name, literal = line.split("  # type: ")[0].split(" = ", 1)
        values[name] = ast.literal_eval(literal)  # flat literals only
    return values


def assert_thin_and_stripped(path: Path) -> None:
    """Cells call the library (no def, class or loops) and are saved without outputs."""
    for cell in read_notebook(path).cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, "save the notebook with outputs stripped"
        tree = ast.parse(cell.source)
        banned = [type(n).__name__ for n in ast.walk(tree)
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.AsyncFunctionDef))]
        assert not banned, f"notebook cells call the library; found {banned} in:\n{cell.source}"


def tiny_mosmos_checkpoint(root: Path) -> Path:
    """A 2D MOSMOS fine-tuning run (decoder fusion on a 2-step pre-training) small enough for a test.

    Returns the fine-tuning checkpoint; its attention maps are real, its Dice is not (2 steps).
    """
    from mosmoskit.finetuning.config import FinetuneConfig
    from mosmoskit.finetuning.run import run_finetuning
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.pretraining.run import run_pretraining

    pre = run_pretraining(PretrainConfig(text_encoder="tiny", phantom_cases=5, phantom_slices_per_case=2,
                                         image_size=(64, 64), max_steps=2, batch_size=4, val_every=2,
                                         checkpoint_every=2, warmup_steps=0, device="cpu",
                                         output_dir=str(root / "pre")), progress=False)
    fine = run_finetuning(FinetuneConfig(phantom_cases=5, phantom_slices_per_case=2, phantom_shape=(64, 64),
                                         phantom_spacing=(6.0, 6.0), roi_size=(64, 64), max_steps=2, batch_size=1,
                                         crops_per_case=1, val_every=2, checkpoint_every=2, warmup_steps=0,
                                         val_max_cases=1, sw_batch_size=2, device="cpu", fusion="decoder",
                                         pretrained_checkpoint=str(pre.checkpoint), test_fraction=0.4,
                                         output_dir=str(root / "fine")), progress=False)
    return Path(fine.checkpoint)
