"""The student tutorials in ``tutorials/``: their code runs as written and their links resolve.

Every ```python block of a tutorial is run, top to bottom, in one fresh Python process whose
working directory is an empty temporary folder (blocks of one file share one namespace, as a reader
pasting them into one session would). A failure names the file, the block number and the
traceback. Blocks that must not run in CI (GPU jobs, real data sets) are fenced ```bash or ```text;
the ``python -m mosmoskit ...`` commands in them are still parsed with the real command-line parser,
so a renamed option or an invalid value breaks this test instead of a student's evening.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS_DIR = REPO / "tutorials"
#: The tutorials, in reading order; tutorials/README.md must link every one of them.
TUTORIALS = [
    "01_report_supervision.md",
    "02_reading_a_dataset.md",
    "03_pretraining_and_attention.md",
    "04_few_labels.md",
    "05_btcv_amos.md",
    "06_your_own_pairs.md",
]
#: Tutorials whose code takes more than 20 s on the project's 2-core CPU; they carry
#: ``@pytest.mark.slow``. Measured with the ``seconds`` line each run prints, on that CPU while
#: other jobs kept it busy (load 3 to 4), three runs each: 01 10-20 s (most of it importing MONAI's
#: readers), 02 13-17 s, 03 9-15 s, 04 14-20 s, 05 7-9 s, 06 9-13 s; about 10 s of CPU time each,
#: the rest is waiting for the other jobs. None is over 20 s.
SLOW: set[str] = set()
#: Files each tutorial's code must leave behind (relative to its working directory), so that a page
#: whose code silently stopped producing its results fails here.
EXPECTED_OUTPUTS = {
    "01_report_supervision.md": ["runs/tutorial_01/case_overview.png"],
    "02_reading_a_dataset.md": ["runs/tutorial_02/summary/summary.md", "runs/tutorial_02/summary/cohort_overview.png"],
    "03_pretraining_and_attention.md": ["runs/tutorial_03/pretrain/metrics.json", "runs/tutorial_03/loss.png",
                                        "runs/tutorial_03/attention_liver.png", "runs/tutorial_03/attention_grid.png"],
    "04_few_labels.md": ["runs/tutorial_04/random_s0/metrics.json", "runs/tutorial_04/mosmos_s0/metrics.json",
                         "runs/tutorial_04/random_s1/metrics.json", "runs/tutorial_04/mosmos_s1/metrics.json",
                         "runs/tutorial_04/dice_per_organ.png"],
    "05_btcv_amos.md": ["runs/tutorial_05/btcv/dataset.json", "runs/tutorial_05/amos22/dataset.json"],
    "06_your_own_pairs.md": ["runs/tutorial_06/scans/pairs.csv", "runs/tutorial_06/text_encoder/config.json",
                             "runs/tutorial_06/pretrain/metrics.json"],
}
#: A tutorial's code must finish well under a minute on a 2-core CPU; this is the hard stop.
TIMEOUT_S = 300
#: Fenced code blocks: the language of the info string and the body. As in CommonMark, an info
#: string holds no backtick, so a line that starts with an inline span such as ```` ```bash ```` is text.
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^`\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: Markdown links and images: [text](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

# The runner executes block after block in one namespace and, on the first failure, prints which
# block failed before the traceback, then exits 1. It is passed to ``python -c`` with the blocks
# given as a file path, so the tutorial code runs exactly as written (no templating).
RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__"}
for number, source in enumerate(blocks, start=1):
    print(f"--- block {number} of {len(blocks)}", flush=True)
    try:
        exec(compile(source, f"{sys.argv[2]} block {number}", "exec"), namespace)
    except BaseException:
        print(f"FAILED: {sys.argv[2]} block {number}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def code_blocks(path: Path, language: str) -> list[str]:
    """The bodies of the fenced blocks of ``path`` whose info string is ``language``, in order."""
    return [body for lang, body in FENCE.findall(path.read_text(encoding="utf-8")) if lang == language]


def local_links(path: Path) -> list[str]:
    """Relative link targets of a Markdown file (web links and in-page anchors left out)."""
    targets = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s):, mailto:, ... and anchors within the page
        targets.append(target.split("#", 1)[0])
    return targets


def mosmoskit_commands(block: str) -> list[list[str]]:
    """``python -m mosmoskit ...`` command lines of a shell block, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        if not line.lstrip().startswith("python -m mosmoskit"):
            continue  # other commands (a multi-line python -c, cd, ...) are not ours to parse
        commands.append(shlex.split(line, comments=True)[3:])
    return commands


# ------------------------------------------------------------------------------- the index
def test_every_tutorial_exists_and_is_linked_from_the_index():
    index = TUTORIALS_DIR / "README.md"
    linked = {Path(t).name for t in local_links(index)}
    on_disk = sorted(p.name for p in TUTORIALS_DIR.glob("[0-9][0-9]_*.md"))
    assert on_disk == TUTORIALS, f"tutorials/ holds {on_disk}; the test expects {TUTORIALS}"
    missing = [t for t in TUTORIALS if t not in linked]
    assert not missing, f"tutorials/README.md does not link {missing}"
    # the index lists them in reading order
    text = index.read_text(encoding="utf-8")
    positions = [text.index(f"({t})") for t in TUTORIALS]
    assert positions == sorted(positions), "tutorials/README.md must list the tutorials in order 01..06"


