"""Tests for tether.engine.models: spec checks, loading, LoRA, saving, and (slow) the real default model."""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

import tether.engine.models as models
from tether.errors import TetherError

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<unk>", "<eos>", *[f"w{i}" for i in range(100)]]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
    )
    out = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    _tiny_tokenizer().save_pretrained(out)
    return out


def _ids() -> torch.Tensor:
    return torch.tensor([[3, 5, 7, 9, 11, 13]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


# ------------------------------------------------------------------------------------ spec checks


def test_check_spec_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TetherError, match="nope: model not found"):
        models.check_model_spec(str(missing))
    with pytest.raises(TetherError, match="not found"):
        models.check_model_spec("missing.gguf")
    with pytest.raises(TetherError, match="not found"):
        models.resolve_model_dir(str(missing), cache_dir=tmp_path)


def test_check_spec_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_text("hello, I am a text file\n")
    with pytest.raises(TetherError, match=r"x\.gguf: not a GGUF file \(bad magic bytes\)") as info:
        models.check_model_spec(str(fake))
    assert "\n" not in str(info.value)
    with pytest.raises(TetherError, match="not a GGUF"):
        models.resolve_model_dir(str(fake), cache_dir=tmp_path)


def test_check_spec_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(TetherError, match=r"no config\.json"):
        models.check_model_spec(str(tmp_path))


def test_check_spec_passes(tiny_dir: Path) -> None:
    models.check_model_spec(str(tiny_dir))
    models.check_model_spec(models.DEFAULT_MODEL)
    models.check_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_resolve_passthrough(tiny_dir: Path, tmp_path: Path) -> None:
    assert models.resolve_model_dir(str(tiny_dir), cache_dir=tmp_path) == tiny_dir
    assert models.resolve_model_dir("org/name", cache_dir=tmp_path) == "org/name"
    assert not (tmp_path / "models").exists()


def test_fingerprint(tiny_dir: Path) -> None:
    fp = models.model_fingerprint(tiny_dir)
    assert fp == models.model_fingerprint(str(tiny_dir))
    assert fp != models.model_fingerprint("org/name")
    assert models.model_fingerprint("org/name") == models.model_fingerprint("org/name")
    assert models.model_fingerprint("org/name") != models.model_fingerprint("org/other")


def test_truncated_gguf_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 12)
    cache = tmp_path / "cache"
    with pytest.raises(TetherError, match=r"trunc\.gguf: cannot load GGUF"):
        models.resolve_model_dir(str(bad), cache_dir=cache)
    assert list((cache / "models").iterdir()) == []


def test_gguf_conversion_is_atomic_and_cached(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed conversion leaves nothing behind; a successful one is reused without reconverting."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + os.urandom(64))
    calls = []

    def fake_load(path: Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
        calls.append(path)
        return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)

    monkeypatch.setattr(models, "_load_gguf", fake_load)
    cache = tmp_path / "cache"

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-save")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)
        with pytest.raises(RuntimeError, match="killed"):
            models.resolve_model_dir(str(fake), cache_dir=cache)
    assert list((cache / "models").iterdir()) == []

    out = models.resolve_model_dir(str(fake), cache_dir=cache)
    assert isinstance(out, Path) and out.parent == cache / "models" and out.name.startswith("tiny-")
    assert [p.name for p in (cache / "models").iterdir()] == [out.name]
    assert models.resolve_model_dir(str(fake), cache_dir=cache) == out
    assert len(calls) == 2  # the failed attempt and the successful one; the third call hit the cache
    torch.testing.assert_close(
        _logits(models.load_model(out)), _logits(AutoModelForCausalLM.from_pretrained(tiny_dir))
    )
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "envcache"))
    assert models.default_cache_dir() == tmp_path / "envcache"


# ----------------------------------------------------------------------------------------- loading


