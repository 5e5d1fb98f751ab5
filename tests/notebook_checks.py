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
