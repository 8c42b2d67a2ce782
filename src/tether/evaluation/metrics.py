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

    outcomes = sample_preferences(model, other)
    values = [sum(o) / len(o) for o in outcomes]
    wins = sum(x == 1.0 for o in outcomes for x in o)
    ties = sum(x == 0.5 for o in outcomes for x in o)
    losses = sum(len(o) for o in outcomes) - wins - ties
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


def sample_preferences(
    model: Sequence[Sequence[float]], other: Sequence[Sequence[float]]
) -> list[list[float]]:
    """Each sample's outcome against what it is compared with (see :func:`preference_rate`): 1 when its
    score is higher, ½ when equal, 0 when lower; one list per prompt."""
    if len(model) != len(other):
        raise ValueError("preference_rate: the two score lists differ in length (prompts)")
    out = []
    for ms, os_ in zip(model, other, strict=True):
        if len(os_) not in (1, len(ms)) or not ms:
            raise ValueError("preference_rate: give one comparison score per prompt, or one per sample")
        pairs = [(m, os_[0] if len(os_) == 1 else os_[k]) for k, m in enumerate(ms)]
        out.append([1.0 if m > o else 0.5 if m == o else 0.0 for m, o in pairs])
    return out


def length_controlled_win_rate(
    preferences: Sequence[float], lengths: Sequence[float], baseline_lengths: Sequence[float]
) -> float | None:
    """AlpacaEval 2's length-controlled win rate (Dubois et al. 2024, arXiv:2404.04475, §3; the
    ``length_controlled_v1`` GLM of ``alpaca_eval/metrics/glm_winrate.py``), for one model against one
    baseline.

    Each comparison i has a preference y_i ∈ [0, 1] for the model's output (1 win, ½ tie, 0 loss) and the
    length difference δ_i = len(baseline_i) − len(output_i) (characters), standardized by its sample
    standard deviation (ddof 1). The GLM is logit P(win_i) = θ + φ·tanh(δ_i / sd(δ)), fitted by maximum
    likelihood of the soft labels y_i (cross-entropy, as AlpacaEval's ``is_ytrue_proba``); the
    length-controlled win rate is its prediction at zero length difference, σ(θ).

    Where it differs from AlpacaEval's: AlpacaEval also has a per-instruction difficulty term ψ·γ_i
    (γ_i estimated across many models' outputs on the same instructions) and regularizes θ towards
    "gamed" baseline models, fitting with L1-penalized, cross-validated logistic regression; with a single
    model there is no γ (its prediction averaged over instructions is then σ(θ)) and no gamed baselines,
    so the fit is plain maximum likelihood. When length separates the outcomes perfectly no finite fit
    exists (the estimate runs to the bound |·| ≤ 50): then None, not a number the bound chose. All wins
    (losses) give 1 (0); no spread in δ gives the raw win rate. None without comparisons."""
    import numpy as np
    from scipy.optimize import minimize

    y = np.asarray(preferences, dtype=np.float64)
    if y.size == 0:
        return None
    if (y == 1).all() or (y == 0).all():
        return float(y[0])
    delta = np.asarray(baseline_lengths, dtype=np.float64) - np.asarray(lengths, dtype=np.float64)
    sd = delta.std(ddof=1) if delta.size > 1 else 0.0
    x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + w[1] * x  # −[y log σ(z) + (1 − y) log σ(−z)] = log(1 + e^z) − y z
        p = np.exp(-np.logaddexp(0.0, -z))
        g = p - y
        return float(np.mean(np.logaddexp(0.0, z) - y * z)), np.array([g.mean(), (g * x).mean()])

    fit = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-50, 50)] * 2,
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000})  # fmt: skip
    decisive = (y == 0) | (y == 1)
    fitted = np.exp(-np.logaddexp(0.0, -(fit.x[0] + fit.x[1] * x)))
    if np.abs(fit.x).max() >= 50 - 1e-6 or (decisive.any() and (np.abs(fitted - y)[decisive] < 1e-6).all()):
        return None  # length separates the wins from the losses: no finite estimate exists
    return float(np.exp(-np.logaddexp(0.0, -fit.x[0])))


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
