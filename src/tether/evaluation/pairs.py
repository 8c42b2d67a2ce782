"""``tether pairs``: on-policy preference pairs from a model and a judge (SimPO's "Instruct" protocol).

For each prompt of a data file, K completions are sampled from the model (the prompt rendered exactly as
training renders it; :mod:`tether.engine.sampling`: the prompt encoded once, a generator per prompt) and
scored by the judge: ``tasks`` (the bundled checker, 1 right / 0 wrong, for rows with ``source`` and
``answer``) or a one-output sequence-classification reward model (:mod:`tether.evaluation.judge`, its own
template). One pair per prompt: chosen = the highest score, rejected = the lowest; ties are broken by the
lower sample index (the first sample with the highest score is chosen, the first with the lowest score is
rejected). A prompt is dropped (and counted) when all its scores tie, when the gap is below ``min_gap``,
or when fewer than two of its samples are non-empty text (an empty response cannot be trained on).

Resumable and deterministic. The prompts are cut into a fixed partition of batches (by length, from the
whole list), each prompt's generator is seeded from ``seed``, its index and its token ids, and each
finished batch is appended (flushed and fsynced) to ``OUT.partial`` after a header line recording the
settings. The same command run again skips the finished batches (other settings are refused); the final
``OUT`` and ``OUT``'s ``.meta.json`` sidecar are written atomically at the end, and equal an uninterrupted
run's byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.engine.models as models
from tether.config import DataConfig
from tether.engine.sampling import generate, prompt_seed
from tether.errors import DataError, Problem, TetherError, whole_or_nothing
from tether.evaluation.generation import decode, eos_ids, pad_id
from tether.evaluation.target import Target, load, resolve_target

RESPONSE_FIELDS = ("chosen", "rejected", "completion", "label", "messages", "options")
"""A row's fields that a pair replaces (the others, e.g. ``source`` and ``answer``, are kept)."""
FORMAT = 1


@dataclass(frozen=True)
class PairsOptions:
    """The settings of ``tether pairs`` (its options)."""

    judge: str = "tasks"
    samples: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 8
    min_gap: float = 0.0
    chat_template: str | None = None
    progress: bool = True


@dataclass
class PairsResult:
    out: Path
    meta: dict[str, Any]
    resumed_batches: int


def _check_options(o: PairsOptions) -> None:
    if o.samples < 2:
        raise TetherError(f"--samples: a pair needs at least 2 samples per prompt, got {o.samples}")
    if not o.temperature > 0 or o.temperature != o.temperature or o.temperature == float("inf"):
        raise TetherError(f"--temperature: must be > 0 and finite (pairs are sampled), got {o.temperature}")
    if not 0 < o.top_p <= 1:
        raise TetherError(f"--top-p: must be in (0, 1], got {o.top_p}")
    if not 0 <= o.min_gap < float("inf"):
        raise TetherError(f"--min-gap: must be ≥ 0 and finite, got {o.min_gap}")
    if o.max_new_tokens < 1 or o.batch_size < 1:
        raise TetherError("--max-new-tokens and --batch-size: must be ≥ 1")


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )


def row_prompt(row: data_mod.Row) -> Any:
    """A row's prompt: its ``prompt`` field, else its ``messages`` before the last assistant turn."""
    if "prompt" in row.data:
        return row.data["prompt"]
    msgs = row.data.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        return msgs[:-1]
    return msgs


def read_prompt_rows(path: str, judge: str) -> tuple[list[data_mod.Row], list[Any]]:
    """The rows and their prompts; every problem (missing file, no prompt, a tasks row without ``source``
    or ``answer``) raised with file, line and field."""
    if not str(path).startswith("hf:") and not Path(path).is_file():
        raise DataError([Problem(str(path), None, None, "file not found")])
    rows = data_mod.read_rows(str(path))
    problems, prompts = [], []
    for r in rows:
        p = row_prompt(r)
        if p is None:
            problems.append(Problem(r.file, r.line, "prompt", "missing (no prompt or messages field)"))
        elif not _is_prompt(p):
            problems.append(
                Problem(r.file, r.line, "prompt", "must be a non-empty string or a list of {role, content}")
            )
        for f in ("source", "answer") if judge == "tasks" else ():
            if f not in r.data:
                problems.append(
                    Problem(r.file, r.line, f, "missing (the tasks judge checks source + answer)")
                )
        prompts.append(p)
    if problems:
        raise DataError(problems[:1])  # one line: the first problem
    return rows, prompts


