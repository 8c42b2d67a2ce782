"""``generation``: generations of the model and the reference (left padding, batched, stop at EOS; greedy,
or ``samples_per_prompt`` sampled at ``temperature``/``top_p``): task success (overall and per family),
the win rates against the held-out chosen answers and against the reference's generations (judged by
the reward model ``--judge``, else by the task checker), the mean reward, BLEU/ROUGE, one sample per
prompt."""

from __future__ import annotations

from typing import Any

from tether.eval_result import Sample
from tether.evaluation.context import GroupInputs, GroupResult, Loaded, Prompt
from tether.evaluation.metrics import (
    bootstrap_interval,
    length_controlled_win_rate,
    preference_rate,
    sample_preferences,
    text_metrics,
)

NO_TASKS = "task success and win rate: skipped (no row has both 'source' and 'answer'; try --judge)"
NO_TEXT_METRICS = "BLEU/ROUGE: skipped (needs sacrebleu and rouge-score: pip install 'tether[eval]')"


def rate_columns(name: str, rate: dict[str, Any]) -> dict[str, Any]:
    """``name`` (the win rate), ``name/ci_low``, ``name/ci_high``."""
    return {name: rate["win_rate"], f"{name}/ci_low": rate["ci_low"], f"{name}/ci_high": rate["ci_high"]}


def _success(prompts: list[Prompt], checkable: list[int], c: dict[int, list[bool]], seed: int) -> dict:
    """Task success (the mean over prompts of the fraction of correct samples), its interval, per family."""
    per_prompt = [sum(v) / len(v) for v in c.values()]
    low, high = bootstrap_interval(per_prompt, seed=seed)
    out = {
        "generation/success": sum(per_prompt) / len(per_prompt),
        "generation/success/ci_low": low,
        "generation/success/ci_high": high,
    }
    for fam in sorted({str(prompts[i].row.data["source"]) for i in checkable}):
        fam_i = [i for i in checkable if str(prompts[i].row.data["source"]) == fam]
        out[f"generation/success/{fam}"] = sum(sum(c[i]) / len(c[i]) for i in fam_i) / len(fam_i)
    return out


def _judged(
    ld: Loaded, judge: Any, prompts: list[Prompt], texts: list[list[str]], desc: str
) -> list[list[float]]:
    """The reward model's score of each text (one list per prompt)."""
    from tether.evaluation.judge import score

    prompt_of = [p.row.data.get("prompt", p.row.data.get("messages", "")) for p in prompts]
    flat = [(prompt_of[i], t) for i, ts in enumerate(texts) for t in ts]
    got = score(
        judge,
        [f[0] for f in flat],
        [f[1] for f in flat],
        desc=desc,
        batch_size=ld.batch_size,
        cache_root=ld.cache_root if ld.use_cache else None,
    )
    out, k = [], 0
    for ts in texts:
        out.append(got[k : k + len(ts)])
        k += len(ts)
    return out


