"""Tiny random models and data built in the tests themselves (no downloads)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 96


def tiny_config(vocab: int = VOCAB, **overrides: object) -> LlamaConfig:
    """The tests' tiny Llama: 2 layers of width 32, pad 0, BOS 1, EOS 2 (``overrides``: other keys)."""
    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(vocab)).eval()


@dataclass(frozen=True)
class Ex:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


def random_examples(n: int, paired: bool = True, seed: int = 0, vocab: int = VOCAB) -> list[Ex]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    return [Ex(ids(2, 7), ids(1, 9), ids(1, 9) if paired else None) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:?!+-=*/()'\n")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer():
    """A character-level tokenizer with a chat template (special tokens first: pad=0, bos=1, eos=2)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = TEMPLATE
    return tok


def tiny_model_dir(path: Path, seed: int = 0, tok=None) -> Path:
    """Save a tiny random Llama with ``tok`` (default: the char tokenizer) to ``path`` (a loadable model
    directory)."""
    tok = tok if tok is not None else tiny_tokenizer()
    model = tiny_model(seed, vocab=VOCAB)
    assert len(tok) <= VOCAB
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Simple verifiable arithmetic preference pairs with a ``source`` column."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        good, bad = a + b, a + b + rng.choice([-2, -1, 1, 3])
        rows.append(
            {
                "prompt": f"what is {a}+{b}?",
                "chosen": f"{good}",
                "rejected": f"{bad}",
                "source": "easy" if i % 2 == 0 else "hard",
            }
        )
    return rows


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pair_rows(n, seed)]


def unpaired_rows(n: int, seed: int = 0) -> list[dict]:
    """TRL's unpaired preference format: each pair split into a desirable and an undesirable row."""
    out = []
    for r in pair_rows(n // 2 + n % 2, seed):
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out[:n]


def train_then_kill(config: Path, log: Path, after_lines: int) -> list[str]:
    """Start ``tether train config`` in a subprocess and SIGKILL it once ``log`` has ``after_lines``
    lines; returns the command (to resume with). Fails if the run ended before it could be killed."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "tether.cli", "train", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= after_lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return cmd


def pair_table(model_dir: Path, pairs: Path, max_length: int = 64):
    """(examples, [n, 2] summed log-probs of chosen and rejected) of a pairs file under ``model_dir``."""
    import tether.engine.models as models
    from tether.data import read_rows, tokenize_rows
    from tether.engine.logprobs import LogProbModel
    from tether.engine.reference import compute_table

    tok = models.load_tokenizer(model_dir)
    ex = tokenize_rows(read_rows(str(pairs)), tok, kind="pairs", max_length=max_length).examples
    table = compute_table(
        LogProbModel(models.load_model(model_dir)),
        ex,
        batch_size=8,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        progress=False,
    )
    return ex, table


def benchmark_module(name: str):
    """A script of ``benchmarks/`` imported as a module (the scripts import each other by name)."""
    import importlib
    import sys

    here = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(here)
