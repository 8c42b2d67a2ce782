"""``tether generate``: sample from a trained run (or any model) on prompts given on the command line or in a
file, rendered exactly as training renders a prompt (the run's ``data`` settings, or the config's defaults
for a plain model: the chat template applied as ``data.chat_template`` says, ``auto`` using it when the
tokenizer has one; the prompt cut to ``data.max_prompt_length`` and fitting ``data.max_length``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.engine.models as models
from tether.config import DataConfig
from tether.errors import DataError, Problem, TetherError
from tether.evaluation.generation import decode, eos_ids, generate
from tether.evaluation.target import load, resolve_target


def read_prompts(path: str) -> list[Any]:
    """Prompts of a file: ``.txt``, one per non-empty line; ``.jsonl``/``.json``/``.parquet``, each row's
    ``prompt`` (a string or chat messages)."""
    p = Path(path)
    if not p.is_file():
        raise TetherError(f"--file: {path}: file not found")
    if p.suffix == ".txt":
        return [line for line in p.read_text().splitlines() if line.strip()]
    rows = data_mod.read_rows(str(p))
    missing = [Problem(r.file, r.line, "prompt", "missing") for r in rows if "prompt" not in r.data]
    if missing:
        raise DataError(missing)
    return [r.data["prompt"] for r in rows]


def generate_texts(
    spec: str,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    chat_template: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``num_samples`` generations per prompt from ``spec`` (a run directory or a model): greedy at
    temperature 0, else sampled at ``temperature``/``top_p`` (each prompt's generator seeded from ``seed`` and
    its index)."""
    if not prompts:
        raise TetherError("no prompt given (--prompt TEXT or --file FILE)")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise TetherError("--temperature must be ≥ 0 and --top-p in (0, 1]")
    if num_samples > 1 and temperature == 0:
        raise TetherError("--num-samples: greedy decoding gives one generation; set --temperature > 0")
    t0 = time.time()
    target = resolve_target(spec)
    if target.head == "score":
        raise TetherError(f"{spec}: a reward model (a score head) scores text, it does not generate")
    models.check_generation_length(max_new_tokens, target.model_path)
    cfg = target.run_cfg
    run_data = cfg.data if cfg else DataConfig()  # a plain model: the config's defaults
    template = chat_template or run_data.chat_template
    tokenization = dataclasses.replace(run_data.tokenization(), chat_template=template)
    path = models.resolve_model_dir(target.model_path, progress=progress)
    tokenizer = models.load_tokenizer(target.tokenizer_path or path)
    ids = tokenization.tokenize_prompts(prompts, tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(str(path), target.adapter, cfg.model.dtype if cfg else "float32", device, progress)
    raw = generate(
        model,
        tokenizer,
        ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        progress=progress,
    )
    eos = eos_ids(model, tokenizer)
    return {
        "model": str(spec),
        "chat_template": template,
        "outputs": [
            {
                "prompt": p,
                "rendered": tokenizer.decode(i),
                "generations": [decode(tokenizer, g.ids, eos) for g in gs],
            }
            for p, i, gs in zip(prompts, ids, raw, strict=True)
        ],
        "seconds": round(time.time() - t0, 3),
    }
