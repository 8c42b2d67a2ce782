"""A reward-model judge for ``tether eval --judge MODEL``.

The judge is any Hugging Face sequence-classification model with one output (``num_labels = 1``), e.g. an
open 0.5–2B reward model. It scores a prompt and a response rendered as a chat with *its own* tokenizer and
chat template (a user turn, an assistant turn), not the policy's: the score is the model's one logit at the
last token of the rendered conversation. Without a chat template the two are joined by a blank line.

Scores are cached (:mod:`tether.engine.cache`, ``judge/``) by the judge's weights fingerprint, the texts
scored and the settings (dtype, device type, length cap), so the reference's generations and the held-out
chosen answers are scored once for every run evaluated against them.

Checked before anything loads (one line each): a judge whose config is not a ``*ForSequenceClassification``
architecture (a causal LM would get a random head) or has more than one output. A run directory of
``method: reward`` is a judge too (its final model; a LoRA run's adapter merged into its base); a run of
any other method is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tether.engine.models as models
from tether.engine.cache import cached_json, hash_key
from tether.errors import TetherError
from tether.evaluation.target import Target, load, resolve_target

MAX_LENGTH = 2048
"""Tokens of a rendered conversation the judge reads (the start is kept; longer ones are cut)."""


def _judge_target(spec: str) -> Target:
    """What ``--judge`` names: a run directory of a reward model (``method: reward``) resolves to its final
    model (``final/``, ``final/merged``, or its base with the LoRA adapter); anything else is a model spec."""
    try:
        target = resolve_target(spec)
    except TetherError as e:
        raise TetherError(f"--judge: {e}") from None
    if target.run_dir is not None and target.head != "score":
        method = target.run_cfg.method.name if target.run_cfg is not None else "?"
        raise TetherError(
            f"--judge {spec}: a run of method '{method}', not a reward model; give a run of method: reward "
            "or a sequence-classification model"
        )
    return target


def check_judge(spec: str) -> Any:
    """The judge's config when it is a one-output sequence-classification model (or a reward run, whose
    method declares its score head); else :class:`TetherError` (cheap: reads ``config.json`` only)."""
    from transformers import AutoConfig

    target = _judge_target(spec)
    try:
        path = (
            target.model_path if target.adapter is not None else models.resolve_model_dir(target.model_path)
        )
        config = AutoConfig.from_pretrained(str(path))
    except TetherError as e:
        raise TetherError(f"--judge: {e}") from None
    except (OSError, ValueError) as e:
        raise TetherError(f"--judge {spec}: cannot read its config ({str(e).splitlines()[0]})") from None
    if target.adapter is not None:  # a reward run's adapter: its base is the causal LM it started from
        return config
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise TetherError(
            f"--judge {spec}: not a sequence-classification reward model (architectures: "
            f"{', '.join(archs) or 'none'}); give an AutoModelForSequenceClassification with one output"
        )
    if config.num_labels != 1:
        raise TetherError(
            f"--judge {spec}: has {config.num_labels} outputs (num_labels); a reward model scores with one"
        )
    return config


@dataclass
class Judge:
    """A loaded reward model, its tokenizer and the fingerprint of its weights."""

    spec: str
    model: Any
    tokenizer: Any
    fingerprint: str
    device: torch.device
    dtype: str = "float32"
    cache_log: dict[str, str] = field(default_factory=dict)


def load_judge(spec: str, device: torch.device, dtype: str = "float32") -> Judge:
    """The judge in eval mode on ``device`` (checked with :func:`check_judge` first); a reward run's LoRA
    adapter is merged into its base."""
    check_judge(spec)
    target = _judge_target(spec)
    path = models.resolve_model_dir(target.model_path)
    tokenizer = models.load_tokenizer(target.tokenizer_path or path)
    try:
        model = load(str(path), target.adapter, dtype, torch.device("cpu"), progress=False, head="score")
    except TetherError as e:
        raise TetherError(f"--judge {spec}: cannot load it ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # needed to find each row's last token in a batch
        model.config.pad_token_id = tokenizer.pad_token_id
    return Judge(spec, model.to(device).eval(), tokenizer, judge_fingerprint(spec), device, dtype)


def judge_fingerprint(spec: str) -> str:
    """The fingerprint of the judge's weights (a reward run: its final model, or its base and adapter),
    without loading them."""
    target = _judge_target(spec)
    fingerprint = models.model_fingerprint(models.resolve_model_dir(target.model_path))
    if target.adapter is not None:
        fingerprint = hash_key(fingerprint, models.model_fingerprint(target.adapter))
    return fingerprint


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A row's prompt as chat messages (a string is one user turn)."""
    if isinstance(prompt, list):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    return [{"role": "user", "content": str(prompt)}]


def render(tokenizer: Any, prompt: Any, response: str) -> str:
    """The conversation the judge reads: the prompt's turns and the response as the assistant's turn."""
    msgs = [*_messages(prompt), {"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if isinstance(text, str):
            return text
    return "\n\n".join(m["content"] for m in msgs)


@torch.no_grad()
def _score(judge: Judge, texts: Sequence[str], batch_size: int) -> list[float]:
    tok = judge.tokenizer
    templated = bool(getattr(tok, "chat_template", None))
    ids = [
        tok(t, add_special_tokens=not templated, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        for t in texts
    ]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [0.0] * len(ids)
    pad = judge.model.config.pad_token_id
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):  # right padding: the model pools at each row's last real token
            input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
            mask[j, : len(ids[i])] = 1
        logits = judge.model(
            input_ids=input_ids.to(judge.device), attention_mask=mask.to(judge.device)
        ).logits
        for j, i in enumerate(idx):
            out[i] = float(logits[j, 0])
    return out


def score(
    judge: Judge,
    prompts: Sequence[Any],
    responses: Sequence[str],
    *,
    desc: str,
    batch_size: int = 8,
    cache_root: Path | None = None,
) -> list[float]:
    """The judge's reward of each (prompt, response), read from the cache when it was scored before."""
    texts = [render(judge.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    if cache_root is None:
        return _score(judge, texts, batch_size)
    settings = {"max_length": MAX_LENGTH, "dtype": judge.dtype, "device": judge.device.type, "v": 1}
    key = hash_key(judge.fingerprint, settings, texts)
    value, judge.cache_log[desc] = cached_json(
        cache_root / "judge" / f"{key}.json",
        lambda: _score(judge, texts, batch_size),
        lambda v: isinstance(v, list) and len(v) == len(texts),
    )
    return [float(x) for x in value]