def test_load_round_trip(tiny_dir: Path) -> None:
    model = models.load_model(tiny_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.dtype == torch.float32
    assert not models.is_lora(model)
    assert model.config._attn_implementation in {"sdpa", "eager"}
    torch.testing.assert_close(_logits(model), _logits(ref))


def test_load_tokenizer(tiny_dir: Path) -> None:
    tok = models.load_tokenizer(tiny_dir)
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert tok.padding_side == "right"
    batch = tok(["w1 w2 w3", "w4"], padding=True)
    assert batch["input_ids"][1][-1] == tok.pad_token_id


def test_load_bf16(tiny_dir: Path) -> None:
    model = models.load_model(tiny_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_bad_dtype(tiny_dir: Path) -> None:
    with pytest.raises(TetherError, match="unknown dtype 'float64'"):
        models.load_model(tiny_dir, dtype="float64")


def test_gradient_checkpointing(tiny_dir: Path) -> None:
    model = models.load_model(tiny_dir, gradient_checkpointing=True)
    assert models._is_checkpointing(model)
    assert model.config.use_cache is False
    model.train()
    model(input_ids=_ids(), labels=_ids()).loss.backward()
    assert not models._is_checkpointing(models.load_model(tiny_dir))


def test_lora_trainable_params_and_merge(tiny_dir: Path) -> None:
    model = models.load_model(tiny_dir, lora=LORA)
    assert models.is_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Make the adapter non-trivial (lora_B starts at zero).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_logits = _logits(model)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(tiny_dir))
    assert not torch.allclose(peft_logits, base_logits, atol=1e-4)

    merged = models.merge_lora(model)
    assert not models.is_lora(merged)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), peft_logits, atol=1e-5, rtol=0)
    # The original is untouched and still a working PEFT model.
    assert models.is_lora(model)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    torch.testing.assert_close(_logits(model), peft_logits, atol=0, rtol=0)


def test_lora_all_linear_with_checkpointing(tiny_dir: Path) -> None:
    model = models.load_model(
        tiny_dir, gradient_checkpointing=True, lora={**LORA, "target_modules": "all-linear"}
    )
    model.train()
    model(input_ids=_ids(), labels=_ids()).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_lora_unknown_key(tiny_dir: Path) -> None:
    with pytest.raises(TetherError, match="unknown key"):
        models.load_model(tiny_dir, lora={"rank": 4})


def test_merge_plain_is_identity(tiny_dir: Path) -> None:
    model = models.load_model(tiny_dir)
    assert models.merge_lora(model) is model


# ------------------------------------------------------------------------------------------ saving


def test_save_plain(tiny_dir: Path, tmp_path: Path) -> None:
    model = models.load_model(tiny_dir)
    tok = models.load_tokenizer(tiny_dir)
    out = tmp_path / "plain"
    models.save_model(model, tok, out)
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin"))
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out)), _logits(model))
    assert AutoTokenizer.from_pretrained(out).eos_token == "<eos>"


def test_save_lora_and_merged(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    model = models.load_model(tiny_dir, lora=LORA)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tok = models.load_tokenizer(tiny_dir)
    out = tmp_path / "lora"
    models.save_model(model, tok, out, merged=True)
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert (out / "tokenizer.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "tokenizer.json").is_file()
    expected = _logits(model)
    assert models.is_lora(model)  # saving merged did not merge the original

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), out)
    torch.testing.assert_close(_logits(reloaded), expected, atol=1e-5, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    torch.testing.assert_close(_logits(merged), expected, atol=1e-5, rtol=0)
    assert models.is_lora(models.load_model(out / "merged")) is False

    out2 = tmp_path / "lora_only"
    models.save_model(model, tok, out2)
    assert (out2 / "adapter_model.safetensors").is_file()
    assert not (out2 / "merged").exists()


# --------------------------------------------------------------------------------- default model


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Convert the embedded default model once per session into a temporary cache."""
    cache = tmp_path_factory.mktemp("tether-cache")
    t0 = time.perf_counter()
    model_dir = models.resolve_model_dir(models.DEFAULT_MODEL, cache_dir=cache)
    return {"dir": model_dir, "cache": cache, "convert_s": time.perf_counter() - t0}


@pytest.mark.slow
def test_default_model_convert_cache_and_generate(smollm2: dict[str, object]) -> None:
    model_dir = smollm2["dir"]
    assert isinstance(model_dir, Path)
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "config.json").is_file()
    assert "quantization_config" not in (model_dir / "config.json").read_text()
    assert not [p for p in (model_dir.parent).iterdir() if p.name.startswith(".tmp")]

    t0 = time.perf_counter()
    again = models.resolve_model_dir(models.DEFAULT_MODEL, cache_dir=smollm2["cache"])
    assert again == model_dir
    assert time.perf_counter() - t0 < 2.0  # cache hit, no reconversion

    tok = models.load_tokenizer(model_dir)
    model = models.load_model(model_dir)
    model.eval()
    assert tok.chat_template
    assert tok.eos_token == "<|im_end|>"
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_default_model_logits_match_gguf(smollm2: dict[str, object]) -> None:
    gguf = models._default_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    converted = models.load_model(smollm2["dir"])
    tok = models.load_tokenizer(smollm2["dir"])
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    ref.eval()
    converted.eval()
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        got = converted(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert models.model_fingerprint(smollm2["dir"]) == models.model_fingerprint(smollm2["dir"])
