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


#: The tests run once per method: ``bash scripts/test.sh --fast`` (``-m "not slow"``) runs them for these
#: methods only, one of each kind of data and capability (SFT rows; pairs with a precomputed reference;
#: unpaired rows with mismatched completions; reference logits; a batch plan); the whole suite for all.
FAST_METHODS = {"sft", "dpo", "kto", "epsilon_dpo", "beta_dpo"}
PER_METHOD_TESTS = {"test_every_method_trains", "test_every_method_same_loss_in_every_layout"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if getattr(item, "originalname", None) in PER_METHOD_TESTS:
            params = item.callspec.params  # type: ignore[attr-defined]
            if (params.get("method") or params.get("name")) not in FAST_METHODS:
                item.add_marker(pytest.mark.slow)
