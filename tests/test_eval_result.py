"""``eval.json`` as :class:`tether.eval_result.EvalResult`: a real file read and written again is the same
bytes (through :class:`tether.rundir.RunDir`), and a new metric group is its compute function and its
registry entry, run by ``tether eval`` into the result."""

from __future__ import annotations

import json

import pytest

from tether.cli import main as cli_main
from tether.errors import TetherError
from tether.eval_result import EvalResult, NotAnEvalResult, Win
from tether.evaluation.context import GroupInputs, GroupResult
from tether.evaluation.evaluate import evaluate
from tether.evaluation.groups import METRIC_GROUPS, MetricGroup
from tether.rundir import RunDir

from tiny import pair_rows, tiny_model_dir, write_jsonl


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_result")
    rows = pair_rows(5)
    for r in rows[:3]:
        r["source"], r["answer"] = "arithmetic", r["chosen"]
    return {
        "root": root,
        "model": tiny_model_dir(root / "model"),
        "model2": tiny_model_dir(root / "model2", seed=1),
        "pairs": write_jsonl(root / "pairs.jsonl", rows),
    }


def test_a_real_eval_json_round_trips_to_the_same_bytes(env):
    """Every part of the result: settings, win counts, samples with all their generations, notes."""
    out = env["root"] / "run" / "eval.json"
    result = evaluate(
        str(env["model"]),
        str(env["pairs"]),
        reference=str(env["model2"]),
        max_new_tokens=3,
        temperature=1.0,
        samples_per_prompt=2,
        kl_samples=1,
        progress=False,
        out=out,
    )
    text = out.read_text()
    assert json.loads(text) == result
    rd = RunDir(out.parent)
    typed = rd.read_eval_result()
    assert isinstance(typed, EvalResult) and isinstance(typed.win, Win)
    assert typed.samples[0].model_samples is not None and typed.samples[0].reward is None
    assert typed.dumps() == text
    rd.write_eval(typed, out.parent / "again.json")
    assert (out.parent / "again.json").read_bytes() == out.read_bytes()
    # keys others add (a sweep's) are kept, in order, after the result's own
    added = {**json.loads(text), "sweep_eval_key": "abc", "model_mtime": None}
    again = EvalResult.from_dict(added)
    assert again.extra == {"sweep_eval_key": "abc", "model_mtime": None}
    assert again.dumps() == json.dumps(added, indent=1, ensure_ascii=False) + "\n"


def test_judge_fields_round_trip(env):
    """A sample's rewards (written only with a judge) survive the dataclass."""
    text = (env["root"] / "run" / "eval.json").read_text()
    data = json.loads(text)
    for s in data["samples"]:
        s["reward"], s["reference_reward"], s["target_reward"] = [0.5, 0.25], [0.1, 0.2], 0.3
    assert json.loads(EvalResult.from_dict(data).dumps()) == data
    assert list(EvalResult.from_dict(data).to_dict()["samples"][0]) == list(data["samples"][0])


def test_another_tools_json_is_not_an_eval_result(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"success_rate": 0.4, "kl": 0.8}))
    with pytest.raises(NotAnEvalResult, match="not a tether eval result") as e:
        RunDir(tmp_path).read_eval_result()
    assert e.value.data == {"success_rate": 0.4, "kl": 0.8}
    (tmp_path / "eval.json").write_text("[1]")
    with pytest.raises(TetherError, match="not a JSON object"):
        RunDir(tmp_path).read_eval_result()
    assert RunDir(tmp_path / "none").read_eval_result() is None


def test_a_new_metric_group_needs_only_its_compute_and_registry_entry(env, monkeypatch, capsys):
    """The extension point of the evaluation: a group declared here (its compute function and its
    registry entry) is chosen by ``--metrics`` and by ``auto``, runs through ``tether eval`` after the
    groups with lower slots, and lands in ``eval.json``."""
    seen: list[int] = []

    def lengths(inp: GroupInputs) -> GroupResult:
        seen.append(len(inp.examples))
        n = [len(e.chosen_ids) for e in inp.examples]
        return GroupResult({"length/chosen": sum(n) / len(n)}, {"length/chosen": sum(n) / len(n)})

    group = MetricGroup("length", ("pairs",), "rows with a chosen answer", lengths, slot=15)
    monkeypatch.setitem(METRIC_GROUPS, "length", group)
    out = env["root"] / "length.json"
    argv = [
        str(env["model"]),
        "--data",
        str(env["pairs"]),
        "--reference",
        str(env["model2"]),
        "--out",
        str(out),
    ]
    assert cli_main(["eval", *argv, "--metrics", "pairwise,length,deviation", "--no-progress"]) == 0
    assert "length/chosen" in capsys.readouterr().out
    result = EvalResult.from_dict(json.loads(out.read_text()))
    assert result.metric_groups == ["pairwise", "length", "deviation"]
    assert list(result.metrics)[:3] == ["deviation", "deviation/rejected", "length/chosen"]  # slot 15
    assert result.metrics["length/chosen"] == result.reference_metrics["length/chosen"] > 0
    assert seen == [5]
    assert cli_main(["eval", *argv, "--no-generate", "--no-progress"]) == 0  # auto picks it too
    assert EvalResult.from_dict(json.loads(out.read_text())).metric_groups == [
        "pairwise",
        "deviation",
        "length",
    ]
