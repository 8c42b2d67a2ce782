"""What every metric group of ``tether eval`` shares: the loaded models with their log-prob tables and
generations (:class:`Loaded`), the data as examples and prompts, and what a group returns
(:class:`GroupResult`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.evaluation.generation as generation
from tether.engine.cache import cached_json, hash_key, load_or_fill, reference_table_path
from tether.engine.reference import compute_table
from tether.eval_result import Sample
from tether.evaluation.generation import decode, eos_ids


@dataclass(frozen=True)
class Seq:
    """An engine example (see :func:`tether.engine.logprobs.collate`)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


@dataclass(frozen=True)
class Sampling:
    """How generations are drawn: greedy at ``temperature`` 0, else sampled at ``temperature`` with
    nucleus ``top_p``; ``samples`` per prompt; ``seed`` seeds the sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0


@dataclass
class Prompt:
    """A distinct prompt of the data: its token ids, its row and the answer text generations are
    compared with."""

    ids: list[int]
    row: data_mod.Row
    reference_text: str


@dataclass
class Loaded:
    """What every metric group shares once the weights are loaded."""

    tokenizer: Any
    model: Any
    ref_model: Any
    pi: Any
    pi_ref: Any
    same: bool
    device: torch.device
    batch_size: int
    progress: bool
    dtype: str = "float32"
    ref_fingerprint: str | None = None
    """The reference's weights fingerprint; None: nothing of the reference is cached."""
    cache_root: Path | None = None
    cache_log: dict[str, str] = field(default_factory=dict)
    use_cache: bool = True
    """Whether judge scores are cached (``--no-cache`` turns every cache off)."""

    def sums(
        self,
        examples: Sequence[Any],
        desc: str,
        *,
        reference: bool = False,
        indices: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Summed response log-probs (``[n, 2]``) of the model, or of the reference (only ``indices``'
        rows filled when given)."""
        return compute_table(
            self.pi_ref if reference else self.pi,
            examples,
            batch_size=self.batch_size,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            indices=indices,
            desc=f"{desc} ({'reference' if reference else 'model'})",
            progress=self.progress,
        ).cpu()

    def both(
        self, examples: Sequence[Any], desc: str, *, cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's and the reference's tables (one pass when the reference is the model).

        The reference's table is read from (and written to) the reference log-prob cache directory, keyed by
        the reference's weights, the token ids, the dtype and the device type, unless ``cache`` is off."""
        pol = self.sums(examples, desc)
        if self.same:
            return pol, pol
        if not cache or self.ref_fingerprint is None or self.cache_root is None:
            return pol, self.sums(examples, desc, reference=True)
        table, status = load_or_fill(
            reference_table_path(
                self.cache_root, self.ref_fingerprint, examples, dtype=self.dtype, device=self.device.type
            ),
            range(len(examples)),
            lambda rows: self.sums(examples, desc, reference=True, indices=rows),
            n=len(examples),
            is_main=True,
            barrier=lambda: None,
        )
        self.cache_log[desc] = status
        return pol, table

    def generations(
        self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling, *, reference: bool = False
    ) -> list[list[str]]:
        """``sampling.samples`` generations per prompt of the model (or the reference), decoded without
        their EOS: greedy at temperature 0, else sampled (seeded with ``sampling.seed``)."""
        model = self.ref_model if reference else self.model
        eos = eos_ids(model, self.tokenizer)
        raw = generation.generate(
            model,
            self.tokenizer,
            ids,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            num_samples=sampling.samples,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            desc=f"generating ({'reference' if reference else 'model'})",
            progress=self.progress,
        )
        return [[decode(self.tokenizer, g.ids, eos) for g in gs] for gs in raw]

    def reference_generations(
        self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling
    ) -> list[list[str]]:
        """The reference's generations, cached by its weights, the prompts and the settings."""
        if self.ref_fingerprint is None or self.cache_root is None:
            return self.generations(ids, max_new_tokens, sampling, reference=True)
        settings = {
            "max_new_tokens": max_new_tokens,
            "eos": eos_ids(self.ref_model, self.tokenizer),
            "pad": self.tokenizer.pad_token_id,
            "batch_size": self.batch_size,  # left padding within a batch can flip a greedy token
            "dtype": self.dtype,
            "sampling": dataclasses.asdict(sampling) if sampling.temperature > 0 else sampling.samples,
            "v": 3,  # 3: the engine's decode loop, a generator per prompt
        }
        key = hash_key(self.ref_fingerprint, settings, self.device.type, ids)
        texts, self.cache_log["generating"] = cached_json(
            self.cache_root / "generations" / f"{key}.json",
            lambda: self.generations(ids, max_new_tokens, sampling, reference=True),
            lambda v: (
                isinstance(v, list)
                and len(v) == len(ids)
                and all(isinstance(x, list) and len(x) == sampling.samples for x in v)
            ),
        )
        return [[str(x) for x in xs] for xs in texts]


def response_lengths(examples: Sequence[Any]) -> torch.Tensor:
    """``[n, 2]``: the chosen and rejected responses' token counts (0 for no rejected response)."""
    return torch.tensor(
        [[len(e.chosen_ids), len(e.rejected_ids or [])] for e in examples], dtype=torch.float32
    )


@dataclass
class GroupInputs:
    """What a metric group's ``compute`` receives."""

    loaded: Loaded
    rows: list[data_mod.Row]
    kind: str
    groups: list[str]
    """Every group of this evaluation (a group may compute less when another one is there)."""
    examples: list[data_mod.Example]
    prompts: list[Prompt]
    """The distinct prompts generating groups use (the first ``--max-samples``)."""
    beta: float
    ref_based: bool | None
    """Whether the run's method is reference-based (None: not a run)."""
    sampling: Sampling
    max_new_tokens: int
    kl_samples: int
    judge: Any = None
    """The reward model scoring generations (:mod:`tether.evaluation.judge`), or None."""
    _tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def logprob_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's and the reference's summed log-probs of :attr:`examples` (computed once)."""
        if self._tables is None:
            self._tables = self.loaded.both(self.examples, "log-probs")
        return self._tables


@dataclass
class GroupResult:
    """A metric group's numbers: the model's, the reference's (where meaningful) and notes; the
    generation group also returns the win counts against the reference and one sample per prompt."""

    metrics: dict[str, Any] = field(default_factory=dict)
    reference_metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    win: dict[str, Any] | None = None
    samples: list[Sample] | None = None
    per_prompt: dict[str, list[Any]] = field(default_factory=dict)
    """Per-prompt outcomes by :class:`tether.eval_result.PromptOutcome` field name, one value per prompt
    of :attr:`GroupInputs.prompts` (a generating group's)."""
