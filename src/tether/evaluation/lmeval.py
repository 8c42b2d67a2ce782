"""The lm-evaluation-harness adapter: runs its tasks on an already loaded model, never fatally."""

from __future__ import annotations

from typing import Any


def run_lm_eval(model: Any, tokenizer: Any, tasks: list[str], batch_size: int, limit: int | None):
    """(``{task/metric: value}``, None) or (None, a one-line note saying why it was skipped)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None, "lm-eval: skipped (lm-evaluation-harness is not installed; pip install lm-eval)"
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
    except Exception as exc:  # missing data offline, unknown task, ...: skipped, never fatal
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"lm-eval: skipped ({first[:200]})"
    out = {}
    for task, values in ((res or {}).get("results") or {}).items():
        for metric, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"lm_eval/{task}/{metric.replace(',none', '')}"] = float(v)
    return out, None
