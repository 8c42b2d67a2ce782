"""``tether eval --judge``: a tiny randomly initialised ``LlamaForSequenceClassification`` (one output) built
here scores the generations; win rates equal values computed by hand from scores taken independently,
ties count ½, the bootstrap interval is fixed by its seed, scores are cached by judge and texts, and a
judge that is not a one-output reward model is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

from tether.cli import main as cli_main
from tether.evaluation.evaluate import evaluate
from tether.evaluation.metrics import preference_rate

from tiny import pair_rows, tiny_config, tiny_model_dir, tiny_tokenizer, write_jsonl


def judge_dir(path: Path, seed: int = 0, num_labels: int = 1) -> Path:
    torch.manual_seed(seed)
    cfg = tiny_config(max_position_embeddings=512, num_labels=num_labels)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    rows = pair_rows(5)
    for r in rows:
        r["source"], r["answer"] = "arithmetic", r["chosen"]
    return {
        "root": root,
        "model": tiny_model_dir(root / "model"),
        "ref": tiny_model_dir(root / "ref", seed=1),
        "judge": judge_dir(root / "judge"),
        "judge2": judge_dir(root / "judge2", seed=1),
        "rows": rows,
        "pairs": write_jsonl(root / "pairs.jsonl", rows),
    }


def test_preference_rate_by_hand():
    # win (1 > 0), tie (2 = 2), loss (3 < 4), win (3 > 1): (1 + ½ + 0 + 1) / 4
    r = preference_rate([[1.0], [2.0], [3.0], [3.0]], [[0.0], [2.0], [4.0], [1.0]], seed=7)
    assert r["win_rate"] == 0.625 and (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    v = np.array([1.0, 0.5, 0.0, 1.0])  # the bootstrap, by hand: prompts resampled with replacement
    boot = v[np.random.default_rng(7).integers(0, 4, size=(1000, 4))].mean(axis=1)
    assert (r["ci_low"], r["ci_high"]) == (np.quantile(boot, 0.025), np.quantile(boot, 0.975))
    assert preference_rate([[1.0], [2.0], [3.0], [3.0]], [[0.0], [2.0], [4.0], [1.0]], seed=7) == r
    # samples: a prompt's value is the mean over its samples; one chosen score is compared with each,
    # the reference's samples in order
    s = preference_rate([[1.0, 0.0, 2.0]], [[1.0]])
    assert s["win_rate"] == 0.5 and (s["wins"], s["ties"], s["losses"]) == (1, 1, 1)
    assert preference_rate([[1.0, 0.0]], [[0.0, 1.0]])["win_rate"] == 0.5
    same = preference_rate([[0.3]] * 5, [[0.3]] * 5)
    assert same["win_rate"] == same["ci_low"] == same["ci_high"] == 0.5


@torch.no_grad()
def _scores(judge: Path, prompts: list[str], responses: list[str]) -> list[float]:
    """The judge's rewards one conversation at a time, rendered here with its own chat template."""
    model = AutoModelForSequenceClassification.from_pretrained(judge).eval()
    tok = tiny_tokenizer()
    out = []
    for p, r in zip(prompts, responses, strict=True):
        msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        ids = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return out


def _hand_rate(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)) / len(a)


