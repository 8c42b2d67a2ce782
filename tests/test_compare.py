"""``tether compare``: McNemar's exact p, the paired bootstrap and the length-controlled win rate against
values computed by hand; per-prompt outcomes that agree with eval.json's numbers; the refusals of runs
not evaluated alike (one line, exit 2, nothing written); two tiny runs evaluated with ``tether eval``
and compared end to end, and ``tether sweep --baseline``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_judge import judge_dir

from tether.cli import main as cli_main
from tether.config import from_dict
from tether.eval_result import PromptOutcome
from tether.evaluation.compare import Evaluated, compare, mcnemar, paired, paired_bootstrap
from tether.evaluation.metrics import length_controlled_win_rate
from tether.training.job import train

from tiny import pair_rows, write_jsonl

PAIRS = 8
EVAL = ["--max-new-tokens", "4", "--temperature", "1", "--samples-per-prompt", "2", "--kl-samples", "2"]


# ------------------------------------------------------------------------------------ by hand
def test_mcnemar_exact_p_by_hand():
    """Discordant 8 (the run right, the first wrong) against 2: under H0 each discordant pair is a fair
    coin, so p = 2·P(X ≤ 2), X ~ Bin(10, ½) = 2·(1 + 10 + 45)/1024 = 112/1024. Concordant pairs (5 both
    right, 5 both wrong) do not enter."""
    first = [0.0] * 8 + [1.0] * 2 + [1.0] * 5 + [0.0] * 5
    run = [1.0] * 8 + [0.0] * 2 + [1.0] * 5 + [0.0] * 5
    assert mcnemar(first, run) == (112 / 1024, 8, 2)
    assert mcnemar(run, first) == (112 / 1024, 2, 8)  # symmetric p, counts swapped
    assert mcnemar([1.0, 0.0], [1.0, 0.0]) == (1.0, 0, 0)  # no discordant pair
    assert mcnemar([0.0] * 6, [1.0] * 6)[0] == pytest.approx(2 / 64)  # 6 vs 0: 2·(½)^6


def test_paired_bootstrap_with_a_fixed_seed():
    """The interval is the 2.5th and 97.5th percentiles of the mean difference over resamplings of the
    prompts drawn here with the same generator (the pairs stay together); a constant difference is its
    own interval."""
    first = np.array([0.2, 0.5, 0.1, 0.9, 0.4, 0.3, 0.8, 0.6])
    run = first + np.array([0.1, 0.3, -0.2, 0.0, 0.25, 0.1, 0.05, 0.4])
    idx = np.random.default_rng(11).integers(0, 8, size=(500, 8))
    means = (run - first)[idx].mean(axis=1)
    by_hand = np.percentile(means, [2.5, 97.5])
    got = paired_bootstrap(list(first), list(run), seed=11, n_boot=500)
    assert got == pytest.approx(tuple(by_hand), abs=1e-12)
    assert paired_bootstrap(list(first), list(run), seed=11, n_boot=500) == got  # fixed by its seed
    assert paired_bootstrap(list(first), list(run), seed=12, n_boot=500) != got
    assert paired_bootstrap([0.0, 1.0, 0.5], [0.25, 1.25, 0.75]) == pytest.approx((0.25, 0.25))


def test_one_shared_prompt_is_its_own_interval():
    """With one prompt every resample is that prompt: the interval is the difference itself."""

    def one(success: float, win: float) -> list[PromptOutcome]:
        return [
            PromptOutcome(
                "f", 1, "x", success=success, win_chosen_samples=[win], length_samples=[3], chosen_length=2
            )
        ]

    first, run = Evaluated("a", None, one(0.0, 0.0)), Evaluated("b", None, one(1.0, 1.0))  # type: ignore[arg-type]
    row = paired(first, run, "success")
    assert (row.difference, row.ci_low, row.ci_high, row.mcnemar_p, row.run_only) == (1.0, 1.0, 1.0, 1.0, 1)
    row = paired(first, run, "win_rate/chosen/lc")
    assert (row.first_value, row.value, row.ci_low, row.ci_high) == (0.0, 1.0, 1.0, 1.0)


def test_a_prompt_given_twice_is_paired_occurrence_by_occurrence():
    """Prompt ``a`` twice: its first occurrence in one run is paired with its first in the other, never
    both with one (the first run a:0, a:1, b:1; the other a:1, a:0, b:1: one discordant pair each way)."""

    def run(name: str, outcomes: list[tuple[str, float]]) -> Evaluated:
        return Evaluated(
            name, None, [PromptOutcome("f", i, k, success=s) for i, (k, s) in enumerate(outcomes)]
        )  # type: ignore[arg-type]

    first = run("first", [("a", 0.0), ("a", 1.0), ("b", 1.0)])
    other = run("other", [("a", 1.0), ("a", 0.0), ("b", 1.0)])
    row = paired(first, other, "success")
    assert (row.n, row.value, row.run_only, row.first_only) == (3, pytest.approx(2 / 3), 1, 1)


def test_length_controlled_win_rate_is_none_when_length_separates_the_outcomes():
    """Every longer answer wins, every shorter one loses: the maximum-likelihood fit runs off to infinity,
    so no LC win rate exists (not the number an optimizer's bound or tolerance would pick)."""
    assert length_controlled_win_rate([1.0, 0.0, 0.0, 0.0], [40, 10, 12, 11], [20] * 4) is None
    assert length_controlled_win_rate([1.0, 1.0, 0.5], [1, 2, 3], [2] * 3) is None  # quasi-separation
    assert length_controlled_win_rate([0.5, 0.5, 0.5], [1, 2, 3], [2] * 3) == pytest.approx(0.5)
    mixed = length_controlled_win_rate([1.0, 0.0, 1.0, 0.0, 0.5, 1.0], [40, 10, 12, 11, 20, 30], [20] * 6)
    assert mixed is not None and 0 < mixed < 1


def test_length_controlled_win_rate_when_length_explains_the_wins():
    """Preferences generated exactly by the GLM logit P(win) = θ + φ·tanh(δ/sd(δ)), δ = baseline length −
    output length: the fit recovers θ, and the LC win rate is σ(θ). With θ = 0 (as good as the baseline
    at equal length) and φ = −2 (longer wins), the raw win rate is above ½ — the outputs are longer —
    but the LC win rate is ½; with θ = ln 3 it is σ(ln 3) = 3/4."""
    lengths = np.array([120, 80, 200, 50, 150, 90, 300, 60, 170, 130], dtype=float)
    baseline = np.full(10, 100.0)
    x = np.tanh((baseline - lengths) / (baseline - lengths).std(ddof=1))
    for theta, lc in ((0.0, 0.5), (math.log(3), 0.75)):
        prefs = 1 / (1 + np.exp(-(theta - 2 * x)))
        assert length_controlled_win_rate(prefs, lengths, baseline) == pytest.approx(lc, abs=1e-6)
        assert prefs.mean() > lc + 0.01  # the raw win rate credits length
    assert length_controlled_win_rate([1.0, 1.0], [5, 9], [3, 3]) == 1.0
    assert length_controlled_win_rate([0.0, 0.0], [5, 9], [3, 3]) == 0.0
    # no spread in the length difference: nothing to control for, the raw win rate
    assert length_controlled_win_rate([1.0, 0.0, 0.5, 1.0], [4] * 4, [3] * 4) == pytest.approx(0.625)
    assert length_controlled_win_rate([], [], []) is None


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def env(setup):
    """Two tiny DPO runs (different β) from the setup model, each evaluated with ``tether eval`` (sampled,
    two samples per prompt, judged by a tiny reward model) on rows with a task checker."""
    root, model, _ = setup
    rows = pair_rows(PAIRS)
    for r in rows:
        r["source"], r["answer"] = "arithmetic", r["chosen"]
    data = write_jsonl(root / "tasks.jsonl", rows)
    judge = judge_dir(root / "judge")
    runs = {}
    for name, beta in (("a", 0.1), ("b", 0.5)):
        cfg = {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_length": 48},
            "method": {"name": "dpo", "beta": beta},
            "reference": {"cache_dir": str(root / "cache")},
            "train": {"output_dir": str(root / name), "batch_size": 2, "max_steps": 2, "lr": 5e-2, "progress": False},
        }  # fmt: skip
        runs[name] = train(from_dict(cfg)).run_dir
        argv = [str(runs[name]), "--data", str(data), "--judge", str(judge), *EVAL, "--no-progress"]
        assert cli_main(["eval", *argv]) == 0
    return {"root": root, "model": model, "data": data, "judge": judge, **runs}


def _outcomes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval_prompts.jsonl").read_text().splitlines()]


def test_per_prompt_outcomes_agree_with_eval_json(env):
    """The means of the per-prompt outcomes are eval.json's numbers; the LC win rate is the GLM on the
    outcomes' samples; eval.json records the outcomes' count and hash."""
    ev = json.loads((env["b"] / "eval.json").read_text())
    rows, m = _outcomes(env["b"]), ev["metrics"]
    assert len(rows) == PAIRS == ev["prompt_outcomes"]["rows"] and len({r["id"] for r in rows}) == PAIRS
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean("success") == pytest.approx(m["generation/success"])
    assert mean("win_chosen") == pytest.approx(m["win_rate/chosen"])
    assert mean("win_reference") == pytest.approx(m["win_rate"])
    assert mean("kl") == pytest.approx(m["kl"], abs=1e-5)
    scores = [s for smp in ev["samples"] for s in smp["reward"]]
    assert mean("judge") == pytest.approx(m["judge/reward"]) and len(scores) == 2 * PAIRS
    for r, smp in zip(rows, ev["samples"], strict=True):
        assert r["length_samples"] == [len(t) for t in smp["model_samples"]]
        assert r["chosen_length"] == len(smp["target"])
        wins = [
            1.0 if s > smp["target_reward"] else 0.5 if s == smp["target_reward"] else 0.0
            for s in smp["reward"]
        ]
        assert r["win_chosen_samples"] == wins
    flat = lambda k: [x for r in rows for x in r[k]]  # noqa: E731
    chosen = [r["chosen_length"] for r in rows for _ in r["length_samples"]]
    lc = length_controlled_win_rate(flat("win_chosen_samples"), flat("length_samples"), chosen)
    assert m["win_rate/chosen/lc"] == pytest.approx(lc)


def test_compare_runs_end_to_end(env, capsys):
    """``tether compare A B --json``: the paired difference and interval recomputed from the two runs'
    outcome files; the table on stdout."""
    a, b = _outcomes(env["a"]), _outcomes(env["b"])
    for metric, field in (("success", "success"), ("judge/reward", "judge"), ("kl", "kl")):
        capsys.readouterr()
        assert (
            cli_main(["compare", str(env["a"]), str(env["b"]), "--metric", metric, "--json", "--seed", "3"])
            == 0
        )
        (row,) = json.loads(capsys.readouterr().out)
        x, y = [r[field] for r in a], [r[field] for r in b]
        assert row["n"] == PAIRS and row["metric"] == metric
        assert row["difference"] == pytest.approx(sum(y) / PAIRS - sum(x) / PAIRS)
        assert (row["ci_low"], row["ci_high"]) == paired_bootstrap(x, y, seed=3)
        assert row["ci_low"] <= row["difference"] + 1e-12 and row["difference"] <= row["ci_high"] + 1e-12
    capsys.readouterr()
    lc = ["compare", str(env["a"]), str(env["b"]), "--metric", "win_rate/chosen/lc", "--json"]
    assert cli_main(lc) == 0
    (row,) = json.loads(capsys.readouterr().out)
    ev = lambda r: json.loads((env[r] / "eval.json").read_text())["metrics"]["win_rate/chosen/lc"]  # noqa: E731
    assert row["value"] == pytest.approx(ev("b")) and row["first_value"] == pytest.approx(ev("a"))
    assert row["difference"] == pytest.approx(ev("b") - ev("a")) and row["ci_low"] <= row["ci_high"]
    (same,) = compare([env["a"], env["a"]], "win_rate/chosen/lc", n_boot=20)  # a run against itself
    assert same.difference == 0.0 and same.ci_low == same.ci_high == 0.0
    capsys.readouterr()
    assert cli_main(["compare", str(env["a"]), str(env["b"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("metric: success") and lines[2].split()[:5] == [
        "run",
        "n",
        "value",
        "first_value",
        "difference",
    ]
    assert lines[4].split()[0] == str(env["b"])


def _copy(env, name: str) -> Path:
    dst = env["root"] / "copies" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(env["a"], dst, ignore=shutil.ignore_patterns("checkpoints", "final"))
    return dst


def _edit_eval(run: Path, edit) -> None:
    data = json.loads((run / "eval.json").read_text())
    edit(data)
    (run / "eval.json").write_text(json.dumps(data, indent=1))


def _reevaluate(run: Path, *flags: str) -> None:
    """The run evaluated again, into the copy, with other flags (a real evaluation)."""
    env = _ENV[0]
    argv = [str(env["a"]), "--data", str(env["data"]), "--judge", str(env["judge"]), *EVAL, *flags]
    assert cli_main(["eval", *argv, "--out", str(run / "eval.json"), "--no-progress"]) == 0


_ENV: list[dict] = []


def _settings(key, value):
    return lambda d: d["settings"].update({key: value})


REFUSALS = {
    "never_evaluated": (lambda run: (run / "eval.json").unlink(), [], "never evaluated (no eval.json)"),
    "before_outcomes": (
        lambda run: _edit_eval(run, lambda d: d.pop("prompt_outcomes")),
        [],
        "rerun tether eval",
    ),
    "outcomes_changed": (
        lambda run: (run / "eval_prompts.jsonl").write_text(
            (run / "eval_prompts.jsonl").read_text().replace('"kl": ', '"kl": 1')
        ),
        [],
        "rerun tether eval",
    ),
    "other_prompts": (
        lambda run: _reevaluate(run, "--max-samples", "5"),
        [],
        "evaluated on different prompts",
    ),
    "other_temperature": (lambda run: _edit_eval(run, _settings("temperature", 0.7)), [], "temperature=0.7"),
    "other_length": (lambda run: _edit_eval(run, _settings("max_new_tokens", 8)), [], "max_new_tokens=8"),
    "other_judge": (
        lambda run: _edit_eval(run, lambda d: (d.update(judge="task checker"), d.pop("judge_fingerprint"))),
        [],
        "same judge",
    ),
    "judge_retrained": (  # the same path, other weights
        lambda run: _edit_eval(run, lambda d: d.update(judge_fingerprint="0" * 16)),
        [],
        "same judge",
    ),
    "other_dtype": (lambda run: _edit_eval(run, _settings("dtype", "bfloat16")), [], "dtype=bfloat16"),
    "negative_seed": (lambda run: None, ["--seed", "-1"], "--seed: must be ≥ 0"),
    "other_reference": (
        lambda run: _edit_eval(run, lambda d: d.update(reference_path="/elsewhere")),
        ["--metric", "kl"],
        "relative to the reference",
    ),
    "unknown_metric": (lambda run: None, ["--metric", "judge/rewrd"], "did you mean 'judge/reward'"),
    "one_run": (lambda run: None, ["--only-one"], "at least two runs"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refuses_runs_not_evaluated_alike(env, case, capsys):
    """One line naming the run and what differs, exit 2, nothing written."""
    change, extra, words = REFUSALS[case]
    _ENV[:] = [env]
    other = _copy(env, case)
    change(other)
    capsys.readouterr()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in env["root"].rglob("*"))
    runs = [str(env["a"])] if extra == ["--only-one"] else [str(env["a"]), str(other)]
    rc = cli_main(["compare", *runs, *[e for e in extra if e != "--only-one"]])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in env["root"].rglob("*")) == before


def test_the_other_run_is_named_first_against_the_first(env):
    """The rows name each run and the first; a run compared with itself has no discordant pair."""
    (row,) = compare([env["a"], env["a"]], "success")
    assert row.run == row.first == str(env["a"]) and row.difference == 0.0
    assert row.mcnemar_p in (None, 1.0)


def test_sweep_names_a_baseline_point(env, capsys):
    """``tether sweep --baseline POINT``: each other point's paired comparison columns in the table, equal
    to ``tether compare``'s; an unknown point is one line (closest name) before anything runs."""
    root = env["root"]
    base = root / "sweep.yaml"
    base.write_text(json.dumps({
        "model": {"name": str(env["model"])}, "data": {"train": str(env["data"]), "max_length": 48},
        "method": {"name": "dpo"}, "reference": {"cache_dir": str(root / "cache")},
        "train": {"output_dir": str(root / "sweep"), "batch_size": 2, "max_steps": 1, "progress": False},
    }))  # fmt: skip
    argv = ["sweep", str(base), "--grid", "method.beta=0.1,0.5", "--data-eval", str(env["data"])]
    flags = ["--max-new-tokens", "3", "--no-progress"]
    assert cli_main([*argv, *flags, "--baseline", "beta=0.10"]) == 2
    assert "did you mean 'beta=0.1'" in capsys.readouterr().err and not (root / "sweep").exists()
    assert cli_main([*argv, *flags, "--baseline", "beta=0.1"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("run "))
    cols = header.split()
    assert cols[cols.index("against") :][:7] == [
        "against",
        *"difference ci_low ci_high mcnemar_p run_only first_only".split(),
    ]
    (row,) = compare([root / "sweep" / "beta=0.1", root / "sweep" / "beta=0.5"])
    line = next(ln for ln in out.splitlines() if ln.startswith("beta=0.5")).split()
    at = cols.index("against")
    assert line[at : at + 4] == [
        "success",
        f"{row.difference:.4f}",
        f"{row.ci_low:.4f}",
        f"{row.ci_high:.4f}",
    ]
    assert "difference" in (root / "sweep" / "table.md").read_text()