@pytest.mark.parametrize("doc", ["tutorials/README.md", *[f"tutorials/{t}" for t in TUTORIALS]])
def test_relative_links_resolve(doc):
    path = REPO / doc
    broken = [t for t in local_links(path) if t and not (path.parent / t).exists()]
    assert not broken, f"{doc}: links to missing files {broken}"


def test_readme_links_to_the_tutorials_resolve():
    targets = [t for t in local_links(REPO / "README.md") if t.startswith("tutorials")]
    assert "tutorials/README.md" in targets, "README.md must link tutorials/README.md"
    broken = [t for t in targets if not (REPO / t).exists()]
    assert not broken, f"README.md: links to missing tutorial files {broken}"


# ------------------------------------------------------------------------- shell commands
@pytest.mark.parametrize("name", TUTORIALS)
def test_mosmoskit_commands_in_shell_blocks_parse(name):
    """Every ``python -m mosmoskit`` command shown to students uses real options and valid values."""
    from mosmoskit.cli import build_parser
    from mosmoskit.commands.config_options import config_from_args
    from mosmoskit.finetuning.config import FinetuneConfig
    from mosmoskit.pretraining.config import PretrainConfig

    configs = {"finetune": FinetuneConfig, "pretrain": PretrainConfig}
    parser = build_parser()
    commands = [c for block in code_blocks(TUTORIALS_DIR / name, "bash") for c in mosmoskit_commands(block)]
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as err:  # argparse exits on an unknown option or a bad value
            pytest.fail(f"{name}: `python -m mosmoskit {' '.join(argv)}` does not parse (exit {err.code})")
        if argv and argv[0] in configs:
            config_from_args(configs[argv[0]], args)  # raises ValueError on an invalid combination
    if name == "05_btcv_amos.md":
        finetunes = [c for c in commands if c and c[0] == "finetune"]
        assert finetunes, "05_btcv_amos.md must show the fine-tuning command for BTCV/AMOS"
        first = " ".join(finetunes[0])
        for option in ("--spatial-dims 3", "--roi-size 96 96 96", "--spacing 1.5 1.5 2.0"):
            assert option in first, f"05_btcv_amos.md: the BTCV command lacks {option!r}: {first}"


# --------------------------------------------------------------------------- python code
def _run_tutorial(name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    import json

    blocks = code_blocks(TUTORIALS_DIR / name, "python")
    assert blocks, f"{name} has no ```python block to run"
    work = tmp_path / "work"
    work.mkdir()
    blocks_file = tmp_path / "blocks.json"
    blocks_file.write_text(json.dumps(blocks), encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    # One OpenMP thread unless the caller chose: on a shared 2-core machine torch's default threads
    # spin against the other jobs (tutorial 04 took 93 s with them under load, 16 s with one thread).
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(blocks_file), name],
        cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    print(f"{name}: {len(blocks)} python blocks, {time.perf_counter() - start:.1f} seconds")
    if proc.returncode != 0:
        failed = re.search(r"FAILED: (.+ block \d+)", proc.stderr)
        where = failed.group(1) if failed else f"{name} (before any block finished)"
        pytest.fail(f"{where} failed (exit {proc.returncode}).\n--- stderr:\n{proc.stderr[-6000:]}\n"
                    f"--- stdout (end):\n{proc.stdout[-2000:]}", pytrace=False)
    number = name.split("_", 1)[0]
    # the code writes only into runs/tutorial_NN/ under the working directory
    written = sorted(p.name for p in work.iterdir())
    assert written in ([], ["runs"]), (
        f"{name} wrote {written} into the working directory; write into runs/tutorial_{number}/")
    if written:
        runs = sorted(p.name for p in (work / "runs").iterdir())
        assert runs == [f"tutorial_{number}"], f"{name} wrote runs/{runs}; use runs/tutorial_{number}/"
    missing = [f for f in EXPECTED_OUTPUTS[name] if not (work / f).is_file() or (work / f).stat().st_size == 0]
    assert not missing, f"{name}: its code no longer writes {missing}"
    return proc


def _params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TUTORIALS]


@pytest.mark.parametrize("name", _params())
def test_tutorial_python_blocks_run(name, tmp_path):
    proc = _run_tutorial(name, tmp_path)
    blocks = code_blocks(TUTORIALS_DIR / name, "python")
    # every block ran (the runner announces each one before executing it)
    assert f"--- block {len(blocks)} of {len(blocks)}" in proc.stdout
    if name == "04_few_labels.md":
        # the comparison the page teaches is paired: same labelled and test patients, other variant
        import json

        runs = tmp_path / "work" / "runs" / "tutorial_04"
        random_init = json.loads((runs / "random_s0" / "metrics.json").read_text())
        mosmos = json.loads((runs / "mosmos_s0" / "metrics.json").read_text())
        assert (random_init["protocol"]["variant"], mosmos["protocol"]["variant"]) == ("random_init", "mosmos")
        assert random_init["split"]["test"] == mosmos["split"]["test"]
        assert random_init["split"]["labelled"] == mosmos["split"]["labelled"]
