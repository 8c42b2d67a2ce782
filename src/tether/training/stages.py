"""sDPO (Kim et al. 2024, "sDPO: Don't Use Your Data All at Once", arXiv:2403.19270, §2, Alg. 1).

The preference data are split into ordered chunks D_1..D_T. Stage t initialises the target from M_{t-1}
and uses the *frozen M_{t-1}* as its reference (M_0 = the configured model); it is a plain DPO-family run
on D_t. With LoRA, stage t's starting model is stage t−1's model with its adapter merged, and a fresh
adapter is trained on top, so the adapter-disabled reference is M_{t-1}, not the original base.

Each stage writes a full run directory ``<output_dir>/stage-<t>``; ``gamma_ref`` (mean over D_t of
log π_ref(y_w) − log π_ref(y_l)) is measured at the stage's start with that stage's reference.
A resumed run skips finished stages and resumes the unfinished one at its last checkpoint.

A stage's own ``config.yaml`` reproduces that stage alone: it keeps the split (``stages``) with
``stages.stage: t`` and has M_{t-1} as ``model.name`` (so also as the reference), so ``tether train
stage-<t>/config.yaml train.output_dir=...`` trains D_t from M_{t-1} again, into that directory.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import defaultdict
from pathlib import Path

from tether.config import Config
from tether.errors import ConfigError, TetherError
from tether.rundir import RunDir
from tether.training.run import Prepared, RunResult, plot, prepare, train


def prepare_stages(cfg: Config, *, convert: bool = True) -> tuple[Prepared, list[list]]:
    """Every stage's data checked (no weights loaded): the prepared run and the chunks D_1..D_T
    (``convert``: see :func:`tether.training.run.prepare`)."""
    s = cfg.stages
    assert s is not None
    p = prepare(cfg, train_specs=list(s.files) if s.by == "files" else None, convert=convert)
    chunks = p.by_file if s.by == "files" else split_examples(cfg, p)
    for i, chunk in enumerate(chunks, start=1):
        if not chunk:
            raise TetherError(f"stages: stage {i} has no examples")
    p.report["stages"] = len(chunks)
    return p, chunks


def split_examples(cfg: Config, p: Prepared) -> list[list]:
    """D_1..D_T from the configured strategy (``column`` or ``random``); ``files`` is handled by the caller."""
    s = cfg.stages
    assert s is not None
    examples = p.train
    if s.by == "column":
        column = s.column
        missing = [e for e in examples if column not in e.meta]
        if missing:
            e = missing[0]
            raise ConfigError(f"stages.column: {e.file}:{e.line} has no column '{column}'")
        by_value: dict[str, list] = defaultdict(list)
        for e in examples:
            by_value[str(e.meta[column])].append(e)
        for v in s.order:
            if v not in by_value:
                raise ConfigError(
                    f"stages.order: value '{v}' does not occur in column '{column}' of {cfg.data.train} "
                    f"(values present: {', '.join(sorted(by_value))})"
                )
        unlisted = sorted(set(by_value) - set(s.order))
        if unlisted:
            n = sum(len(by_value[v]) for v in unlisted)
            raise ConfigError(
                f"stages.order: {n} rows of {cfg.data.train} have {column} values not listed "
                f"({', '.join(unlisted)}); list them or filter the data"
            )
        return [by_value[v] for v in s.order]
    # stratified random split: each group (by column, if given) is cut by the fractions
    rng = random.Random(cfg.train.seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[str(e.meta.get(s.column)) if s.column else ""].append(i)
    chunks: list[list[int]] = [[] for _ in s.fractions]
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        bounds = [round(sum(s.fractions[: i + 1]) * len(members)) for i in range(len(s.fractions))]
        start = 0
        for i, end in enumerate(bounds):
            chunks[i].extend(members[start:end])
            start = end
    for i, c in enumerate(chunks):
        if not c:
            raise ConfigError(f"stages.fractions: stage {i + 1} gets no examples ({len(examples)} in all)")
    return [[examples[i] for i in sorted(c)] for c in chunks]  # file order within a stage


def _chunks(cfg: Config) -> list[list] | None:
    """D_1..D_T for ``column``/``random`` (None for ``files``: each stage reads its own file)."""
    assert cfg.stages is not None
    return None if cfg.stages.by == "files" else split_examples(cfg, prepare(cfg))


def _prepare_stage(cfg: Config, t: int, chunks: list[list] | None) -> Prepared:
    """Stage ``t``'s prepared run: ``cfg``'s data (held-out rows included) with D_t as the training rows."""
    s = cfg.stages
    assert s is not None
    p = prepare(cfg, train_specs=[s.files[t - 1]] if chunks is None else None)
    if chunks is not None:
        p.train = chunks[t - 1]
        p.report = {**p.report, "train_examples": len(p.train)}
    if not p.train:
        raise ConfigError(f"stages: stage {t} has no examples")
    return p


def _stage_config(cfg: Config, t: int, start_model: str) -> Config:
    """Stage ``t`` of ``cfg`` as a config of its own (what its ``config.yaml`` records): the split with
    ``stages.stage: t``, ``start_model`` (M_{t-1}) as the model and so as the reference."""
    assert cfg.stages is not None
    c = copy.deepcopy(cfg)
    c.stages = dataclasses.replace(cfg.stages, stage=t)
    c.model.name = start_model
    c.train.output_dir = str(RunDir(cfg.train.output_dir).stage(t).path)
    if cfg.model.lora is not None:
        c.train.save_merged = True  # the next stage starts from (and is referenced by) the merged model
    return c


def _final_model(stage: RunDir, lora: bool) -> str:
    return str(stage.merged if lora else stage.final)


def train_stages(cfg: Config) -> RunResult:
    """Run every sDPO stage in order; returns the last stage's result with ``stages`` filled in. With
    ``stages.stage`` set, only that stage, from ``model.name``, as a plain run in ``train.output_dir``."""
    s = cfg.stages
    assert s is not None
    chunks = _chunks(cfg)
    if s.stage is not None:
        return train(cfg, prepared=_prepare_stage(cfg, s.stage, chunks), measure_gamma_ref=True)
    root = RunDir(cfg.train.output_dir)
    n_stages = len(s.files) if chunks is None else len(chunks)
    start = cfg.model.name
    results: list[dict] = []
    last: RunResult | None = None
    for t in range(1, n_stages + 1):
        stage_cfg = _stage_config(cfg, t, start)
        stage = root.stage(t)
        if cfg.train.resume and stage.summary.exists():
            summary = stage.read_summary()
            results.append(
                {
                    "stage": t,
                    "examples": summary["data"]["train_examples"],
                    "gamma_ref": summary.get("gamma_ref"),
                    "final_model": summary["final_model_dir"],
                }
            )
        else:
            p = _prepare_stage(stage_cfg, t, chunks)
            last = train(stage_cfg, prepared=p, measure_gamma_ref=True)
            results.append(
                {
                    "stage": t,
                    "examples": len(p.train),
                    "gamma_ref": last.gamma_ref,
                    "final_model": str(last.final_model_dir),
                }
            )
        start = _final_model(stage, cfg.model.lora is not None)
    root.write_stages(results)
    if last is None:  # every stage was already finished
        summary = root.stage(n_stages).read_summary()
        last = RunResult(
            **{
                **summary,
                "run_dir": Path(summary["run_dir"]),
                "final_model_dir": Path(summary["final_model_dir"]),
            }
        )
    last.stages = results
    last.run_dir = root.path
    last.plots = plot(root.path)
    return last
