"""``kl``: KL(π‖π_ref) ≈ the mean over completions y ~ π(·|x) (temperature 1, no top-k/top-p) of
Σ_t log π(y_t) − log π_ref(y_t): log π from the sampling pass itself (the engine keeps each drawn token's
log-probability at temperature 1), log π_ref scored by the log-prob engine."""

from __future__ import annotations

import torch

import tether.evaluation.generation as generation
from tether.evaluation.context import GroupInputs, GroupResult, Seq


def compute(inp: GroupInputs) -> GroupResult:
    """KL on ``kl_samples`` completions per prompt sampled from π (0 when the reference is π)."""
    ld, seed = inp.loaded, inp.sampling.seed
    if ld.same:
        zero = {"kl": [0.0] * len(inp.prompts)}
        return GroupResult(
            {"kl": 0.0, "kl/per_token": 0.0, "kl/samples": 0}, per_prompt=zero
        )  # 0 by construction
    drawn = generation.generate(
        ld.model,
        ld.tokenizer,
        [p.ids for p in inp.prompts],
        max_new_tokens=inp.max_new_tokens,
        batch_size=ld.batch_size,
        num_samples=inp.kl_samples,
        temperature=1.0,
        seed=seed,
        desc="sampling for KL",
        progress=ld.progress,
    )
    seqs = [Seq(list(p.ids), y.ids) for p, ys in zip(inp.prompts, drawn, strict=True) for y in ys]
    lp = torch.tensor([sum(y.logps) for ys in drawn for y in ys], dtype=torch.float32)
    lr = ld.sums(seqs, "KL", reference=True)[:, 0]  # the model's own samples: never cached
    n_tok = sum(len(s.chosen_ids) for s in seqs)
    return GroupResult(
        {
            "kl": float((lp - lr).mean()),
            "kl/per_token": float((lp - lr).sum() / n_tok),
            "kl/samples": len(seqs),
        },
        per_prompt={"kl": _per_prompt(lp - lr, [len(ys) for ys in drawn])},
    )


def _per_prompt(log_ratio: torch.Tensor, counts: list[int]) -> list[float]:
    """Each prompt's KL sample: the mean over its completions of Σ_t log π(y_t) − log π_ref(y_t)."""
    return [float(part.mean()) for part in torch.split(log_ratio, counts)]