@pytest.mark.slow
def test_judge_win_rates_equal_hand_computed_values_with_ties(env, monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    kw = {"reference": str(env["ref"]), "max_new_tokens": 4, "batch_size": 2, "progress": False}
    first = evaluate(str(env["model"]), str(env["pairs"]), judge=str(env["judge"]), **kw)
    gens = [s["model"] for s in first["samples"]]
    # Ties by construction: rows 0 and 1 get the model's own generation as their chosen answer.
    rows = [dict(r) for r in env["rows"]]
    for i in (0, 1):
        rows[i]["chosen"] = gens[i]
    data = write_jsonl(tmp_path / "ties.jsonl", rows)
    res = evaluate(str(env["model"]), str(data), judge=str(env["judge"]), **kw)
    prompts = [r["prompt"] for r in rows]
    model_s = _scores(env["judge"], prompts, [s["model"] for s in res["samples"]])
    ref_s = _scores(env["judge"], prompts, [s["reference"] for s in res["samples"]])
    chosen_s = _scores(env["judge"], prompts, [r["chosen"] for r in rows])
    m = res["metrics"]
    assert [s["reward"][0] for s in res["samples"]] == pytest.approx(model_s, abs=1e-5)
    assert m["judge/reward"] == pytest.approx(sum(model_s) / 5, abs=1e-5)
    assert m["judge/reward_chosen"] == pytest.approx(sum(chosen_s) / 5, abs=1e-5)
    assert res["reference_metrics"]["judge/reward"] == pytest.approx(sum(ref_s) / 5, abs=1e-5)
    assert m["win_rate/chosen"] == _hand_rate(model_s, chosen_s)
    assert m["win_rate"] == _hand_rate(model_s, ref_s)
    ties = preference_rate([[x] for x in model_s], [[x] for x in chosen_s])["ties"]
    assert ties >= 2  # rows 0 and 1 at least
    assert m["win_rate/chosen/ci_low"] <= m["win_rate/chosen"] <= m["win_rate/chosen/ci_high"]
    assert res["judge"] == str(env["judge"])


@pytest.mark.slow
def test_judge_cache_hit_and_misses(env, monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    kw = {"reference": str(env["ref"]), "max_new_tokens": 4, "progress": False}
    model, pairs = str(env["model"]), str(env["pairs"])
    first = evaluate(model, pairs, judge=str(env["judge"]), **kw)
    assert first["judge_cache"] == {"model": "miss", "reference": "miss", "chosen": "miss"}
    second = evaluate(model, pairs, judge=str(env["judge"]), **kw)
    assert second["judge_cache"] == {"model": "hit", "reference": "hit", "chosen": "hit"}
    assert second["metrics"] == first["metrics"]
    other = evaluate(model, pairs, judge=str(env["judge2"]), **kw)  # another judge's weights
    assert other["judge_cache"] == {"model": "miss", "reference": "miss", "chosen": "miss"}
    rows = [dict(r) for r in env["rows"]]
    rows[3]["chosen"] = rows[3]["chosen"] + "0"  # one text changed
    changed = evaluate(model, str(write_jsonl(tmp_path / "c.jsonl", rows)), judge=str(env["judge"]), **kw)
    assert changed["judge_cache"] == {"model": "hit", "reference": "hit", "chosen": "miss"}


@pytest.mark.slow
def test_checker_reports_the_same_win_rate_columns(env, tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    res = evaluate(
        str(env["model"]), str(env["pairs"]), reference=str(env["ref"]), max_new_tokens=4, progress=False
    )
    assert res["judge"] == "task checker"
    for k in ("win_rate", "win_rate/ci_low", "win_rate/ci_high", "win_rate/chosen", "win_rate/chosen/ci_low"):
        assert k in res["metrics"], k
    ok = [s["correct"] for s in res["samples"]]
    assert res["metrics"]["win_rate/chosen"] == sum(0.5 if c else 0.0 for c in ok) / 5  # chosen is right


@pytest.mark.slow
def test_sampled_generations_per_prompt(env, tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    kw = {"reference": str(env["ref"]), "max_new_tokens": 4, "progress": False, "judge": str(env["judge"])}
    a = evaluate(str(env["model"]), str(env["pairs"]), temperature=1.0, samples_per_prompt=3, **kw)
    b = evaluate(str(env["model"]), str(env["pairs"]), temperature=1.0, samples_per_prompt=3, **kw)
    assert all(len(s["model_samples"]) == 3 and len(s["reward"]) == 3 for s in a["samples"])
    assert a["metrics"] == b["metrics"]  # seeded
    assert a["settings"]["temperature"] == 1.0 and a["settings"]["samples_per_prompt"] == 3


@pytest.mark.parametrize(
    "case, message",
    [
        ("causal", "not a sequence-classification reward model (architectures: LlamaForCausalLM)"),
        ("two", "has 2 outputs (num_labels); a reward model scores with one"),
        ("missing", "model not found"),
        ("greedy_samples", "--samples-per-prompt: greedy decoding gives one generation"),
    ],
)
def test_bad_judge_is_one_line_exit_2(env, case, message, capsys, tmp_path):
    judge = {
        "causal": str(env["model"]),
        "two": str(judge_dir(tmp_path / "two", num_labels=2)),
        "missing": str(tmp_path / "nope"),
        "greedy_samples": str(env["judge"]),
    }[case]
    extra = ["--samples-per-prompt", "2"] if case == "greedy_samples" else []
    capsys.readouterr()
    code = cli_main(
        [
            "eval",
            str(env["model"]),
            "--data",
            str(env["pairs"]),
            "--judge",
            judge,
            "--no-progress",
            "--out",
            str(tmp_path / "e.json"),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.slow
def test_cli_eval_with_judge(env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "e.json"
    code = cli_main(
        [
            "eval",
            str(env["model"]),
            "--data",
            str(env["pairs"]),
            "--judge",
            str(env["judge"]),
            "--reference",
            str(env["ref"]),
            "--max-new-tokens",
            "4",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and f"judge: {env['judge']}" in text
    assert "win_rate/chosen" in text and "judge/reward" in text
    assert json.loads(out.read_text())["metrics"]["judge/reward"] is not None
