"""``tether eval``: every metric on tiny models against values computed here, the CLI end to end, and the
bad-input cases (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tether.data as data_mod
import tether.data.tasks as tasks
import tether.engine.models as models
from tether.cli import main as cli_main
from tether.config import from_dict
from tether.engine.logprobs import LogProbModel, collate
from tether.evaluation.evaluate import evaluate, generate, text_metrics, win_rate
from tether.evaluation.metrics import bootstrap_interval
from tether.training.job import train

import tiny
from tiny import pair_rows, sft_rows, tiny_model_dir, write_jsonl

MAX_LEN = 64


def _task_pairs(n: int) -> list[dict]:
    rows = pair_rows(n)
    for r in rows:
        r["source"], r["answer"] = "arithmetic", r["chosen"]
    return rows


def _mc_rows() -> list[dict]:
    return [
        {"prompt": "which is a fruit? a) apple b) chair c) pen", "options": ["a", "b", "c"], "label": 0},
        {"prompt": "2+2=? a) 3 b) 4", "options": ["a", "b"], "label": 1},
        {"prompt": "pick c", "options": ["a", "b", "c"], "label": 2, "source": "choice", "answer": "c"},
        {"prompt": "what is 1+1?", "options": ["2", "11", "3"], "label": 0},
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    e = {
        "root": root,
        "model": tiny_model_dir(root / "model"),
        "model2": tiny_model_dir(root / "model2", seed=1),
    }
    shutil.copytree(e["model"], root / "model_copy")
    e["model_copy"] = root / "model_copy"
    e["corrupt"] = Path(shutil.copytree(e["model"], root / "corrupt"))
    weights = e["corrupt"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a truncated download
    with pytest.MonkeyPatch.context() as mp:  # same architecture, a different vocabulary
        mp.setattr(tiny, "CHARS", tiny.CHARS[::-1])
        e["other_vocab"] = tiny_model_dir(root / "other_vocab", seed=2)
    d = root / "data"
    d.mkdir()
    e["pairs"] = write_jsonl(d / "pairs.jsonl", _task_pairs(8))
    e["sft"] = write_jsonl(d / "sft.jsonl", sft_rows(6))
    e["mc"] = write_jsonl(d / "mc.jsonl", _mc_rows())
    e["empty"] = d / "empty.jsonl"
    e["empty"].write_text("")
    cfg = {
        "model": {"name": str(e["model"])},
        "data": {"train": str(e["pairs"]), "max_length": MAX_LEN},
        "method": {"name": "dpo", "beta": 0.2},
        "reference": {"cache_dir": str(root / "refcache")},
        "train": {
            "output_dir": str(root / "run"),
            "batch_size": 2,
            "max_steps": 2,
            "lr": 1e-2,
            "progress": False,
        },
    }
    e["run"] = train(from_dict(cfg)).run_dir
    lora = {**cfg, "model": {**cfg["model"], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}
    e["lora_run"] = train(
        from_dict({**lora, "train": {**cfg["train"], "output_dir": str(root / "lora")}})
    ).run_dir
    e["no_model_run"] = root / "no_model_run"
    e["no_model_run"].mkdir()
    shutil.copy(e["run"] / "config.yaml", e["no_model_run"] / "config.yaml")
    return e


def _examples(model_dir: Path, path: Path, kind: str) -> list[data_mod.Example]:
    tok = models.load_tokenizer(model_dir)
    return data_mod.tokenize_rows(data_mod.read_rows(str(path)), tok, kind=kind, max_length=MAX_LEN).examples


@torch.no_grad()
def _engine_sums(model_dir: Path, examples) -> torch.Tensor:
    """Summed response log-probs from the engine, one example at a time (no batching shared with eval)."""
    lpm = LogProbModel(models.load_model(model_dir).eval())
    out = []
    for i, e in enumerate(examples):
        b = collate([e], [i], pad_id=0)
        out.append(lpm(b.input_ids, b.attention_mask, b.response_mask).sum)
    return torch.stack(out)  # [n, 1 or 2]


@pytest.mark.slow
def test_pairwise_accuracy_and_deviation_match_the_engine(env):
    beta = 0.3
    res = evaluate(
        str(env["model"]), str(env["pairs"]), reference=str(env["model2"]), beta=beta, generate_text=False,
        progress=False,
    )  # fmt: skip
    ex = _examples(env["model"], env["pairs"], "pairs")
    pol, ref = _engine_sums(env["model"], ex), _engine_sums(env["model2"], ex)
    n_w = torch.tensor([float(len(e.chosen_ids)) for e in ex])
    n_l = torch.tensor([float(len(e.rejected_ids)) for e in ex])
    margin = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    m = res["metrics"]
    assert res["metric_groups"] == ["pairwise", "deviation"]
    assert m["pairwise/kind"] == "reward"  # a plain model with another reference: reward margins
    assert m["pairwise/accuracy"] == pytest.approx(float((margin > 0).float().mean()))
    assert m["pairwise/margin"] == pytest.approx(float(margin.mean()), abs=1e-5)
    lik = pol[:, 0] / n_w - pol[:, 1] / n_l
    assert m["pairwise/likelihood_accuracy"] == pytest.approx(float((lik > 0).float().mean()))
    ref_lik = ref[:, 0] / n_w - ref[:, 1] / n_l
    assert res["reference_metrics"]["pairwise/likelihood_accuracy"] == pytest.approx(
        float((ref_lik > 0).float().mean())
    )
    assert m["deviation"] == pytest.approx(float(((pol[:, 0] - ref[:, 0]) / n_w).mean()), abs=1e-5)
    assert m["deviation/rejected"] == pytest.approx(float(((pol[:, 1] - ref[:, 1]) / n_l).mean()), abs=1e-5)


@pytest.mark.slow
def test_mc_accuracy_matches_option_loglikelihoods(env):
    res = evaluate(
        str(env["model"]), str(env["mc"]), reference=str(env["model2"]), metrics="mc", progress=False
    )
    tok = models.load_tokenizer(env["model"])
    for key, model_dir in (("metrics", env["model"]), ("reference_metrics", env["model2"])):
        correct = 0
        for row in _mc_rows():
            rows = [data_mod.Row("x", 1, {"prompt": row["prompt"], "completion": o}) for o in row["options"]]
            ex = data_mod.tokenize_rows(rows, tok, kind="sft", max_length=MAX_LEN).examples
            scores = _engine_sums(model_dir, ex)[:, 0]
            correct += int(int(scores.argmax()) == row["label"])
        assert res[key]["mc/accuracy"] == pytest.approx(correct / 4)


def test_kl_and_deviation_zero_when_model_is_reference(env):
    # A copy in another directory: loaded twice, scored by two separate models.
    res = evaluate(
        str(env["model"]), str(env["sft"]), reference=str(env["model_copy"]), metrics="kl,deviation",
        max_samples=3, kl_samples=2, max_new_tokens=6, progress=False,
    )  # fmt: skip
    assert not res["reference_is_model"]
    assert res["metrics"]["kl/samples"] == 6
    assert res["metrics"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert res["metrics"]["deviation"] == pytest.approx(0.0, abs=1e-5)
    other = evaluate(
        str(env["model"]), str(env["sft"]), reference=str(env["model2"]), metrics="kl", max_samples=3,
        kl_samples=2, max_new_tokens=6, progress=False,
    )  # fmt: skip
    assert other["metrics"]["kl"] > 0.0  # KL between two random models, on π's own samples
    itself = evaluate(
        str(env["model"]), str(env["sft"]), metrics="kl", max_samples=2, max_new_tokens=4, progress=False
    )
    assert itself["reference_is_model"] and itself["metrics"]["kl"] == 0.0
    assert any("the model itself" in n for n in itself["notes"])


def test_batched_left_padded_generation_equals_one_at_a_time(env):
    model = models.load_model(env["model"]).eval()
    tok = models.load_tokenizer(env["model"])
    prompts = [p.prompt_ids for p in _examples(env["model"], env["sft"], "sft")]
    assert len({len(p) for p in prompts}) > 1  # different lengths: real left padding
    batched = [[d.ids for d in g] for g in generate(model, tok, prompts, max_new_tokens=8, batch_size=6)]
    single = [[d.ids for d in g] for g in generate(model, tok, prompts, max_new_tokens=8, batch_size=1)]
    assert batched == single
    assert all(len(g[0]) <= 8 for g in batched)
    for g in batched:  # cut right after the first EOS
        assert tok.eos_token_id not in g[0][:-1]


def test_generation_success_win_rate_and_text_metrics(env):
    res = evaluate(
        str(env["model"]), str(env["pairs"]), reference=str(env["model2"]), metrics="generation",
        max_samples=5, max_new_tokens=6, progress=False,
    )  # fmt: skip
    samples = res["samples"]
    assert len(samples) == 5 and res["n_generation_prompts"] == 5
    rows = {json.dumps(r["prompt"]): r for r in _task_pairs(8)}
    model_ok = [tasks.check(rows[json.dumps(s["prompt"])], s["model"]) for s in samples]
    ref_ok = [tasks.check(rows[json.dumps(s["prompt"])], s["reference"]) for s in samples]
    m = res["metrics"]
    assert m["generation/success"] == pytest.approx(sum(model_ok) / 5)
    assert m["generation/success/arithmetic"] == m["generation/success"]
    assert (m["generation/success/ci_low"], m["generation/success/ci_high"]) == bootstrap_interval(
        [float(x) for x in model_ok]
    )  # over prompts, seeded by the evaluation's seed (0)
    assert res["reference_metrics"]["generation/success"] == pytest.approx(sum(ref_ok) / 5)
    assert m["win_rate"] == win_rate(model_ok, ref_ok)["win_rate"]
    assert m["win/wins"] + m["win/ties"] + m["win/losses"] == 5
    expected = text_metrics([s["model"] for s in samples], [s["target"] for s in samples])
    for k in ("bleu", "rouge1", "rouge2", "rougeL"):
        assert m[k] == pytest.approx(expected[k])


def test_win_rate_arithmetic():
    r = win_rate([True, True, False, False, True], [False, True, True, False, False])
    assert (r["wins"], r["ties"], r["losses"]) == (2, 2, 1)
    assert r["win_rate"] == pytest.approx((2 + 0.5 * 2) / 5)
    assert win_rate([True] * 3, [True] * 3)["win_rate"] == 0.5
    assert win_rate([False, False], [True, True])["win_rate"] == 0.0
    assert win_rate([], [])["win_rate"] is None


def test_text_metrics_on_given_strings():
    refs = ["the cat sat on the mat", "a quick brown fox jumps", "42", "helmet-basket"]
    same = text_metrics(refs, refs)
    assert same["bleu"] == pytest.approx(100.0)
    assert same["rouge1"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    # rouge2 of a one-word answer has no bigram: rouge-score gives 0 there.
    long_refs = refs[:2]
    assert text_metrics(long_refs, long_refs)["rouge2"] == pytest.approx(1.0)
    disjoint = text_metrics(["zzz yyy xxx www vvv"] * 2, long_refs)
    assert disjoint["bleu"] == pytest.approx(0.0) and disjoint["rouge1"] == 0.0
    import sacrebleu
    from rouge_score import rouge_scorer

    gens = ["the cat sat on a mat", "a slow brown fox jumped"]
    got = text_metrics(gens, long_refs)
    assert got["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(gens, [long_refs], use_effective_order=True).score
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expect = sum(scorer.score(r, g)["rougeL"].fmeasure for g, r in zip(gens, long_refs, strict=True)) / 2
    assert got["rougeL"] == pytest.approx(expect)


def test_run_dir_defaults_and_lora_run(env):
    res = evaluate(str(env["run"]), str(env["pairs"]), generate_text=False, progress=False)
    assert res["reference"] == str(env["model"])  # the run's starting model
    assert res["settings"]["beta"] == 0.2 and res["method"] == "dpo"
    assert res["metrics"]["pairwise/kind"] == "reward"
    assert res["settings"]["max_length"] == MAX_LEN
    lora = evaluate(str(env["lora_run"]), str(env["pairs"]), metrics="deviation", progress=False)
    assert lora["adapter"] == str(env["lora_run"] / "final")
    assert lora["model_path"] == str(env["model"]) and abs(lora["metrics"]["deviation"]) > 0


@pytest.mark.slow
def test_reference_cache_reuses_logps_and_generations(env, monkeypatch, tmp_path):
    import tether.evaluation.generation as ev_mod  # what generates, for both models

    cache = tmp_path / "cache"
    monkeypatch.setenv("TETHER_CACHE", str(cache))
    kw = {"reference": str(env["model"]), "max_samples": 3, "max_new_tokens": 4, "progress": False}
    model, pairs = str(env["model2"]), str(env["pairs"])
    first = evaluate(model, pairs, **kw)
    assert first["reference_cache"] == {"log-probs": "miss", "generating": "miss"}
    assert len(list((cache / "generations").glob("*.json"))) == 1
    calls: list[str] = []
    real = ev_mod.generate

    def spy(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ev_mod, "generate", spy)
    second = evaluate(model, pairs, **kw)
    assert second["reference_cache"] == {"log-probs": "hit", "generating": "hit"}
    assert calls == ["generating (model)", "sampling for KL"]  # the reference generated nothing
    assert second["metrics"] == first["metrics"]
    assert second["reference_metrics"] == first["reference_metrics"]
    assert [x["reference"] for x in second["samples"]] == [x["reference"] for x in first["samples"]]

    calls.clear()
    fresh = evaluate(model, pairs, cache=False, **kw)
    assert fresh["reference_cache"] == {} and "generating (reference)" in calls
    assert [x["reference"] for x in fresh["samples"]] == [x["reference"] for x in first["samples"]]
    for k, v in first["metrics"].items():
        assert fresh["metrics"][k] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v), k

    for f in [*cache.glob("reflogps/*.pt"), *cache.glob("generations/*.json")]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # torn by a kill: recomputed, not a crash
    torn = evaluate(model, pairs, **kw)
    assert torn["reference_cache"] == {"log-probs": "miss", "generating": "miss"}
    assert torn["metrics"] == first["metrics"]

    batch = evaluate(model, pairs, **{**kw, "batch_size": 2})  # other batching: its own generations
    assert batch["reference_cache"] == {"log-probs": "hit", "generating": "miss"}
    other = evaluate(str(env["model"]), pairs, **{**kw, "reference": str(env["model2"])})
    assert other["reference_cache"] == {"log-probs": "miss", "generating": "miss"}  # other weights
    evaluate(str(env["run"]), pairs, max_samples=2, max_new_tokens=3, progress=False)
    assert list((env["root"] / "refcache" / "generations").glob("*.json"))  # the run's reference.cache_dir


FLAGS = ["--max-samples", "3", "--max-new-tokens", "4", "--no-progress", "--lm-eval-tasks", "arc_easy"]


@pytest.mark.slow
def test_cli_end_to_end(env):
    proc = subprocess.run(
        [sys.executable, "-m", "tether.cli", "eval", str(env["run"]), "--data", str(env["pairs"]), *FLAGS],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((env["run"] / "eval.json").read_text())
    assert out["metrics"]["kl/samples"] == 3 and out["n_rows"] == 8
    for key in ("pairwise/accuracy", "deviation", "generation/success", "win_rate", "bleu", "rougeL", "kl"):
        assert key in out["metrics"]
        assert any(line.startswith(key + " ") for line in proc.stdout.splitlines())
    assert proc.stdout.splitlines()[3].split() == ["metric", "model", "reference"]
    assert any(n.startswith("lm-eval: skipped") for n in out["notes"])
    assert "note: lm-eval: skipped" in proc.stdout


BAD = {
    "run_without_model": (lambda e: [str(e["no_model_run"]), "--data", str(e["pairs"])], "has no model"),
    "mc_on_pairs": (
        lambda e: [str(e["model"]), "--data", str(e["pairs"]), "--metrics", "mc"],
        "multiple-choice",
    ),
    "pairwise_on_sft": (
        lambda e: [str(e["model"]), "--data", str(e["sft"]), "--metrics", "pairwise"],
        "pairs",
    ),
    "unknown_metric": (
        lambda e: [str(e["model"]), "--data", str(e["pairs"]), "--metrics", "klx"],
        "did you mean",
    ),
    "other_tokenizer": (
        lambda e: [str(e["model"]), "--data", str(e["pairs"]), "--reference", str(e["other_vocab"])],
        "different tokenizer",
    ),
    "empty_data": (lambda e: [str(e["model"]), "--data", str(e["empty"])], "no rows"),
    "missing_data": (lambda e: [str(e["model"]), "--data", str(e["root"] / "nope.jsonl")], "not found"),
    "missing_model": (lambda e: [str(e["root"] / "nope"), "--data", str(e["pairs"])], "not found"),
    "corrupt_weights": (lambda e: [str(e["corrupt"]), "--data", str(e["pairs"])], "cannot load model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(env, case, capsys):
    argv, words = BAD[case]
    rc = cli_main(["eval", *argv(env), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and words in err, err


@pytest.mark.slow
def test_kto_run_evaluates_pairwise_accuracy_of_its_implicit_reward(env):
    """A KTO run (trained on pairs, split, with held-out pairs evaluated during training): ``tether eval``
    on held-out pairs measures the accuracy and margin of β·(r_w − r_l) with the run's β, r against the
    run's starting model, as for DPO."""
    root, beta = env["root"], 0.3
    cfg = {
        "model": {"name": str(env["model"])},
        "data": {"train": str(env["pairs"]), "eval": str(env["pairs"]), "max_length": MAX_LEN},
        "method": {"name": "kto", "beta": beta},
        "reference": {"cache_dir": str(root / "refcache")},
        "train": {"output_dir": str(root / "kto_run"), "batch_size": 4, "max_steps": 2, "lr": 3e-2, "progress": False},
    }  # fmt: skip
    run = train(from_dict(cfg))
    assert {"eval/loss", "eval/kto/z", "eval/rewards/chosen", "eval/rewards/rejected"} <= set(
        run.eval_metrics
    )
    res = evaluate(str(run.run_dir), str(env["pairs"]), generate_text=False, progress=False)
    assert res["method"] == "kto" and res["settings"]["beta"] == beta
    ex = _examples(env["model"], env["pairs"], "pairs")
    pol, ref = _engine_sums(run.final_model_dir, ex), _engine_sums(env["model"], ex)
    margin = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    assert margin.abs().max() > 0  # the run moved
    m = res["metrics"]
    assert m["pairwise/kind"] == "reward"
    assert m["pairwise/accuracy"] == pytest.approx(float((margin > 0).float().mean()))
    assert m["pairwise/margin"] == pytest.approx(float(margin.mean()), abs=1e-5)


def test_bootstrap_interval_of_a_mean():
    """Constant values: the interval is the value; half ones: about ±1.96 standard errors (0.05 here)."""
    assert bootstrap_interval([0.25] * 30) == (0.25, 0.25)
    low, high = bootstrap_interval([0.0] * 50 + [1.0] * 50, seed=3, n_boot=4000)
    assert low == pytest.approx(0.402, abs=0.015) and high == pytest.approx(0.598, abs=0.015)
    assert bootstrap_interval([0.0, 1.0, 1.0], seed=5) == bootstrap_interval([0.0, 1.0, 1.0], seed=5)
