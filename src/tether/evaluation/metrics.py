"""Evaluation metrics as pure functions of correctness vectors, texts and log-prob tables.

Reward and deviation come from the losses' own definitions (:mod:`tether.methods.losses`), so a
held-out number means exactly what the training metric of the same name means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tether.contract import LossInputs, SequenceLogps
from tether.methods import losses


def win_rate(model_correct: Sequence[bool], reference_correct: Sequence[bool]) -> dict[str, Any]:
    """Win = model correct and reference wrong (1), tie = both right or both wrong (0.5), loss = 0."""
    if len(model_correct) != len(reference_correct):
        raise ValueError("win_rate: the two correctness vectors differ in length")
    n = len(model_correct)
    wins = sum(bool(m) and not bool(r) for m, r in zip(model_correct, reference_correct, strict=True))
    losses = sum(bool(r) and not bool(m) for m, r in zip(model_correct, reference_correct, strict=True))
    ties = n - wins - losses
    return {"win_rate": (wins + 0.5 * ties) / n if n else None, "wins": wins, "ties": ties, "losses": losses}


def bootstrap_interval(
    values: Sequence[float], *, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """The ``level`` percentile interval of the mean of ``values`` (one per prompt) over ``n_boot``
    resamplings with replacement (``numpy.random.default_rng(seed)``: a fixed seed, a fixed interval)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1.0 - alpha))


def preference_rate(
    model: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict[str, Any]:
    """Win rate of the model's responses against another's, judged by a score, with a bootstrap
    confidence interval over prompts.

    ``model[i]`` holds the scores of prompt i's samples; ``other[i]`` the scores they are compared with:
    one (a chosen answer, compared with every sample) or one per sample (the reference's samples, compared
    in order). A comparison is a win (1) when the model's score is higher, a tie (½) when equal, a loss
    (0) when lower; a prompt's value is the mean over its comparisons and the win rate is the mean over
    prompts. The interval is the ``level`` percentile interval of that mean over ``n_boot`` resamplings of
    the prompts with replacement (``numpy.random.default_rng(seed)``, so a fixed seed gives a fixed
    interval).
    """
    import numpy as np

    if len(model) != len(other):
        raise ValueError("preference_rate: the two score lists differ in length (prompts)")
    values, wins, ties, losses = [], 0, 0, 0
    for ms, os_ in zip(model, other, strict=True):
        if len(os_) not in (1, len(ms)) or not ms:
            raise ValueError("preference_rate: give one comparison score per prompt, or one per sample")
        pairs = [(m, os_[0] if len(os_) == 1 else os_[k]) for k, m in enumerate(ms)]
        w = sum(m > o for m, o in pairs)
        t = sum(m == o for m, o in pairs)
        wins, ties, losses = wins + w, ties + t, losses + len(pairs) - w - t
        values.append((w + 0.5 * t) / len(pairs))
    if not values:
        return {"win_rate": None, "ci_low": None, "ci_high": None, "wins": 0, "ties": 0, "losses": 0}
    low, high = bootstrap_interval(values, seed=seed, n_boot=n_boot, level=level)
    return {
        "win_rate": float(np.mean(values)),
        "ci_low": low,
        "ci_high": high,
        "wins": int(wins),
        "ties": int(ties),
        "losses": int(losses),
    }


def text_metrics(generations: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 (sacrebleu, 0-100; effective order, so one- and two-word answers still count) and the
    mean ROUGE-1/2/L F1 (rouge-score with the Porter stemmer, 0-1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    gens, refs = list(generations), list(references)
    if len(gens) != len(refs):
        raise ValueError("text_metrics: generations and references differ in length")
    if not gens:
        return {}
    bleu = sacrebleu.corpus_bleu(gens, [refs], use_effective_order=True).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for g, r in zip(gens, refs, strict=True):
        scores = scorer.score(r, g)  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {"bleu": float(bleu), **{k: v / len(gens) for k, v in totals.items()}}


def logps_inputs(pol: torch.Tensor, ref: torch.Tensor, n_tokens: torch.Tensor, paired: bool) -> LossInputs:
    """The loss contract of held-out rows from ``[n, 2]`` summed log-prob tables of the model and the
    reference (column 0: chosen/completion, 1: rejected) and ``[n, 2]`` response token counts."""
    return LossInputs(
        chosen=SequenceLogps(pol[:, 0], n_tokens[:, 0]),
        rejected=SequenceLogps(pol[:, 1], n_tokens[:, 1]) if paired else None,
        ref_chosen=ref[:, 0],
        ref_rejected=ref[:, 1] if paired else None,
    )


def deviation_metrics(inp: LossInputs) -> dict[str, float]:
    """MinorSFT's m_θ (and on rejected answers) as the training runs log it, averaged over the rows."""
    dev = losses.reference_metrics(inp)
    return {k: float(dev[k].mean()) for k in ("deviation", "deviation/rejected") if k in dev}


def pairwise_metrics(inp: LossInputs, beta: float) -> dict[str, float]:
    """Reward accuracy/margin (β·(r_w − r_l) > 0, the training metric ``rewards/*``) and likelihood
    accuracy/margin (avg_w > avg_l)."""
    assert inp.rejected is not None and inp.ref_chosen is not None and inp.ref_rejected is not None
    reward = losses.reward_metrics(beta, inp.chosen.sum - inp.ref_chosen, inp.rejected.sum - inp.ref_rejected)
    lik = inp.chosen.avg - inp.rejected.avg
    return {
        "pairwise/reward_accuracy": float(reward["rewards/accuracies"].mean()),
        "pairwise/reward_margin": float(reward["rewards/margins"].mean()),
        "pairwise/likelihood_accuracy": float((lik > 0).float().mean()),
        "pairwise/likelihood_margin": float(lik.mean()),
    }
