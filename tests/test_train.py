"""End-to-end runs on a tiny model built in the test: every method trains, the run directory is complete."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.config import from_dict
from tether.methods.registry import METHODS
from tether.training.job import train

from tiny import pair_rows, sft_rows, tiny_model_dir, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(16))
    sft = write_jsonl(root / "sft.jsonl", sft_rows(16))
    return root, model, pairs, sft


def config(root, model, data, method, **train):
    return from_dict(
        {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_length": 64},
            "method": {"name": method},
            "reference": {"cache_dir": str(root / "cache")},
            "train": {
                "output_dir": str(root / "runs" / method),
                "batch_size": 2,
                "max_steps": 3,
                "lr": 1e-2,
                "progress": False,
                **train,
            },
        }
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains(setup, method):
    root, model, pairs, sft = setup
    m = METHODS[method]
    cfg = config(root, model, sft if m.data == "sft" else pairs, method)
    result = train(cfg)
    assert result.steps == 3
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    if m.uses_reference:
        assert "deviation" in lines[-1]
    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(result.final_model_dir / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "summary.json").exists()
