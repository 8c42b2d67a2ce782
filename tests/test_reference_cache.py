"""The reference's log-prob tables are keyed by what determines their numbers (``engine/cache.py``), not by
who asks: a table training computed for its held-out data is found by ``tether eval`` on the same data."""

from __future__ import annotations

from tether.config import from_dict
from tether.evaluation.evaluate import evaluate
from tether.training.job import train

from tiny import pair_rows, tiny_model_dir, write_jsonl


def test_eval_finds_the_reference_table_training_computed(tmp_path, monkeypatch):
    model = tiny_model_dir(tmp_path / "model")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    held = write_jsonl(tmp_path / "held.jsonl", pair_rows(4, seed=1))
    cache = tmp_path / "cache"
    monkeypatch.setenv("TETHER_CACHE", str(cache))
    cfg = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "eval": str(held), "max_length": 48},
        "method": {"name": "dpo", "beta": 0.2},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 1, "progress": False},
    }
    result = train(from_dict(cfg))
    assert result.reference_mode == "precomputed"
    tables = {p: p.read_bytes() for p in (cache / "reflogps").glob("*.pt")}
    assert len(tables) == 2  # the training rows' table and the held-out rows' table

    import tether.evaluation.context as ev_mod

    computed: list[str] = []
    real = ev_mod.compute_table

    def spy(*args, **kwargs):
        computed.append(kwargs.get("desc", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev_mod, "compute_table", spy)
    evaluate(str(result.run_dir), str(held), metrics="pairwise", progress=False)
    assert {p: p.read_bytes() for p in (cache / "reflogps").glob("*.pt")} == tables  # read, not written
    assert computed == ["log-probs (model)"]  # the reference's log-probs came from training's table
