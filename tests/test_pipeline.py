"""The main job's pipeline (scripts/demo.sh) on a tiny model: ε-DPO training, `tether eval` against the
starting model on held-out verifiable tasks, `tether report`; each through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import tether.data.tasks as tasks

from tiny import tiny_model_dir, write_jsonl


@pytest.mark.slow
def test_demo_pipeline_on_tiny_model(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    split = tasks.generate(seed=1, n_train=24, n_heldout=8)
    rows = {k: tasks.to_rows(v) for k, v in split.items()}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows["train"]["pairs"])
    heldout = write_jsonl(tmp_path / "sft.heldout.jsonl", rows["heldout"]["sft"])
    run = tmp_path / "run"
    cfg = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "eval": str(pairs), "eval_limit": 8, "max_length": 160},
        "method": {"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.01},
        "train": {
            "output_dir": str(run),
            "batch_size": 4,
            "max_steps": 4,
            "lr": 1e-3,
            "eval_every": 2,
            "progress": False,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    driver = (
        "import sys; from tether.cli import main\n"
        f"rc = main(['train', {str(tmp_path / 'cfg.yaml')!r}])\n"
        f"rc = rc or main(['eval', {str(run)!r}, '--data', {str(heldout)!r}, '--max-samples', '4',"
        " '--max-new-tokens', '6', '--no-progress'])\n"
        f"rc = rc or main(['report', {str(run)!r}, '--out', {str(tmp_path / 'report')!r}])\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run summary" in proc.stdout and "report:" in proc.stdout
    ev = json.loads((run / "eval.json").read_text())
    metrics = ev["metrics"]
    assert "generation/success" in metrics and "kl" in metrics and "deviation" in metrics
    assert (tmp_path / "report" / "report.md").exists()
    assert any(p.suffix == ".png" for p in (tmp_path / "report").iterdir())
    assert any(json.loads(x).get("kl/beta") for x in (run / "metrics.jsonl").read_text().splitlines())
