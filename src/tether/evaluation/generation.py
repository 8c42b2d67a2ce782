"""Text generation for evaluation: batched, left-padded, greedy or sampled from π itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])]:
        if x is not None and x not in ids:
            ids.append(int(x))
    return ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    sample: bool = False,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    desc: str = "generating",
    progress: bool = True,
) -> list[list[list[int]]]:
    """New token ids per prompt (``num_samples`` lists each), cut after the first EOS (which is kept).

    Prompts are left-padded in batches of similar length; greedy unless ``sample``, which draws at
    ``temperature`` with nucleus ``top_p`` and no top-k (the defaults, 1 and 1, sample π itself).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    options: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
        if sample
        else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        num_return_sequences=num_samples,
        **options,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[list[int]]] = [[] for _ in prompts]
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids = list(prompts[i])
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[j, width - len(ids) :] = 1
        seqs = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        new = seqs[:, width:].tolist()
        for j, i in enumerate(idx):
            for k in range(num_samples):
                ids = new[j * num_samples + k]
                cut = next((t + 1 for t, tok in enumerate(ids) if tok in eos), len(ids))
                out[i].append(ids[:cut])
    return out


def decode(tokenizer: Any, ids: list[int], eos: list[int]) -> str:
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
