"""benchmarks/protocol_study.py's bookkeeping (issue 27): sDPO's easy → hard split, the pair sets' counts, which
run each run is compared with, and the tables rendered from results.json. The training and evaluation it
drives are tether's own commands, tested elsewhere; on a tiny random model the task checker ties every
sample, so no pair set could be built here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tiny import benchmark_module

study = benchmark_module("protocol_study")


def _args(runs: Path, **kw) -> argparse.Namespace:
    base = dict(runs=str(runs), samples=8, lrs=["1e-06", "2e-06"], ref_free_lrs=["5e-06"], model="m",
                dtype="float32", start_lr="2e-05", steps=8, batch_size=4, quiet=True, heldout=600,
                max_new_tokens=16, record="", collect=None)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def _pairs(path: Path, scores: list[list[float]]) -> None:
    rows = [
        {"prompt": f"What is {i} + 0? Answer with just the number.", "source": "arithmetic", "answer": str(i),
         "chosen": str(i), "rejected": str(i + 1), "provenance": {"scores": s}}
        for i, s in enumerate(scores)
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {
        "judge": "tasks",
        "samples": len(scores[0]),
        "counts": {"prompts": 9, "pairs": len(rows), "tied": 9 - len(rows)},
        "model_weights": "0123456789abcdef" * 4,
    }
    path.with_suffix(".meta.json").write_text(json.dumps(meta))


def test_sdpo_split_puts_the_prompts_the_start_solves_most_first(tmp_path):
    args = _args(tmp_path)
    p = study.paths(args)
    _pairs(p["task_pairs"], [[1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    study.part_staged_data(args)
    rows = [json.loads(line) for line in p["staged_pairs"].read_text().splitlines()]
    assert [r["difficulty"] for r in rows] == ["hard", "easy", "hard", "hard", "easy"]  # ties in file order
    assert [r["chosen"] for r in rows] == ["0", "1", "2", "3", "4"]  # the file's order and rows kept
    cfg = {s.name: s.base for s in study.sweeps(args)["sdpo"]}
    assert cfg["sdpo_easy_hard"]["stages"] == {
        "by": "column",
        "column": "difficulty",
        "order": ["easy", "hard"],
    }
    assert cfg["sdpo_random"]["stages"]["by"] == "random"
    assert all(
        c["train"]["max_steps"] * 2 == args.steps for c in cfg.values()
    )  # two stages = one-shot's steps


def test_pair_set_counts_and_the_checker_agreement(tmp_path):
    path = tmp_path / "pairs" / "reward_k4.jsonl"
    _pairs(path, [[0.3, 0.1, 0.2, 0.0]] * 3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["chosen"], rows[1]["rejected"] = rows[1]["rejected"], rows[1]["chosen"]  # the judge got it wrong
    rows[2]["rejected"] = rows[2]["chosen"]  # the checker cannot tell these apart
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = study.pair_set(path)
    assert got["by_family"] == {"arithmetic": 3}
    assert (got["checker_agrees"], got["checker_apart"]) == (1, 2)
    assert got["counts"]["pairs"] == 3 and got["samples"] == 4
    assert got["start"] == "0123456789abcdef" and got["sha256"] == study.sha256(path)


def _row(sweep: str, method: str, lr: float, seed: int = 0, beta: float | None = 0.1, pairs="tasks_k8.jsonl"):
    return {"sweep": sweep, "run": f"{method}_{lr}_{seed}_{beta}", "method": method, "lr": lr, "seed": seed,
            "beta": beta, "pairs": pairs, "metrics": {}}  # fmt: skip


def test_each_run_is_compared_with_the_right_baseline():
    dpo, dpo_lr2 = _row("table", "dpo", 1e-6), _row("table", "dpo", 2e-6)
    dpo_b001 = _row("frontier_dpo", "dpo", 1e-6, beta=0.01)  # before the table's DPO in the plan's order
    dpo_b05 = _row("frontier_dpo", "dpo", 1e-6, beta=0.5)
    pilot_dpo = _row("pilot", "dpo", 1e-6)  # the same config as the table's DPO
    dpo_s1 = _row("seeds", "dpo", 1e-6, seed=1)
    judged_dpo = _row("judged", "dpo", 1e-6, pairs="reward_k8.jsonl")
    sft, minor = _row("minorsft", "sft", 2e-5, beta=None), _row("minorsft", "minor_sft", 2e-5, beta=None)
    minor_s1 = _row("minorsft", "minor_sft", 2e-5, seed=1, beta=None)
    rows = [pilot_dpo, dpo_b001, dpo_b05, dpo, dpo_lr2, dpo_s1, judged_dpo, sft, minor, minor_s1]
    assert study.baseline(rows, dpo) is None
    assert study.baseline(rows, _row("table", "ipo", 2e-6)) is dpo_lr2
    assert study.baseline(rows, _row("frontier_epsilon_dpo", "epsilon_dpo", 1e-6, beta=0.5)) is dpo_b05
    # outside the frontier: DPO at its default β (0.1), the table's own run before the pilot's copy
    assert study.baseline(rows, _row("table", "epsilon_dpo", 1e-6, beta=0.01)) is dpo
    assert study.baseline(rows, _row("table", "simpo", 1e-6, beta=2.0)) is dpo
    assert study.baseline(rows, _row("table", "rrhf", 1e-6, beta=None)) is dpo
    assert study.baseline(rows, _row("seeds", "orpo", 1e-6, seed=1)) is dpo_s1
    assert study.baseline(rows, _row("judged", "epsilon_dpo", 1e-6, pairs="reward_k8.jsonl")) is judged_dpo
    assert study.baseline(rows, _row("sdpo_easy_hard", "dpo", 1e-6)) is dpo  # sDPO against one-shot DPO
    assert study.baseline(rows, minor) is sft
    small = _row("sft_small_step", "sft", 1.5e-5, seed=1, beta=None)
    assert study.baseline(rows, small) is minor_s1  # the small-step control against MinorSFT, same seed
    assert study.baseline(rows, _row("table", "kto", 5e-6)) is None  # no DPO at that lr
    easy, rnd = _row("sdpo_easy_hard", "dpo", 1e-6, seed=1), _row("sdpo_random", "dpo", 1e-6, seed=1)
    assert study.against([*rows, easy, rnd], easy) == {"baseline": dpo_s1, "random split": rnd}
    assert study.against([*rows, easy, rnd], rnd) == {"baseline": dpo_s1}


def test_tables_render_every_number_from_the_record():
    args = _args(Path("/nonexistent"))
    start = {"sweep": "start", "run": "start", "method": "start", "metrics": {"generation/success": 0.33}}
    run = _row("table", "ipo", 1e-6)
    run["metrics"] = {"generation/success": 0.4, "generation/success/ci_low": 0.36,
                      "generation/success/ci_high": 0.44, "t1/generation/success": 0.25, "kl": 1.5}  # fmt: skip
    run["paired"] = {
        "success vs start": {
            "n": 600,
            "difference": 0.07,
            "ci_low": 0.04,
            "ci_high": 0.1,
            "mcnemar_p": 0.0012,
        },
        "success vs baseline": {
            "n": 600,
            "difference": -0.01,
            "ci_low": -0.03,
            "ci_high": 0.01,
            "mcnemar_p": 0.5,
        },
    }
    record = {
        "pair_sets": [{"file": "tasks_k8.jsonl", "judge": "tasks", "samples": 8, "by_family": {"choice": 3},
                       "counts": {"prompts": 9, "pairs": 3, "tied": 6}, "checker_apart": 3, "checker_agrees": 3}],
        "reward_model": {"reward/accuracy": 0.8375, "reward/margin": 3.935},
        "runs": [start, run],
        "parts": {s.name: part for part, group in study.sweeps(args).items() for s in group},
        "frontier_lr": 1e-6,
    }  # fmt: skip
    text = study.render(record)
    assert "| tasks_k8.jsonl | tasks | 8 | 9 | 3 | 6 | choice 3 | 3 / 3 | - | - |" in text
    assert "| not recorded | not recorded | 1 | table |" in text  # what the run trained from
    assert "pairwise accuracy 0.8375, mean margin 3.94" in text
    table = text.split("#### table")[1].splitlines()
    assert table[4].startswith("| start/start | start |")  # the start first
    assert (
        "| 0.400 [0.36, 0.44] | +0.070 [+0.04, +0.10] p=0.0012 | -0.010 [-0.03, +0.01] p=0.5 | 0.250 |"
        in table[5]
    )
    assert "#### frontier" not in text  # a part with no finished run has no table
    assert "sDPO's γ_ref" not in text
    staged = _row("sdpo_easy_hard", "dpo", 1e-6) | {"stages": [{"gamma_ref": 0.5}, {"gamma_ref": 0.25}]}
    staged["gamma_last_chunk"] = [
        {"reference": "M_0", "gamma_ref": 0.1},
        {"reference": "M_1", "gamma_ref": 0.3},
    ]
    record["runs"].append(staged)
    text = study.render(record)
    assert "| 0.500, 0.250 | M_0 0.100, M_1 0.300 | - | - |" in text.split("#### sDPO's γ_ref")[1]


def test_the_figures_draw_from_the_record(tmp_path):
    """The frontier joins each method's points in KL order and draws the start; ε-DPO's β and MinorSFT's m_θ
    along training are drawn from the series and checkpoints results.json keeps."""
    start = {"sweep": "start", "run": "start", "method": "start", "metrics": {"generation/success": 0.3}}
    runs = []
    for sweep, method, beta, kl in (("frontier_dpo", "dpo", 0.5, 2.0), ("table", "dpo", 0.1, 5.0),
                                    ("frontier_dpo", "dpo", 0.01, 9.0), ("table", "epsilon_dpo", 0.01, 4.0)):  # fmt: skip
        r = _row(sweep, method, 1e-6, beta=beta)
        r["metrics"] = {"kl": kl, "generation/success": 0.3 + kl / 100, "t1/generation/success": 0.2}
        r["series"] = {"kl/beta": [0.01, 0.012, 0.02]} if method == "epsilon_dpo" else {}
        runs.append(r)
    runs.append(_row("table", "dpo", 2e-6) | {"metrics": {"kl": 1.0}})  # another lr: not on the frontier
    minor = _row("minorsft", "minor_sft", 2e-5, beta=None)
    minor["checkpoints"] = [{"step": s, "deviation": 3.3 + s / 1000} for s in (25, 50, 75, 100)]
    runs.append(minor)
    front = study.frontier_points(runs, 1e-6)
    assert [r["beta"] for r in front["dpo"]] == [0.5, 0.1, 0.01]  # in KL order
    assert [r["beta"] for r in front["epsilon_dpo"]] == [0.01]
    written = study.plots({"runs": [start, *runs]}, 1e-6, tmp_path)
    names = {p.name for p in written}
    assert names == {"frontier.png", "epsilon_beta.png", "minor_sft_deviation.png"}
    assert all(p.stat().st_size > 1000 for p in written)


def test_equal_kl_is_interpolated_within_a_curve_and_never_extrapolated():
    curve = [(4.0, 0.2), (1.0, 0.5), (2.0, 0.4)]  # (KL, success), any order
    assert study.at_kl(curve, 1.5) == pytest.approx(0.45)
    assert study.at_kl(curve, 3.0) == pytest.approx(0.3)
    assert study.at_kl(curve, 4.0) == pytest.approx(0.2)
    assert study.at_kl(curve, 0.5) is None and study.at_kl(curve, 5.0) is None
    assert study.at_kl([(2.0, 0.4)], 2.0) == 0.4 and study.at_kl([(2.0, 0.4)], 2.1) is None
    runs = []
    for method, beta, kl, success in (("dpo", 0.1, 2.0, 0.30), ("dpo", 0.5, 1.0, 0.34),
                                      ("epsilon_dpo", 0.01, 1.5, 0.36), ("epsilon_dpo", 0.05, 3.0, 0.30)):  # fmt: skip
        r = _row("table" if beta in (0.1, 0.01) else f"frontier_{method}", method, 1e-6, beta=beta)
        r["metrics"] = {"kl": kl, "generation/success": success}
        runs.append(r)
    rows = study.matched_kl(runs, 1e-6)
    assert rows[0][:2] == ["1.00 (DPO β=0.5)", "0.340"] and rows[0][3] == "-"  # ε-DPO's curve starts at 1.5
    assert rows[1][:2] == ["2.00 (DPO β=0.1)", "0.300"] and rows[1][3] == "0.340"  # 0.36 → 0.30 over 1.5 → 3


def test_seeds_are_pooled_by_prompt_with_a_sign_flip_p():
    """Each prompt's outcomes averaged over its seeds, then the mean difference and a sign-flip p over
    prompts. Six prompts the run alone solves and four ties: exactly 2/2⁶ of the 2⁶ sign patterns of the
    six reach |Σ| = 6, so p = 1/32 (Monte Carlo, 20,000 draws: ±0.004 covers it at over 3 SD)."""
    one_seed = [[(0.0, 1.0)]] * 6 + [[(1.0, 1.0)]] * 2 + [[(0.0, 0.0)]] * 2
    got = study.pool(one_seed)
    assert (got["n"], got["run"], got["other"]) == (10, 0.8, 0.2)
    assert got["difference"] == pytest.approx(0.6) and got["ci_low"] <= 0.6 <= got["ci_high"]
    assert got["p"] == pytest.approx(1 / 32, abs=0.004) and got["test"] == "sign-flip"
    swapped = study.pool([[(y, x) for x, y in v] for v in one_seed])
    assert swapped["difference"] == pytest.approx(-0.6) and swapped["p"] == got["p"]  # the same draws
    assert study.pool([[(1.0, 1.0)], [(0.0, 0.0)]])["p"] == 1.0  # no difference: every flip is as far
    seeds = study.pool([[(0.0, 1.0), (1.0, 1.0), (0.0, 0.0)], [(1.0, 0.0), (1.0, 0.0), (1.0, 1.0)]])
    assert seeds["other"] == pytest.approx((1 / 3 + 1) / 2) and seeds["run"] == pytest.approx(
        (2 / 3 + 1 / 3) / 2
    )


def test_each_claim_pairs_its_runs_by_pairs_lr_and_seed():
    eps = [_row("table", "epsilon_dpo", 5e-6), *(_row("seeds", "epsilon_dpo", 5e-6, seed=s) for s in (1, 2))]
    dpo = [_row("table", "dpo", 5e-6), _row("seeds", "dpo", 5e-6, seed=1), _row("table", "dpo", 1e-5)]
    eps_lr2 = _row("table", "epsilon_dpo", 1e-5)
    judged = [_row("judged", m, 5e-6, pairs="reward_k8.jsonl") for m in ("dpo", "epsilon_dpo")]
    easy = [_row("sdpo_easy_hard", "dpo", 5e-6, seed=s) for s in (0, 1)]
    rnd = _row("sdpo_random", "dpo", 5e-6, seed=1)
    sft = [_row("minorsft", m, 2e-5, seed=0, beta=None) for m in ("sft", "minor_sft")]
    small = _row("sft_small_step", "sft", 1.5e-5, seed=0, beta=None)
    rows = [*eps, eps_lr2, *dpo, *judged, *easy, rnd, *sft, small]
    by = {c.claim: study.matches(c, rows) for c in study.CLAIMS}
    # seed 2 of ε-DPO has no DPO of its seed: left out, not paired with another seed's
    assert by["ε-DPO above DPO (Table 1)"] == {
        5e-6: [(dpo[0], eps[0]), (dpo[1], eps[1])],
        1e-5: [(dpo[2], eps_lr2)],
    }
    assert by["ε-DPO above SimPO (Table 1)"] == {}
    judged_claim = next(k for k in by if "reward model's pairs" in k)
    assert by[judged_claim] == {5e-6: [(judged[0], judged[1])]}  # not the table's DPO: other pairs
    assert by["sDPO (easy → hard) above one-shot DPO (Table 2)"] == {
        5e-6: [(dpo[0], easy[0]), (dpo[1], easy[1])]
    }
    assert by["easy → hard above a random split"] == {5e-6: [(rnd, easy[1])]}
    assert by["MinorSFT above SFT"] == {2e-5: [(sft[0], sft[1])]}  # not the small-step SFT
    small_claim = next(k for k in by if "smaller step" in k)
    assert by[small_claim] == {2e-5: [(small, sft[1])]}  # another lr by design: matched on the seed


def test_a_claim_renders_each_measure_with_both_sides_and_the_pooled_test():
    m = {"n": 600, "run": 0.31, "other": 0.29, "difference": 0.02, "ci_low": -0.004, "ci_high": 0.041,
         "p": 0.0712, "test": "sign-flip", "per_seed": [0.01, 0.04, 0.01]}  # fmt: skip
    entry = {"paper": "ε-DPO", "claim": "ε-DPO above DPO (Table 1)", "lr": 5e-6, "seeds": [0, 1, 2],
             "measures": {"success": m}, "kl": [1.5, 1.2], "deviation": [-0.2, -0.15]}  # fmt: skip
    (line,) = study.claim_lines([entry])
    assert line == ["ε-DPO", "ε-DPO above DPO (Table 1)", "5e-06", "0, 1, 2", "success (greedy)", "0.310", "0.290",
                    "+0.010, +0.040, +0.010", "+0.020 [-0.004, +0.041]", "0.071 (sign-flip)", "1.500 / 1.200",
                    "-0.200 / -0.150", "-"]  # fmt: skip
    entry["same_inputs"] = False  # a side trained from another start or pair set
    assert study.claim_lines([entry])[0][-1] == "differ"
    m["p"] = 1 / 20_001  # a permutation p at its floor
    assert study.claim_lines([entry])[0][9] == "<1e-4 (sign-flip)"
    assert "#### the papers' claims, paired" in study.render({"pair_sets": [], "runs": [{"metrics": {}}], "parts": {},
                                                                "claims": [entry]})  # fmt: skip


def test_points_are_read_on_dpos_curve_only_inside_its_kl_range():
    """A point is paired with DPO's curve interpolated at its own KL, between the two DPO runs whose KLs
    bracket it; outside the curve it is left out (never extrapolated). DPO's lr curve is its default-β,
    seed-0 runs on the checker's pairs, the table's run where the pilot has the same lr."""
    pilot = [
        _row("pilot", "dpo", lr) | {"metrics": {"kl": kl}}
        for lr, kl in ((1e-6, 0.1), (2e-6, 0.3), (5e-6, 1.1))
    ]
    table_dpo = _row("table", "dpo", 5e-6) | {"metrics": {"kl": 1.2}}
    dpo_1e5 = _row("table", "dpo", 1e-5) | {"metrics": {"kl": 3.0}}
    others = [_row("table", "dpo", 1e-5, seed=1) | {"metrics": {"kl": 2.0}},  # another seed
              _row("judged", "dpo", 5e-6, pairs="reward_k8.jsonl") | {"metrics": {"kl": 0.5}},  # other pairs
              _row("frontier_dpo", "dpo", 5e-6, beta=0.5) | {"metrics": {"kl": 0.9}}]  # another β  # fmt: skip
    orpo = _row("table", "orpo", 5e-6, beta=0.1) | {"metrics": {"kl": 0.2}}
    asft = _row("table", "asft", 1e-5, beta=0.1) | {"metrics": {"kl": 2.1}}
    free = _row("table_ref_free", "asft", 2e-5) | {"metrics": {"kl": 5.0}}  # beyond DPO's largest KL
    sdpo = _row("sdpo_easy_hard", "dpo", 5e-6, pairs="tasks_k8.staged.jsonl") | {"metrics": {"kl": 2.5}}
    rows = [*pilot, table_dpo, dpo_1e5, *others, orpo, asft, free, sdpo]
    assert study.dpo_lr_curve(rows, "tasks_k8.jsonl") == [pilot[0], pilot[1], table_dpo, dpo_1e5]
    got = study.on_dpo_lr_curve({}, rows, "tasks_k8.jsonl")  # no outcomes: brackets only
    assert [(g["method"], g.get("dpo_lr")) for g in got] == [
        ("orpo", [1e-6, 2e-6]),
        ("asft", [5e-6, 1e-5]),
        ("asft", None),
        ("sdpo_easy_hard", [5e-6, 1e-5]),
    ]  # sDPO (DPO's method, in stages) is named by its sweep
    assert got[0]["weight"] == pytest.approx(0.5) and got[1]["weight"] == pytest.approx(0.5)
    assert got[0]["measures"] == {} and got[2]["outside"] == [0.1, 3.0]
    assert study.curve_line(got[2], "lr")[3] == "outside DPO's KL range (0.10–3.00): not extrapolated"
    assert study.curve_line(got[2] | {"as_recorded": True}, "lr")[0].endswith(" (as recorded)")  # stale: said
    # the frontier's DPO at the default β: the pilot's copy until the table has its own
    front = study.frontier_points([pilot[2], *others], 5e-6)["dpo"]
    assert front == [others[2], pilot[2]]
    assert study.frontier_points([pilot[2], table_dpo, *others], 5e-6)["dpo"] == [others[2], table_dpo]


def test_the_block_is_written_between_the_markers_only(tmp_path):
    page = tmp_path / "results.md"
    page.write_text("# r\n\nbefore\n<!-- protocol-tables -->\nold\n<!-- /protocol-tables -->\n\nafter\n")
    study.write_block(page, "| a |\n|---|\n| 1 |\n\n")
    assert (
        page.read_text()
        == "# r\n\nbefore\n<!-- protocol-tables -->\n| a |\n|---|\n| 1 |\n<!-- /protocol-tables -->\n\nafter\n"
    )
    (tmp_path / "none.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- protocol-tables -->"):
        study.write_block(tmp_path / "none.md", "x")


def test_a_point_is_paired_with_dpos_outcomes_interpolated_at_its_kl():
    """The point's per-prompt outcomes against DPO's two runs around its KL, weighted by where its KL lies
    between theirs (here a quarter of the way: 0.75 of the first run, 0.25 of the second)."""
    low = _row("table", "dpo", 5e-6) | {"metrics": {"kl": 1.0}}
    high = _row("table", "dpo", 1e-5) | {"metrics": {"kl": 3.0}}
    point = _row("table", "orpo", 5e-6) | {"metrics": {"kl": 1.5}}
    outcomes = {study.run_id(low): {"success": [1.0, 0.0, 0.0, None]},
                study.run_id(high): {"success": [1.0, 1.0, 0.0, 1.0]},
                study.run_id(point): {"success": [1.0, 1.0, 1.0, 1.0]}}  # fmt: skip
    (got,) = study.on_curve(outcomes, [high, low], [point])
    assert got["weight"] == pytest.approx(0.25) and got["dpo"] == [study.run_id(low), study.run_id(high)]
    m = got["measures"]["success"]  # prompt 4 has no DPO value at the low run: left out
    assert m["n"] == 3 and m["other"] == pytest.approx((1 + 0.25 + 0) / 3) and m["run"] == 1.0
    assert m["difference"] == pytest.approx(1 - 1.25 / 3) and "t1/success" not in got["measures"]


def _record(tmp_path: Path, outcomes: dict, cpo: dict | None = None) -> tuple[dict, dict]:
    start = {"sweep": "start", "run": "start", "method": "start", "metrics": {"generation/success": 0.5},
             "inputs": {"start": "s0"}}  # fmt: skip
    dpo, ipo = _row("table", "dpo", 1e-6), _row("table", "ipo", 1e-6)
    other = _row("table", "cpo", 1e-6) | {"inputs": cpo or {"start": "s1", "pairs": "p0"}}  # another start
    dpo["inputs"] = ipo["inputs"] = {"start": "s0", "pairs": "p0"}
    old = _row("frontier_dpo", "dpo", 1e-6, beta=0.5) | {
        "paired": {"success vs start": {"n": 4, "difference": 0.25}}
    }
    for r in (dpo, ipo, other):
        r["paired"] = {}
    args = _args(tmp_path / "runs")  # no run directory: every run is the prior record's
    prior = {
        "runs": [start, dpo, ipo, other, old],
        "pair_sets": [{"file": "tasks_k8.jsonl"}],
        "reward_model": None,
    }
    return study.study_record(args, prior, outcomes)


def test_a_record_outlives_its_run_directories(tmp_path):
    """Collected with no run directory here, the prior record's runs are kept, their paired tests made again
    from the outcomes kept beside it (tether compare's numbers), and a run without outcomes keeps its
    recorded comparison; the outcomes file round-trips."""
    outcomes = {"start": {"prompts": ["a", "b", "c", "d"], "success": [1.0, 0.0, 1.0, 0.0]},
                "table/dpo_1e-06_0_0.1": {"success": [1.0, 1.0, 1.0, 0.0]},
                "table/ipo_1e-06_0_0.1": {"success": [0.0, 1.0, 1.0, None]},
                "table/cpo_1e-06_0_0.1": {"success": [0.0, 0.0, 0.0, 0.0]}}  # fmt: skip
    record, kept = _record(tmp_path, outcomes)
    start, old, cpo, dpo, ipo = record["runs"]  # in the plan's order
    assert start["metrics"] == {"generation/success": 0.5} and record["pair_sets"] == [
        {"file": "tasks_k8.jsonl"}
    ]
    assert dpo["paired"]["success vs start"] == {"n": 4, "difference": 0.25, "ci_low": pytest.approx(0.0),
                                                 "ci_high": pytest.approx(0.75), "mcnemar_p": 1.0}  # fmt: skip
    vs = ipo["paired"]["success vs baseline"]  # prompt d: no value for IPO
    assert (vs["n"], vs["difference"], vs["against"]) == (3, pytest.approx(-1 / 3), "table/dpo_1e-06_0_0.1")
    assert old["paired"] == {"success vs start": {"n": 4, "difference": 0.25}}  # no outcomes: as recorded
    assert cpo["paired"] == {}  # another start: not paired with this one's runs, nor with this start
    study.write_outcomes(tmp_path / "results.json", kept)
    assert study.read_outcomes(tmp_path / "results.json") == kept
    assert (tmp_path / study.OUTCOMES).read_text().splitlines()[0] == (
        '{"run":"start","prompts":["a","b","c","d"],"success":[1,0,1,0]}'
    )


def test_a_start_that_answers_alike_is_one_start_for_pairing(tmp_path):
    """Another machine's start differs in its weights' last bits. Its runs are paired with this start's when
    it answered every held-out prompt alike (greedy and T = 1, :func:`answers`); a start that answered one
    prompt otherwise is another model, and its runs are left unpaired."""
    vectors = {"prompts": ["a", "b", "c", "d"], "success": [1, 0, 1, 0], "t1/success": [0, 0, 1, None]}
    assert study.answers(vectors) == study.answers({k: [float(x) if isinstance(x, int) else x for x in v]
                                                    for k, v in vectors.items()})  # fmt: skip
    assert study.answers(vectors | {"t1/success": [0, 1, 1, None]}) != study.answers(vectors)
    assert study.answers({"prompts": ["a"]}) is None  # not evaluated
    outcomes = {"start": vectors,
                "table/dpo_1e-06_0_0.1": {"success": [1.0, 1.0, 1.0, 0.0]},
                "table/ipo_1e-06_0_0.1": {"success": [0.0, 1.0, 1.0, None]},
                "table/cpo_1e-06_0_0.1": {"success": [1.0, 1.0, 1.0, 1.0]}}  # fmt: skip
    alike = study.answers(vectors)
    record, _ = _record(tmp_path, outcomes, cpo={"start": "s1", "answers": alike, "pairs": "p0"})
    start, _, cpo, dpo, _ = record["runs"]
    assert start["inputs"] == {"start": "s0", "answers": alike} and dpo["inputs"]["answers"] == alike
    assert cpo["paired"]["success vs start"]["difference"] == 0.5
    assert cpo["paired"]["success vs baseline"]["against"] == "table/dpo_1e-06_0_0.1"
    assert study.same_inputs([dpo, cpo]) == "alike" and study.same_inputs([dpo, dpo]) == "same"
    record, _ = _record(tmp_path, outcomes, cpo={"start": "s1", "answers": "0ther", "pairs": "p0"})
    assert record["runs"][2]["paired"] == {} and study.same_inputs(record["runs"][2:4]) == "differ"
    record, _ = _record(tmp_path, outcomes, cpo={"start": "s1", "answers": alike, "pairs": "p1"})
    assert set(record["runs"][2]["paired"]) == {"success vs start"}  # another pair set: only the start


def test_each_start_gives_its_answers_to_the_runs_of_its_weights():
    """The record's start (s0) and this machine's (s1): each gets the sha of its own outcomes, and each run
    trained from its weights inherits them (a run that has answers keeps them); runs of a start that answers
    otherwise are not alike with the others."""
    vectors = {"prompts": ["a", "b"], "success": [1.0, 0.0], "t1/success": [0.0, 0.0]}
    prior = {"sweep": "start", "inputs": {"start": "s0"}}
    here = {"sweep": "start", "inputs": {"start": "s1"}}
    old, new = _row("table", "dpo", 5e-6), _row("table", "kto", 5e-6)
    old["inputs"], new["inputs"] = {"start": "s0", "pairs": "p0"}, {"start": "s1", "pairs": "p0"}
    kept = _row("table", "ipo", 5e-6) | {"inputs": {"start": "s1", "pairs": "p0", "answers": "its own"}}
    study.give_answers([(prior, vectors), (here, dict(vectors))], [old, new, kept])
    assert prior["inputs"]["answers"] == here["inputs"]["answers"] == old["inputs"]["answers"]
    assert new["inputs"]["answers"] == study.answers(vectors) and kept["inputs"]["answers"] == "its own"
    assert (
        study.made_alike(new, old)
        and study.made_alike(new, prior)
        and study.same_inputs([old, new]) == "alike"
    )
    assert study.same_inputs([old, new, kept]) == "differ"  # kept's start answers otherwise
    new["inputs"].pop("answers")
    study.give_answers([(prior, vectors), (here, vectors | {"success": [0.0, 0.0]})], [old, new])
    assert not study.made_alike(new, old) and not study.made_alike(new, prior) and study.made_alike(new, here)


def test_a_reward_models_verdicts_are_paired_only_under_one_reward_model():
    """Each machine trains its own reward model: its verdicts (``rm/``) are paired only between runs one
    reward model judged; the checker's measures are paired whatever the judge."""
    a = {"inputs": {"start": "s0", "judge": "j0"}}
    b = {"inputs": {"start": "s1", "judge": "j1"}}
    assert study.judged_alike("rm/win_rate/chosen", a, a | {"run": "x"})
    assert not study.judged_alike("rm/win_rate/chosen", a, b)
    assert not study.judged_alike("rm/judge/reward", {"inputs": {}}, {"inputs": {}})  # judge not recorded
    assert study.judged_alike("success", a, b)


def test_a_test_without_outcomes_keeps_the_prior_result():
    key = lambda e: e["run"]  # noqa: E731
    prior = [{"run": "a", "measures": {"success": 1}}, {"run": "b", "measures": {"success": 2}}, {"run": "c"}]
    new = [
        {"run": "a", "measures": {}},
        {"run": "b", "measures": {"success": 3}},
        {"run": "d", "measures": {}},
    ]
    assert study.merged(prior, new, key) == [prior[0] | {"as_recorded": True}, new[1], new[2], prior[2]]
    assert study.merged(None, new, key) == new


def test_the_runs_the_record_holds_are_known_by_name(tmp_path, capsys):
    """A run the record holds is not made again, but only from a record of this study's settings."""
    args = _args(tmp_path, record=str(tmp_path / "results.json"))
    runs = [_row("pilot", "dpo", 1e-6), _row("pilot", "dpo", 2e-6), _row("table", "dpo", 1e-6)]
    Path(args.record).write_text(json.dumps({"settings": study.settings(args), "runs": runs}))
    study.write_outcomes(
        Path(args.record), {study.run_id(runs[0]): {"success": [1.0]}, study.run_id(runs[1]): {}}
    )
    assert study.recorded(args, "pilot") == {"dpo_1e-06_0_0.1"}  # 2e-6 has no outcomes: made again
    other = _args(tmp_path, steps=9, record=args.record)  # another study
    assert study.recorded(other, "pilot") == study.recorded(other, "table") == set()
    assert capsys.readouterr().out.count("made with other settings") == 1  # said once, not per sweep
    assert study.recorded(_args(tmp_path), "pilot") == set()  # --record ''


def test_pair_sets_are_committed_and_reused_by_a_new_machine(tmp_path):
    """--collect keeps each pair set beside the record; a new machine copies it instead of sampling again,
    and a local set that differs from the committed one is named."""
    args = _args(tmp_path / "runs", record=str(tmp_path / "docs" / "results.json"))
    local = study.paths(args)["task_pairs"]
    Path(args.record).parent.mkdir(parents=True)
    Path(args.record).write_text(json.dumps({"settings": study.settings(args), "runs": []}))
    _pairs(local, [[1, 0, 0, 0]] * 2)
    study.keep_pairs([local], tmp_path / "docs" / "results.json")
    kept = tmp_path / "docs" / "pairs" / local.name
    assert kept.read_bytes() == local.read_bytes() and kept.with_suffix(".meta.json").exists()
    local.unlink()
    assert study.committed_pairs(args, local) and local.read_bytes() == kept.read_bytes()
    assert not study.committed_pairs(args, local.with_name("reward_k8.jsonl"))  # none committed: sample
    local.unlink()
    assert not study.committed_pairs(
        _args(tmp_path / "runs", record=args.record, samples=4), local
    )  # another study


def test_a_claim_is_tested_on_the_outcomes_seeds_pooled():
    """ε-DPO against DPO from the outcomes: one seed (McNemar's exact p) and two seeds (each prompt's
    outcomes averaged over the seeds, a sign-flip p); a prompt a seed has no value for is left out."""
    inputs = {"start": "s0", "pairs": "p0"}
    eps = [
        _row("table", "epsilon_dpo", 5e-6) | {"inputs": inputs},
        _row("seeds", "epsilon_dpo", 5e-6, seed=1),
    ]
    dpo = [_row("table", "dpo", 5e-6) | {"inputs": inputs}, _row("seeds", "dpo", 5e-6, seed=1)]
    outcomes = {study.run_id(eps[0]): {"success": [1.0, 1.0, 1.0, 0.0, None]},
                study.run_id(dpo[0]): {"success": [0.0, 0.0, 1.0, 0.0, 1.0]},
                study.run_id(eps[1]): {"success": [1.0, 0.0, 1.0, 1.0, 1.0]},
                study.run_id(dpo[1]): {"success": [1.0, 0.0, 0.0, 0.0, 1.0]}}  # fmt: skip
    (one,) = [
        c for c in study.claims(outcomes, [eps[0], dpo[0]]) if c["claim"] == "ε-DPO above DPO (Table 1)"
    ]
    m = one["measures"]["success"]
    assert (m["n"], m["run"], m["other"], m["test"]) == (4, 0.75, 0.25, "McNemar")
    assert (
        m["p"] == pytest.approx(0.5)
        and m["per_seed"] == [pytest.approx(0.5)]
        and one["same_inputs"] == "same"
    )
    (two,) = [c for c in study.claims(outcomes, [*eps, *dpo]) if c["claim"] == "ε-DPO above DPO (Table 1)"]
    m = two["measures"]["success"]
    assert two["seeds"] == [0, 1] and m["n"] == 4 and m["test"] == "sign-flip"
    assert (m["run"], m["other"]) == (0.75, 0.25)  # prompt by prompt: (1, ½, 1, ½) against (½, 0, ½, 0)
    assert m["per_seed"] == [pytest.approx(0.5), pytest.approx(0.4)] and two["same_inputs"] is None


def test_a_part_runs_seed_0_of_every_sweep_before_seed_1_of_any(tmp_path):
    """A part cut short still has every arm of its claims at one seed: sDPO's two splits at seed 0 first."""
    groups = study.sweeps(_args(tmp_path))
    order = [(s.name, seed) for s, seed in study.seed_major(groups["sdpo"])]
    assert order == [(f"sdpo_{a}", seed) for seed in ("0", "1", "2") for a in ("easy_hard", "random")]
    assert [(s.name, seed) for s, seed in study.seed_major(groups["table"])] == [
        (s.name, None) for s in groups["table"]
    ]  # no seeds: each sweep whole, in order