def compute(inp: GroupInputs) -> GroupResult:
    import tether.data.tasks as tasks

    ld, prompts, sampling, judge = inp.loaded, inp.prompts, inp.sampling, inp.judge
    seed = sampling.seed
    ids = [p.ids for p in prompts]
    gen = ld.generations(ids, inp.max_new_tokens, sampling)
    rgen = gen if ld.same else ld.reference_generations(ids, inp.max_new_tokens, sampling)
    chosen = [p.reference_text for p in prompts]
    checkable = [i for i, p in enumerate(prompts) if "source" in p.row.data and "answer" in p.row.data]
    ok = {i: [tasks.check(prompts[i].row.data, g) for g in gen[i]] for i in checkable}
    rok = {i: [tasks.check(prompts[i].row.data, g) for g in rgen[i]] for i in checkable}
    cok = {i: tasks.check(prompts[i].row.data, chosen[i]) for i in checkable}
    m: dict[str, Any] = {}
    rm: dict[str, Any] = {}
    notes: list[str] = []
    win = None
    if checkable:
        m["generation/n"] = len(checkable)
        m.update(_success(prompts, checkable, ok, seed))
        rm.update(_success(prompts, checkable, rok, seed))
    scores = rscores = cscores = None
    if judge is not None:
        scores = _judged(ld, judge, prompts, gen, "model")
        rscores = scores if ld.same else _judged(ld, judge, prompts, rgen, "reference")
        cscores = _judged(ld, judge, prompts, [[c] for c in chosen], "chosen")
        mean = lambda xs: sum(x for s in xs for x in s) / sum(len(s) for s in xs)  # noqa: E731
        m["judge/reward"], rm["judge/reward"] = mean(scores), mean(rscores)
        m["judge/reward_chosen"] = mean(cscores)
        vs_chosen = preference_rate(scores, cscores, seed=seed)
        win = preference_rate(scores, rscores, seed=seed)
        m.update(rate_columns("win_rate/chosen", vs_chosen))
        rm.update(rate_columns("win_rate/chosen", preference_rate(rscores, cscores, seed=seed)))
    elif checkable:  # the offline judge: the task checker (1 correct, 0 wrong)
        as_score = lambda c: [[float(x) for x in c[i]] for i in checkable]  # noqa: E731
        chosen_score = [[float(cok[i])] for i in checkable]
        vs_chosen = preference_rate(as_score(ok), chosen_score, seed=seed)
        win = preference_rate(as_score(ok), as_score(rok), seed=seed)
        m.update(rate_columns("win_rate/chosen", vs_chosen))
        rm.update(rate_columns("win_rate/chosen", preference_rate(as_score(rok), chosen_score, seed=seed)))
    else:
        notes.append(NO_TASKS)
    if win is not None:
        m.update(rate_columns("win_rate", win))
        m.update({f"win/{k}": win[k] for k in ("wins", "ties", "losses")})
    refs = [p.reference_text for p in prompts]
    try:
        m.update(text_metrics([g[0] for g in gen], refs))
        rm.update(text_metrics([g[0] for g in rgen], refs))
    except ImportError:
        notes.append(NO_TEXT_METRICS)
    samples = []
    for i, p in enumerate(prompts):
        s = Sample(
            file=p.row.file,
            line=p.row.line,
            prompt=p.row.data.get("prompt"),
            target=p.reference_text,
            model=gen[i][0],
            reference=rgen[i][0],
            correct=ok[i][0] if i in ok else None,
            reference_correct=rok[i][0] if i in rok else None,
        )
        if sampling.samples > 1:
            s.model_samples, s.reference_samples = gen[i], rgen[i]
        if scores is not None and rscores is not None and cscores is not None:
            s.reward, s.reference_reward, s.target_reward = scores[i], rscores[i], cscores[i][0]
        samples.append(s)
    per_prompt = _per_prompt(prompts, gen, chosen, checkable, ok, scores, rscores, cscores, rok, cok)
    if judge is not None:  # the length-controlled win rate against the chosen answers
        flat = lambda key: [x for v in per_prompt[key] for x in v]  # noqa: E731
        lc_chosen = [per_prompt["chosen_length"][i] for i, v in enumerate(gen) for _ in v]
        m["win_rate/chosen/lc"] = length_controlled_win_rate(
            flat("win_chosen_samples"), flat("length_samples"), lc_chosen
        )
    return GroupResult(m, rm, notes, win, samples, per_prompt)


def _per_prompt(prompts, gen, chosen, checkable, ok, scores, rscores, cscores, rok, cok) -> dict:  # type: ignore[no-untyped-def]
    """Each prompt's outcomes (:class:`tether.eval_result.PromptOutcome`'s fields, None where not
    measured): success, judge score, outcome against the chosen answer and the reference, lengths."""
    n = len(prompts)
    out: dict[str, list] = {
        "length": [sum(len(g) for g in gs) / len(gs) for gs in gen],
        "length_samples": [[len(g) for g in gs] for gs in gen],
        "chosen_length": [len(c) for c in chosen],
    }
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    if checkable:
        out["success"] = [mean([float(x) for x in ok[i]]) if i in ok else None for i in range(n)]
    if scores is not None:
        out["judge"] = [mean(s) for s in scores]
        vs_chosen, vs_ref = sample_preferences(scores, cscores), sample_preferences(scores, rscores)
    elif checkable:
        score = lambda c, i: [float(x) for x in c[i]]  # noqa: E731
        vs_chosen = [None] * n
        vs_ref = [None] * n
        for i in checkable:
            vs_chosen[i] = sample_preferences([score(ok, i)], [[float(cok[i])]])[0]
            vs_ref[i] = sample_preferences([score(ok, i)], [score(rok, i)])[0]
    else:
        return out
    out["win_chosen_samples"] = vs_chosen
    out["win_chosen"] = [mean(v) if v is not None else None for v in vs_chosen]
    out["win_reference"] = [mean(v) if v is not None else None for v in vs_ref]
    return out
