"""The generation engine: a decode loop over transformers' KV cache, greedy or sampled, returning each
sampled token's log-probability under the model.

- Prompts are sorted by length (longest first) and left-padded in batches; position ids are counted over
  real tokens from the attention mask, as transformers' ``generate`` counts them.
- Each prompt is encoded once: with ``samples`` K > 1 the prefill's KV cache is expanded K times
  (``batch_repeat_interleave``) instead of encoding the prompt K times (``num_return_sequences`` does).
- A row stops at its first EOS (kept) or after ``max_new_tokens``; finished rows leave the running batch
  (``batch_select_indices``), so they cost no more compute.
- Greedy (temperature 0) takes the argmax of the logits: token for token what ``generate`` gives with
  ``do_sample=False``. Sampling divides the logits by the temperature, keeps the nucleus ``top_p`` exactly
  as transformers' ``TopPLogitsWarper`` does (no top-k), and draws each token from the renormalised
  distribution by inverting its cumulative sum at one uniform number. The uniforms come from a
  ``torch.Generator`` per prompt (seeded by :func:`prompt_seed`), K numbers per step, so a prompt's
  samples do not depend on which other prompts share its batch or how many random numbers they used.
- Every drawn token carries ``log π(y_t | x, y_<t)`` at temperature 1 (the log-softmax of the raw logits,
  in fp32), which is what a sampled KL estimate needs, with no second scoring pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Draw:
    """One generation: the new token ids (cut after the first EOS, which is kept) and each one's
    log-probability under the model at temperature 1."""

    ids: list[int]
    logps: list[float]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config, in that order."""
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])]:
        if x is not None and x not in ids:
            ids.append(int(x))
    return ids


def prompt_seed(seed: int, index: int, ids: Sequence[int]) -> int:
    """The seed of one prompt's generator: a hash of the base seed, the prompt's index in the caller's
    full list and its token ids (63 bits)."""
    text = f"{seed}\0{index}\0{','.join(str(int(t)) for t in ids)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def nucleus(logits: Tensor, top_p: float) -> Tensor:
    """``logits`` with the tokens outside the nucleus set to -inf: transformers' ``TopPLogitsWarper``
    (sorted ascending, a token removed when the probability mass up to and including it is ≤ 1 − top_p,
    the most likely token always kept)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def _draw(logits: Tensor, uniforms: Tensor, temperature: float, top_p: float) -> Tensor:
    """One token per row from softmax(nucleus(logits / temperature)), by inverse CDF at ``uniforms``."""
    probs = nucleus(logits / temperature, top_p).softmax(dim=-1).double()
    cdf = probs.cumsum(dim=-1)
    at = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, at, right=True).squeeze(1).clamp(max=logits.shape[1] - 1)


def _forward(model: Any, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """The last position's fp32 logits and the updated cache."""
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[:, -1, :].float(), out.cache


def _batch(
    model: Any,
    prompts: list[list[int]],
    seeds: list[int],
    *,
    eos: list[int],
    pad: int,
    max_new_tokens: int,
    samples: int,
    temperature: float,
    top_p: float,
) -> list[list[Draw]]:
    """The ``samples`` draws of each prompt of one batch."""
    device = next(model.parameters()).device
    b, k, width = len(prompts), samples, max(len(p) for p in prompts)
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[j, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits, cache = _forward(model, ids, mask, pos, None)
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits, mask, pos = (t.repeat_interleave(k, dim=0) for t in (logits, mask, pos))
    last = pos[:, -1]
    alive = torch.arange(b * k, device=device)  # the running rows, as indices into the b·k draws
    toks: list[list[int]] = [[] for _ in range(b * k)]
    lps: list[list[float]] = [[] for _ in range(b * k)]
    gens = [torch.Generator().manual_seed(s) for s in seeds] if temperature > 0 else []
    eos_t = torch.tensor(eos, device=device)
    for step in range(max_new_tokens):
        if temperature > 0:
            running = sorted({int(r) // k for r in alive.tolist()})
            u = torch.zeros(b, k, dtype=torch.float64)
            for j in running:  # k numbers per running prompt and step, from that prompt's generator only
                u[j] = torch.rand(k, generator=gens[j], dtype=torch.float64)
            nxt = _draw(logits, u.view(-1).to(device)[alive], temperature, top_p)
        else:
            nxt = logits.argmax(dim=-1)
        lp = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0]
        for r, t, v in zip(alive.tolist(), nxt.tolist(), lp.tolist(), strict=True):
            toks[r].append(t)
            lps[r].append(v)
        keep = ~torch.isin(nxt, eos_t)
        if step == max_new_tokens - 1 or not bool(keep.any()):
            break
        if not bool(keep.all()):
            sel = keep.nonzero()[:, 0]
            cache.batch_select_indices(sel)
            alive, nxt, mask, last = alive[sel], nxt[sel], mask[sel], last[sel]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        last = last + 1
        logits, cache = _forward(model, nxt[:, None], mask, last[:, None], cache)
    return [[Draw(toks[j * k + s], lps[j * k + s]) for s in range(k)] for j in range(b)]


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    eos: Sequence[int],
    pad: int,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "generating",
    on_batch: Callable[[list[int], list[list[Draw]]], None] | None = None,
) -> list[list[Draw]]:
    """``samples`` draws per prompt (greedy at ``temperature`` 0: then ``samples`` must be 1).

    ``batch_size`` prompts per batch, longest first; ``seeds`` (one per prompt) default to
    :func:`prompt_seed` of ``seed`` and the prompt's index. ``on_batch(indices, draws)`` is called after
    each batch with the prompts' indices into ``prompts``.
    """
    from tqdm.auto import tqdm

    if temperature == 0 and samples != 1:
        raise ValueError("greedy decoding gives one generation per prompt")
    if seeds is None:
        seeds = [prompt_seed(seed, i, p) for i, p in enumerate(prompts)]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[Draw]] = [[] for _ in prompts]
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        got = _batch(
            model,
            [list(prompts[i]) for i in idx],
            [seeds[i] for i in idx],
            eos=list(eos),
            pad=pad,
            max_new_tokens=max_new_tokens,
            samples=samples,
            temperature=temperature,
            top_p=top_p,
        )
        for i, draws in zip(idx, got, strict=True):
            out[i] = draws
        if on_batch is not None:
            on_batch(idx, got)
    return out
