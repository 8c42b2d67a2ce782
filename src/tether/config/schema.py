"""The run configuration's sections as dataclasses: each key's type, default and help (the string below
it), and :data:`RANGES`, the allowed range of every number. Read and checked by :mod:`tether.config.load`,
listed by :mod:`tether.config.docs`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.data.tokenize import Tokenization
from tether.methods.registry import Bound, Method, get_method


@dataclass
class LoraConfig:
    """LoRA through ``peft`` (``model.lora``; omit the section for full fine-tuning)."""

    r: int = 16
    """Rank of the LoRA update matrices."""
    alpha: int = 32
    """LoRA scaling numerator: updates are scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the LoRA input (set to 0 with every other dropout while ``train.disable_dropout`` is
    true, the default)."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt (e.g. ``[q_proj, v_proj]``), or ``all-linear`` for every linear layer but the
    output head."""


@dataclass
class ModelConfig:
    """Which model to train."""

    name: str = "smollm2"
    """``smollm2`` (the embedded SmolLM2-135M-Instruct, converted once from its GGUF), a hub id, a local
    model directory or a ``.gguf`` file."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded and trained in."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter instead of all weights (a mapping with the ``model.lora.*`` keys; null: full
    fine-tuning)."""


@dataclass
class DataConfig:
    """Training data."""

    train: str = ""
    """Training rows: a .jsonl/.json/.parquet path or ``hf:<dataset>`` (required, unless ``stages.by:
    files``)."""
    eval: str | None = None
    """Held-out rows, same formats (evaluated every ``train.eval_every`` steps and at the end)."""
    eval_fraction: float = 0.0
    """Without ``data.eval``: hold out this fraction of the training rows (no prompt shared with train)."""
    split: str = "train"
    """The split of an ``hf:`` training dataset to read (e.g. ``train_prefs``)."""
    eval_split: str | None = None
    """The split of an ``hf:`` eval dataset to read (null: ``split``); the training dataset and split as eval
    is refused."""
    max_length: int = 512
    """Token budget per row (prompt + response); longer responses are cut at their end and counted."""
    max_prompt_length: int | None = None
    """Keep only the last this-many prompt tokens (null: prompts are not cut)."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """How string rows are rendered: ``auto`` (the model's chat template when it has one), ``always``,
    ``never`` (raw text, EOS appended). Message lists always use the template; a string already holding
    the template's markers is used as written."""
    assistant_turns: Literal["all", "last"] = "all"
    """Which assistant turns of an SFT conversation get loss: ``all`` (every assistant message without
    ``weight: 0``; the turns between them are context) or ``last`` (the final one only)."""
    drop_long_prompts: bool = False
    """Drop (and count) rows whose prompt leaves no room for a response, instead of an error."""
    limit: int | None = None
    """Use only the first this-many training rows (null: all)."""
    eval_limit: int | None = None
    """Use only the first this-many eval rows (null: all)."""

    def tokenization(self) -> Tokenization:
        """How these rows become token ids: the one value training, evaluation and ``tether generate``
        tokenize with (a plain model, with no run config, gets ``DataConfig()``'s)."""
        return Tokenization(
            self.max_length,
            self.max_prompt_length,
            self.chat_template,
            self.drop_long_prompts,
            self.assistant_turns,
        )


@dataclass
class MethodConfig:
    """The method (``tether losses`` lists them) and its hyper-parameters, e.g. ``{name: dpo, beta: 0.1}``."""

    name: str = "dpo"
    """The training method (``tether losses`` lists them with their papers)."""
    params: dict[str, float] = field(default_factory=dict)
    """The method's hyper-parameters; written beside ``name`` (``method: {name: dpo, beta: 0.1}``)."""


@dataclass
class ReferenceConfig:
    """How reference log-probs are obtained."""

    mode: Literal["auto", "copy", "adapter", "precomputed", "none"] = "auto"
    """``auto`` (``adapter`` with LoRA, else ``precomputed``; ``copy`` for a method whose reference is
    updated during training, TR-DPO), ``copy`` (frozen copy in memory),
    ``adapter`` (the policy with its LoRA adapter disabled), ``precomputed`` (computed once, cached on
    disk: summed log-probs, and for a method that needs the reference's logits (ε-DPO) its final hidden
    states at the response tokens plus its output head, refused above ``max_cache_gb``), ``none`` (no
    reference; only for methods that do not need one)."""
    model: str | None = None
    """A different reference model, same tokenizer (null: the starting model)."""
    cache_dir: str | None = None
    """Where precomputed references are cached (null: ``$TETHER_CACHE`` or ``~/.cache/tether``)."""
    max_cache_gb: float = 8.0
    """Largest precomputed reference-logits cache (ε-DPO: hidden states at response tokens) to build."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    output_dir: str = "runs/tether"
    """The run directory written (config, metrics, checkpoints, ``final/``)."""
    seed: int = 0
    """Seed of the data order, dropout and initialisation of new weights."""
    lr: float = 5e-6
    """Peak learning rate (AdamW)."""
    batch_size: int = 4
    """Rows per process and micro-batch; the global batch is ``batch_size × grad_accum × processes``."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_steps: int | None = None
    """Optimizer steps to run (null: ``epochs`` decides)."""
    epochs: float = 1.0
    """Passes over the training rows, when ``max_steps`` is null (fractions allowed)."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after the warm-up."""
    warmup_ratio: float = 0.0
    """Warm-up length as a fraction of the run (used when ``warmup_steps`` is 0)."""
    warmup_steps: int = 0
    """Warm-up length in steps (wins over ``warmup_ratio``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.999
    """AdamW β2."""
    adam_eps: float = 1e-8
    """AdamW ε."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (null: no clipping)."""
    log_every: int = 1
    """Write a ``metrics.jsonl`` line every this-many steps (and at the last)."""
    eval_every: int | None = None
    """Evaluate on the eval rows every this-many steps (null: only at the start and the end)."""
    eval_at_start: bool | None = None
    """Evaluate before the first step, so eval curves start at the reference (one eval pass; null:
    on whenever there is eval data)."""
    save_every: int | None = None
    """Checkpoint every this-many steps (null: only the final step, which is always checkpointed)."""
    save_total_limit: int | None = 2
    """Keep the newest this-many checkpoints (null: all)."""
    save_optimizer: bool = True
    """Checkpoints hold optimizer and scheduler state (false: weights only, smaller; a resume restarts the
    optimizer moments)."""
    save_on_signal: bool = True
    """On SIGTERM (a cluster preempting the job), finish the current step, write a checkpoint and exit with
    code 143; a second SIGTERM stops at once (false: stop at once, losing the steps since the last save)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` (the config must match)."""
    resume_allowed_changes: list[str] = field(default_factory=list)
    """Config keys a resume may change besides the bookkeeping ones (e.g. ``[train.lr]``)."""
    overwrite: bool = False
    """Replace a run already in ``output_dir`` instead of refusing."""
    disable_dropout: bool = True
    """Set the model's dropout to 0 (as preference trainers do: the policy and reference see the same
    network)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Also log metrics to these sinks."""
    logprob_chunk: int = 256
    """Response positions per chunk through the output head: the peak memory of the logits is a few
    ``[logprob_chunk, vocab]`` fp32 tensors (256 × 49152 × 4 B = 50 MB each for SmolLM2)."""
    share_prompt: bool = True
    """A pair runs as one sequence ``prompt | chosen | rejected`` (the prompt once; exact)."""
    packing: bool = True
    """A micro-batch's rows run packed into one sequence, attention per row, no padding (exact)."""
    save_merged: bool = False
    """With LoRA, also save the merged full model in ``final/merged``."""
    progress: bool = True
    """Show progress bars and the model-loading lines on stderr."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """``bf16``: the policy's forward and backward under bf16 autocast with fp32 weights, gradients and
    optimizer state (TRL's ``bf16``; CPU and GPU). The reference
    (precomputed or frozen copy) stays in ``model.dtype``. ``no``: the weights' own dtype throughout."""
    sharding: Literal["none", "fsdp"] = "none"
    """``fsdp``: parameters, gradients and optimizer state sharded across the processes with PyTorch's
    FSDP2 (``fully_shard`` per decoder layer, then the whole model); checkpoints hold the full state and
    resume on any process count. Works on CPU processes (gloo) and GPUs; a no-op on one process."""


@dataclass
class StagesConfig:
    """sDPO: the preference data split into ordered chunks, one DPO stage each."""

    by: Literal["column", "random", "files"] = "column"
    """``column`` (rows grouped by ``column`` value, stages in ``order``), ``random`` (stratified random
    split by ``column`` if given, with ``fractions``), or ``files`` (one file per stage)."""
    column: str | None = None
    """The data column that names each row's stage (``by: column``) or stratifies the split (``random``)."""
    order: list[str] = field(default_factory=list)
    """``by: column``: the column's values, one per stage, in training order."""
    fractions: list[float] = field(default_factory=list)
    """``by: random``: one fraction of the rows per stage, summing to 1."""
    files: list[str] = field(default_factory=list)
    """``by: files``: one data file per stage, in training order."""
    stage: int | None = None
    """Train only this stage (1-based) of the split, from ``model.name`` as the previous stage's model and
    reference, into ``train.output_dir`` itself; each stage's own ``config.yaml`` records it (null: every
    stage)."""


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training (and held-out) data."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """The method and its hyper-parameters."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """How the reference model's log-probs are obtained."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and bookkeeping."""
    stages: StagesConfig | None = None
    """sDPO: train in ordered stages, each referenced by the previous stage's model (null: one run)."""

    # Filled by validate(): the method object and its resolved hyper-parameters.
    def resolved_method(self) -> tuple[Method, dict[str, float]]:
        method = get_method(self.method.name)
        return method, method.hparams(self.method.params)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = {"name": self.method.name, **self.method.params}
        return d


def _at_least(low: float) -> Bound:
    return Bound(low, math.inf, low_open=False)


_POSITIVE = Bound(0.0)  # (0, inf)
_FRACTION = Bound(0.0, 1.0, low_open=False)  # [0, 1)

RANGES: dict[str, Bound] = {
    "model.lora.r": _at_least(1),
    "model.lora.alpha": _at_least(1),
    "model.lora.dropout": _FRACTION,
    "data.eval_fraction": _FRACTION,
    "data.max_length": _at_least(2),
    "data.max_prompt_length": _at_least(1),
    "data.limit": _at_least(1),
    "data.eval_limit": _at_least(1),
    "train.seed": Bound(0, 2**32 - 1, low_open=False, high_open=False),  # numpy's seed range
    "train.lr": _POSITIVE,
    "train.batch_size": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.max_steps": _at_least(1),
    "train.epochs": _POSITIVE,
    "train.warmup_ratio": _FRACTION,
    "train.warmup_steps": _at_least(0),
    "train.weight_decay": _at_least(0),
    "train.adam_beta1": _FRACTION,
    "train.adam_beta2": _FRACTION,
    "train.adam_eps": _POSITIVE,
    "train.max_grad_norm": _POSITIVE,  # null: no clipping
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(1),
    "train.save_every": _at_least(1),
    "train.save_total_limit": _at_least(1),
    "train.logprob_chunk": _at_least(1),
    "stages.fractions": _POSITIVE,
    "stages.stage": _at_least(1),
    "reference.max_cache_gb": _POSITIVE,
}
"""The allowed range of every number in the config (``null`` stays allowed where the type has it), checked
as each value is read; every float must also be finite. Method hyper-parameters are bounded in
:mod:`tether.methods.registry`."""


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def range_text(bound: Bound) -> str:
    """``> 0``, ``≥ 1``, ``in [0, 1)``: how a range is worded in errors and in ``tether config``."""
    if bound.low == -math.inf and bound.high == math.inf:
        return "any number"
    if bound.high == math.inf:
        return f"{'>' if bound.low_open else '≥'} {_num(bound.low)}"
    if bound.low == -math.inf:
        return f"{'<' if bound.high_open else '≤'} {_num(bound.high)}"
    lo, hi = "(" if bound.low_open else "[", ")" if bound.high_open else "]"
    return f"in {lo}{_num(bound.low)}, {_num(bound.high)}{hi}"


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def section_class(tp: Any) -> Any:
    """The dataclass a field holds (``X`` or ``X | None``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
