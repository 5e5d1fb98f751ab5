"""Running the numbered notebooks with papermill, and reading their parameters safely.

Each notebook starts with a cell tagged ``parameters`` whose first line is ``# Parameters``: flat,
typed, commented literals whose names equal the fields of the config dataclass the notebook builds.
Papermill injects a cell after it (also starting with ``# Parameters``) holding the values passed.
Papermill itself only *warns* about a name the notebook does not declare; we refuse it twice:

* :func:`run_notebook` checks the names before starting the kernel;
* :func:`notebook_config`, called in the notebook's first cell after the parameters, reads the
  assignments of every executed ``# Parameters`` cell and raises on a name that is not a config field,
  so a plain ``papermill`` command line is protected too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Mapping, TypeVar

from mosmoskit.config import config_from_dict

__all__ = ["notebook_config", "notebook_parameters", "run_notebook"]

C = TypeVar("C")
PARAMETERS_HEADER = "# Parameters"


def _assigned_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def notebook_config(config_cls: type[C], shell: Any = None) -> C:
    """Build ``config_cls`` from the values of the notebook's ``# Parameters`` cells.

    Call it as the first statement after the parameters cell: ``config = notebook_config(PretrainConfig)``.

    Raises:
        ValueError: a parameter that is not a field of ``config_cls`` (the notebook's parameters
            cell or papermill's injected cell defines it), or a value of the wrong type.
        RuntimeError: called outside IPython/Jupyter.
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        raise RuntimeError("notebook_config() reads the notebook's parameter cells and must run inside Jupyter/IPython")
    cells = shell.user_ns.get("In", [])
    names: list[str] = []
    for source in cells:
        if isinstance(source, str) and source.lstrip().startswith(PARAMETERS_HEADER):
            names += [n for n in _assigned_names(source) if n not in names]
    values = {name: shell.user_ns[name] for name in names if name in shell.user_ns}
    return config_from_dict(config_cls, values, source=f"notebook parameters ({config_cls.__name__})")


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares: name -> {"default", "type", "help"} (papermill's inspection)."""
    import papermill

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    found = papermill.inspect_notebook(str(path))
    return {
        name: {"default": p["default"], "type": p["inferred_type_name"], "help": p["help"]}
        for name, p in found.items()
    }


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: Mapping[str, Any] | None = None,
    cwd: str | Path | None = None,
    kernel_name: str = "python3",
    progress: bool = False,
    html: bool = False,
) -> Path:
    """Execute ``notebook`` with papermill into ``output``, refusing unknown parameter names.

    Args:
        notebook: the source notebook (outputs stripped, tagged parameters cell).
        output: the executed notebook to write (its folder is created).
        parameters: name -> value; every name must be declared by the notebook's parameters cell.
        cwd: working directory of the kernel (default: the notebook's folder).
        kernel_name: Jupyter kernel; ``python3`` is the environment papermill runs in.
        progress: show papermill's cell progress bar.
        html: also write an HTML rendering next to ``output``.

    Returns:
        The path of the executed notebook.

    Raises:
        ValueError: a parameter the notebook does not declare.
        papermill.PapermillExecutionError: a cell failed (its message names the cell and error).
    """
    import papermill

    notebook = Path(notebook)
    parameters = dict(parameters or {})
    declared = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"{notebook.name}: unknown parameter(s) {unknown}; it declares {sorted(declared)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        cwd=str(cwd or notebook.parent),
        kernel_name=kernel_name,
        progress_bar=progress,
        report_mode=False,
    )
    if html:
        _write_html(output)
    return output


def _write_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    from mosmoskit.io import atomic_write_text

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(executed), as_version=4))
    return atomic_write_text(executed.with_suffix(".html"), body)