def batches(ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The fixed partition of the prompts (indices) into batches: longest first, index breaking ties."""
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def pick(scores: Sequence[float], texts: Sequence[str], min_gap: float) -> tuple[int, int] | str:
    """The (chosen, rejected) sample indices, or why the prompt is dropped (``tied``, ``gap``, ``empty``).

    Only non-empty texts are eligible; chosen is the first with the highest score, rejected the first with
    the lowest score among texts that differ from the chosen one."""
    ok = [k for k, t in enumerate(texts) if t.strip()]
    if len(ok) < 2:
        return "empty"
    c = max(ok, key=lambda k: (scores[k], -k))
    rest = [k for k in ok if texts[k] != texts[c]]
    if not rest:
        return "tied"
    r = min(rest, key=lambda k: (scores[k], k))
    gap = scores[c] - scores[r]
    if gap <= 0:
        return "tied"
    return (c, r) if gap >= min_gap else "gap"


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return str(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _weights_hash(target: Target, path: Path) -> str:
    h = models.model_fingerprint(path)
    return h if target.adapter is None else f"{h}+{models.model_fingerprint(target.adapter)}"


def _version() -> str:
    """The installed package's version (``tether.__version__`` when tether is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tether")
    except PackageNotFoundError:
        import sys

        return str(sys.modules["tether"].__version__)


def _read_partial(path: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The finished prompts of a partial file (a torn last line is cut off); other settings refused."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    lines = raw[:end].decode().splitlines()
    try:
        first = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        first = None
    if first is None:
        path.unlink()  # killed before its header was whole: start again
        return {}
    if first != header:
        old, new = first.get("settings", {}), header["settings"]
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] or ["format"]
        raise TetherError(
            f"{path}: an unfinished run with other settings ({', '.join(diff)}); rerun it with the "
            "same command to finish it, or delete the file to start again"
        )
    done: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        for rec in json.loads(line)["prompts"]:
            done[int(rec["i"])] = rec
    if end < len(raw):
        with path.open("r+b") as f:  # the torn line a kill left
            f.truncate(end)
    return done


def _append(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with whole_or_nothing(
        lambda: tmp.unlink(missing_ok=True), path.parent, f"writing {path}", "nothing half-written was left"
    ):
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def meta_path(out: str | Path) -> Path:
    """``pairs.jsonl`` → ``pairs.meta.json``."""
    out = Path(out)
    return out.with_suffix(".meta.json") if out.suffix else out.with_name(out.name + ".meta.json")


def build_pairs(
    model: str, prompts_file: str, out: str | Path, options: PairsOptions | None = None
) -> PairsResult:
    """Sample, judge and pair; see the module docstring. Every input problem is raised before a weight
    loads; nothing is written then."""
    from tqdm.auto import tqdm

    o = options or PairsOptions()
    _check_options(o)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if out.exists():
        raise TetherError(f"--out {out}: exists; remove it or choose another file")
    if any(d.exists() and not d.is_dir() for d in [out.parent, *out.parent.parents]):
        raise TetherError(f"--out {out}: a parent of it is a file")
    rows, prompts = read_prompt_rows(prompts_file, o.judge)
    if o.judge != "tasks":
        from tether.evaluation.judge import check_judge

        check_judge(o.judge)
    target = resolve_target(model)
    models.check_generation_length(o.max_new_tokens, target.model_path)
    cfg = target.run_cfg
    run_data = cfg.data if cfg else DataConfig()
    template = o.chat_template or run_data.chat_template
    tokenization = dataclasses.replace(run_data.tokenization(), chat_template=template)
    path = models.resolve_model_dir(target.model_path, progress=o.progress)
    tokenizer = models.load_tokenizer(target.tokenizer_path or path)
    try:
        ids = tokenization.tokenize_prompts(prompts, tokenizer)
    except DataError as e:  # named by position: name the row instead
        p = e.problems[0]
        r = rows[(p.line or 1) - 1]
        raise DataError([Problem(r.file, r.line, "prompt", p.message)]) from None
    if o.judge == "tasks":
        judge_hash = "tasks"
    else:
        from tether.evaluation.judge import judge_fingerprint

        judge_hash = judge_fingerprint(o.judge)
    settings = {
        "model": str(model),
        "model_weights": _weights_hash(target, path),
        "prompts": str(prompts_file),
        "prompts_sha256": _file_digest(prompts_file),
        "judge": o.judge,
        "judge_weights": judge_hash,
        "samples": o.samples,
        "temperature": o.temperature,
        "top_p": o.top_p,
        "max_new_tokens": o.max_new_tokens,
        "seed": o.seed,
        "batch_size": o.batch_size,
        "chat_template": template,
    }
    header = {"tether_pairs": FORMAT, "settings": settings}
    done = _read_partial(partial, header)  # refuses other settings before a weight loads
    plan = batches(ids, o.batch_size)
    todo = [b for b in plan if not all(i in done for i in b)]

    if todo:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = cfg.model.dtype if cfg else "float32"
        lm = load(str(path), target.adapter, dtype, device, o.progress)
        judge = None
        if o.judge != "tasks":
            from tether.evaluation.judge import load_judge

            judge = load_judge(o.judge, device)
        if not partial.exists() or partial.stat().st_size == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(partial, json.dumps(header, ensure_ascii=False) + "\n")
        eos = eos_ids(lm, tokenizer)
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="pairs", disable=not o.progress)
        for b in todo:
            draws = generate(
                lm,
                [ids[i] for i in b],
                eos=eos,
                pad=pad_id(lm, tokenizer),
                max_new_tokens=o.max_new_tokens,
                batch_size=len(b),
                samples=o.samples,
                temperature=o.temperature,
                top_p=o.top_p,
                seeds=[prompt_seed(o.seed, i, ids[i]) for i in b],
                progress=False,
            )
            texts = [[decode(tokenizer, d.ids, eos) for d in ds] for ds in draws]
            scores = _judge(judge, [rows[i] for i in b], [prompts[i] for i in b], texts, o.batch_size)
            recs = [
                {"i": i, "texts": t, "scores": s, "tokens": [len(d.ids) for d in ds]}
                for i, t, s, ds in zip(b, texts, scores, draws, strict=True)
            ]
            _append(partial, {"prompts": recs})
            done.update({r["i"]: r for r in recs})
            bar.update(1)
        bar.close()

    lines, counts = [], {"prompts": len(rows), "pairs": 0, "tied": 0, "gap": 0, "empty": 0}
    for i, row in enumerate(rows):
        rec = done[i]
        got = pick(rec["scores"], rec["texts"], o.min_gap)
        if isinstance(got, str):
            counts[got] += 1
            continue
        c, r = got
        kept = {k: v for k, v in row.data.items() if k not in RESPONSE_FIELDS}
        pair = {
            **kept,
            "prompt": prompts[i],
            "chosen": rec["texts"][c],
            "rejected": rec["texts"][r],
            "provenance": {
                "scores": rec["scores"],
                "chosen_index": c,
                "rejected_index": r,
                "samples": rec["texts"],
            },
        }
        lines.append(json.dumps(pair, ensure_ascii=False) + "\n")
        counts["pairs"] += 1
    counts["dropped"] = counts["prompts"] - counts["pairs"]
    counts["generated_tokens"] = sum(sum(done[i]["tokens"]) for i in range(len(rows)))
    meta = {
        **settings,
        "min_gap": o.min_gap,
        "tie_break": "chosen: the first sample with the highest score; rejected: the first with the lowest",
        "tether_version": _version(),
        "counts": counts,
    }
    _write_atomic(meta_path(out), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(out, "".join(lines))
    partial.unlink(missing_ok=True)
    return PairsResult(out, meta, len(plan) - len(todo))


def _judge(
    judge: Any, rows: list[data_mod.Row], prompts: list[Any], texts: list[list[str]], batch_size: int
) -> list[list[float]]:
    """Each sample's score: the task checker's 1/0, or the reward model's (one batch of generations)."""
    if judge is None:
        import tether.data.tasks as tasks

        return [[float(tasks.check(r.data, t)) for t in ts] for r, ts in zip(rows, texts, strict=True)]
    from tether.evaluation.judge import score

    flat_p = [p for p, ts in zip(prompts, texts, strict=True) for _ in ts]
    got = score(judge, flat_p, [t for ts in texts for t in ts], desc="judge", batch_size=batch_size)
    k = len(texts[0])
    return [got[j * k : (j + 1) * k] for j in range(len(texts))]
