"""Shared test fixtures.

Real sample scans live outside the repository (``../shared/data`` next to the clone, or the folder
named by ``MOSMOSKIT_SHARED_DATA``). Tests that need them use the ``shared_data`` fixture and skip
with a clear reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("MOSMOSKIT_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample scans (``totalseg/...``); skips the test when it is absent."""
    folder = _shared_data_dir()
    if not (folder / "totalseg").is_dir():
        pytest.skip(f"real sample scans not found at {folder} (set MOSMOSKIT_SHARED_DATA to use them)")
    return folder


@pytest.fixture(scope="session")
def totalseg(shared_data: Path) -> Path:
    return shared_data / "totalseg"
