"""Docs and examples are run, not trusted: the README's methods table is the registry's, every example
config validates (with the real SmolLM2 tokenizer over the bundled data), and the bundled data are what
the generator writes."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

import tether.data.tasks as tasks
from tether.config import load_config
from tether.methods.registry import METHODS, methods_markdown

from tiny import benchmark_module

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_readme_methods_table_is_the_registry():
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- methods-table -->\n")[1].split("<!-- /methods-table -->")[0].strip()
    assert block == methods_markdown()


def test_citations_are_arxiv_ids_not_local_files():
    """A user has the arXiv id, not the developers' paper texts (shared/papers/*.txt)."""
    for name, m in METHODS.items():
        assert re.search(r"arXiv:\d{4}\.\d{4,5}", m.paper), (name, m.paper)
        assert ".txt" not in m.paper, (name, m.paper)
    user_facing = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *EXAMPLES]
    for path in user_facing:
        text = path.read_text()
        assert "shared/papers" not in text and not re.search(r"[\w-]+\.txt\b[^`]*Eq\.", text), path


def test_config_reference_is_the_dataclasses():
    """docs/config.md's key reference is ``tether config --markdown``; every key and hyper-parameter has
    help text (one place: the string below each dataclass field, the registry's HYPERPARAMETERS)."""
    import dataclasses

    import tether.config as config
    from tether.methods.registry import HYPERPARAMETERS

    text = (REPO / "docs" / "config.md").read_text()
    block = text.split("<!-- config-reference -->\n")[1].split("<!-- /config-reference -->")[0].strip()
    assert block == config.config_markdown()
    classes, todo = [], [config.Config]  # every section reachable from Config
    while todo:
        cls = todo.pop()
        classes.append(cls)
        hints = typing.get_type_hints(cls)
        todo += [
            c
            for f in dataclasses.fields(cls)
            if (c := config.schema.section_class(hints[f.name])) is not None
        ]
    assert len(classes) >= 8
    for cls in classes:
        helps = config.field_help(cls)
        for f in dataclasses.fields(cls):
            assert helps.get(f.name), f"{cls.__name__}.{f.name} has no help (a string right below it)"
    for m in METHODS.values():
        for name in m.defaults:
            assert HYPERPARAMETERS.get(name), (
                f"method {m.name}: hyper-parameter {name} not in HYPERPARAMETERS"
            )
    assert all(k.help for k in [*config.config_keys(), *config.hyperparameter_keys()])


def test_paper_index_covers_every_method():
    text = (REPO / "docs" / "paper_index.md").read_text()
    for name, m in METHODS.items():
        assert f"`{name}`" in text, name
        assert m.equation.split(" (")[0] in text, (name, m.equation)
    assert "sDPO" in text and "Anchored" in text


def test_every_method_has_an_example():
    names = {load_config(p).method.name for p in EXAMPLES}
    assert set(METHODS) <= names
    assert any(load_config(p).stages is not None for p in EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_on_real_data(path, monkeypatch):
    from tether.training.job import validate

    monkeypatch.chdir(REPO)
    report = validate(load_config(path))
    assert report["train_examples"] > 0 and report["truncated"] == 0


def test_bundled_data_regenerate_byte_for_byte(tmp_path):
    written = tasks.write(tmp_path)
    assert written
    for path in written:
        assert path.read_bytes() == (REPO / "data" / "tasks" / path.name).read_bytes(), path.name


def test_task_checker_and_splits():
    split = tasks.generate()
    train_prompts = {t["prompt"] for t in split["train"]}
    assert not train_prompts & {t["prompt"] for t in split["heldout"]}
    for t in split["train"] + split["heldout"]:
        assert tasks.check(t, t["answer"]), t
        assert not any(tasks.check(t, w) for w in t["wrong"]), t
    assert {t["source"] for t in split["heldout"]} == set(tasks.FAMILIES)


def test_results_doc_scale_tables_are_the_committed_results():
    """docs/results.md's issue-14 tables are what benchmarks/papers_scale.py renders from the committed
    docs/results/scale/results.json, every run in it carries 95% intervals, and its plots exist."""
    scale = benchmark_module("papers_scale")
    rows = json.loads((REPO / "docs" / "results" / "scale" / "results.json").read_text())
    assert rows and all("generation/success/ci_low" in r["metrics"] for r in rows)
    text = (REPO / "docs" / "results.md").read_text()
    block = text.split("<!-- scale-tables -->\n")[1].split("<!-- /scale-tables -->")[0].strip()
    assert block == scale.tables(rows).strip()
    for image in re.findall(r"!\[[^\]]*\]\((results/scale/[^)]+\.png)\)", text):
        assert (REPO / "docs" / image).is_file(), image


def test_results_doc_protocol_tables_are_the_committed_results():
    """docs/results.md's issue-27 block is what benchmarks/protocol_study.py renders from the committed
    docs/results/protocol/results.json, and every paired comparison in it is against a run (or the start)
    that the record holds, as is every run a paper's claim is tested on."""
    study = benchmark_module("protocol_study")
    record = json.loads((REPO / "docs" / "results" / "protocol" / "results.json").read_text())
    assert record["pair_sets"] and record["runs"][0]["run"] == "start"
    text = (REPO / "docs" / "results.md").read_text()
    block = text.split("<!-- protocol-tables -->\n")[1].split("<!-- /protocol-tables -->")[0].strip()
    assert block == study.render(record).strip()
    names = {f"{r['sweep']}/{r['run']}" for r in record["runs"]}
    for r in record["runs"][1:]:
        assert "success vs start" in r["paired"], r["run"]
        assert all(d.get("against", "start/start") in names for d in r["paired"].values()), r["run"]
    # the papers' claims and the frontier read on DPO's curve: runs the record holds
    for c in record["claims"]:
        assert set(c["runs"]) | set(c["against"]) <= names, c["claim"]
    for c in record["on_dpo_curve"] + record["on_dpo_lr_curve"]:
        assert {c["run"], *c.get("dpo", [])} <= names, c["run"]  # (no DPO runs outside its KL range)
    for image in re.findall(r"!\[[^\]]*\]\((results/protocol/[^)]+\.png)\)", text):
        assert (REPO / "docs" / image).is_file(), image
