"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import pair_rows, tiny_model_dir, write_jsonl


@pytest.fixture(scope="module")
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """``(root, model, pairs)``: a folder of the module's own, a tiny model in it and ``pairs.jsonl`` of
    ``pair_rows(n)``, n being the module's ``PAIRS`` (16 when it has none). A module that needs more
    defines its own ``setup``."""
    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(getattr(request.module, "PAIRS", 16)))
    return root, model, pairs
