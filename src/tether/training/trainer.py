"""The training loop: small and linear. No loss math and no method names here; the loop reads the
method's declared capabilities.

One optimizer step consumes one *global batch* of ``batch_size × grad_accum × processes`` examples, in a
deterministic order drawn from the seed and the epoch. The loss of a micro-batch is
``Σ per-example losses × processes / global batch size``, so after gradient accumulation (and DDP's
averaging over processes) the gradient is exactly that of the mean loss over the global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tether.config import TrainConfig
from tether.engine.logprobs import Batch, LogProbModel, collate, loss_inputs
from tether.engine.reference import Reference
from tether.errors import TetherError
from tether.methods.registry import Method
from tether.rundir import CHECKPOINTS, METRICS

STATE_FILE = "trainer_state.json"


class TrainingDiverged(TetherError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class Schedule:
    """Which examples each optimizer step uses: a seeded permutation per epoch, cut into global batches.

    The tail of each epoch's permutation that does not fill a global batch is skipped (a different tail
    every epoch), so every step has exactly ``global_batch`` examples on every process count.
    """

    n_examples: int
    global_batch: int
    seed: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_batch

    def step_indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_examples, generator=g)
        return perm[k * self.global_batch : (k + 1) * self.global_batch].tolist()

    def used_indices(self) -> list[int]:
        """Every example index some step of the run will use."""
        if self.total_steps >= self.steps_per_epoch:
            return list(range(self.n_examples))  # a full epoch may still skip a tail; cheap to include
        return sorted({i for s in range(self.total_steps) for i in self.step_indices(s)})

    def micro_batches(self, step: int, micro: int, world: int, rank: int) -> list[list[int]]:
        """This process's share of each micro-batch of the step."""
        idx = self.step_indices(step)
        per = micro * world
        return [idx[j : j + per][rank * micro : (rank + 1) * micro] for j in range(0, len(idx), per)]


def make_schedule(n_examples: int, cfg: TrainConfig, world: int) -> Schedule:
    global_batch = cfg.batch_size * cfg.grad_accum * world
    if n_examples < global_batch:
        raise TetherError(
            f"train.batch_size: the global batch ({cfg.batch_size} × grad_accum {cfg.grad_accum} × {world} "
            f"processes = {global_batch}) is larger than the training set ({n_examples} examples)"
        )
    spe = n_examples // global_batch
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * spe))
    return Schedule(n_examples, global_batch, cfg.seed, total)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = cfg.warmup_steps or round(cfg.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class MetricsSink:
    """``metrics.jsonl`` always; TensorBoard / Weights & Biases when asked. Main process only."""

    def __init__(self, run_dir: Path, report_to: Sequence[str], config: dict, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.writers: list = []
        if not enabled:
            return
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TetherError("train.report_to: tensorboard needs `pip install tensorboard`") from e
            self.writers.append(SummaryWriter(str(run_dir / "tensorboard")))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise TetherError("train.report_to: wandb needs `pip install wandb`") from e
            self.writers.append(wandb.init(project="tether", dir=str(run_dir), config=config))

    def truncate_after(self, step: int) -> None:
        """On resume: forget lines logged after the checkpoint, so the run's log stays one sequence."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step
        ]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        for w in self.writers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            if hasattr(w, "add_scalar"):
                for k, v in scalars.items():
                    w.add_scalar(k, v, step)
            else:
                w.log(scalars, step=step)

    def close(self) -> None:
        for w in self.writers:
            (w.close if hasattr(w, "close") else w.finish)()


@dataclass
class StepInputs:
    """What one micro-batch needs from the outside world."""

    examples: Sequence
    pad_id: int
    split: str = "train"


@dataclass
class TrainResult:
    steps: int
    hparams: dict[str, float]
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    peak_rss_mb: float = 0.0


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover
        return float("nan")


def _adamw(params: list, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where this torch supports it on ``device``."""
    kw = {
        "lr": cfg.lr,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay,
    }
    try:
        return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda"), **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


class Trainer:
    """Runs the optimisation of a prepared policy against a reference with a registered method."""

    def __init__(
        self,
        *,
        accelerator,
        policy: LogProbModel,
        method: Method,
        hparams: dict[str, float],
        reference: Reference | None,
        cfg: TrainConfig,
        run_dir: Path,
        train_examples: Sequence,
        eval_examples: Sequence,
        pad_id: int,
        sink: MetricsSink,
    ):
        self.acc = accelerator
        self.method = method
        self.hparams = dict(hparams)
        self.reference = reference
        self.cfg = cfg
        self.run_dir = run_dir
        self.train_examples = train_examples
        self.eval_examples = eval_examples
        self.pad_id = pad_id
        self.sink = sink
        self.schedule = make_schedule(len(train_examples), cfg, accelerator.num_processes)
        # prompt sharing and packing where both the policy and the reference run them exactly
        segments_ok = (cfg.share_prompt or cfg.packing) and policy.supports_segments()
        segments_ok = segments_ok and (reference is None or reference.supports_segments())
        self.layout = {
            "share_prompt": cfg.share_prompt and segments_ok,
            "packing": cfg.packing and segments_ok,
        }
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = _adamw(params, cfg, accelerator.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, self.schedule.total_steps)
        )
        self.policy, self.optimizer = accelerator.prepare(policy, self.optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.step = 0

    # ---------------------------------------------------------------------------------------------
    # One micro-batch: log-probs → loss inputs → method
    # ---------------------------------------------------------------------------------------------

    def _forward(self, batch: Batch, split: str):
        ref_sum = ref_hidden = ref_head = None
        if self.reference is not None:
            ref_sum, ref_hidden, ref_head = self.reference(
                batch, split, want_hidden=self.method.needs_reference_logits
            )
        mix = None
        if self.method.reference_logits is not None:
            fn, hp = self.method.reference_logits, dict(self.hparams)
            mix = lambda z, z_ref, y: fn(z, z_ref, y, hp)  # noqa: E731
        rows = self.policy(batch, ref_hidden=ref_hidden, ref_head=ref_head, mix=mix)
        return self.method(loss_inputs(rows, batch, ref_sum), self.hparams)

    def _batch(self, idx: list[int], examples: Sequence) -> Batch:
        return collate([examples[i] for i in idx], idx, self.pad_id, **self.layout).to(self.acc.device)

    def _reduce(self, sums: dict[str, Tensor], count: Tensor) -> tuple[dict[str, float], float]:
        """Sums over the global batch (all micro-batches, all processes) and the number of examples."""
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys] + [count]).to(self.acc.device)
        vec = self.acc.reduce(vec, "sum") if self.acc.num_processes > 1 else vec
        return {k: vec[i].item() for i, k in enumerate(keys)}, vec[-1].item()

    @staticmethod
    def _accumulate(sums: dict[str, Tensor], out) -> None:
        for k, v in [("loss", out.losses.detach().float()), *out.metrics.items()]:
            sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v.double().sum().cpu()

    # ---------------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        world = self.acc.num_processes
        micro = self.schedule.micro_batches(self.step, self.cfg.batch_size, world, self.acc.process_index)
        scale = world / self.schedule.global_batch
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64)
        tokens = torch.zeros((), dtype=torch.float64)
        bad = torch.zeros((), dtype=torch.float64)
        self.policy.train()
        for j, idx in enumerate(micro):
            batch = self._batch(idx, self.train_examples)
            sync = j == len(micro) - 1
            ctx = self.acc.no_sync(self.policy) if not sync and world > 1 else contextlib.nullcontext()
            with ctx:
                out = self._forward(batch, "train")
                self.acc.backward(out.losses.sum() * scale)
            bad += float(not torch.isfinite(out.losses.detach()).all())
            self._accumulate(sums, out)
            count += len(idx)
            tokens += batch.n_tokens
        totals, n = self._reduce({**sums, "_nonfinite": bad, "_tokens": tokens}, count)
        nonfinite, n_tokens = totals.pop("_nonfinite"), totals.pop("_tokens")
        means = {k: v / n for k, v in totals.items()}
        if nonfinite > 0:
            raise TrainingDiverged(
                f"step {self.step + 1}: loss is NaN or infinite; training stopped"
                f"{self._last_checkpoint_note()}"
            )
        means["tokens"] = n_tokens
        grad_norm = None
        if self.cfg.max_grad_norm is not None:
            grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:
            means["grad_norm"] = float(grad_norm)
        means["lr"] = self.scheduler.get_last_lr()[0]
        for k, v in self.hparams.items():
            means[f"hparams/{k}"] = v
        if self.method.on_optimizer_step is not None:
            self.hparams = self.method.on_optimizer_step(self.hparams, means)
            for key, name in self.method.state_metrics.items():
                means[name] = self.hparams[key]
        self.step += 1
        return means

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss and metrics over the held-out examples (split across processes)."""
        if not self.eval_examples:
            return {}
        self.policy.eval()
        world, rank = self.acc.num_processes, self.acc.process_index
        mine = list(range(rank, len(self.eval_examples), world))
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64)
        bs = self.cfg.batch_size
        for s in range(0, len(mine), bs):
            idx = mine[s : s + bs]
            self._accumulate(sums, self._forward(self._batch(idx, self.eval_examples), "eval"))
            count += len(idx)
        if not sums:  # more processes than eval examples: keep the reduction shapes equal
            sums = {"loss": torch.zeros((), dtype=torch.float64)}
        self.policy.train()
        totals, n = self._reduce(sums, count)
        return {f"eval/{k}": v / max(n, 1.0) for k, v in totals.items()}

    # ---------------------------------------------------------------------------------------------
    # Checkpoints
    # ---------------------------------------------------------------------------------------------

    def checkpoint_dirs(self) -> list[Path]:
        root = self.run_dir / CHECKPOINTS
        if not root.is_dir():
            return []
        done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def _last_checkpoint_note(self) -> str:
        dirs = self.checkpoint_dirs()
        return f"; last good checkpoint: {dirs[-1]}" if dirs else "; no checkpoint was written yet"

    def save_checkpoint(self) -> Path:
        """Model, optimizer, scheduler and RNG states (accelerate) plus step and method state (β), atomically."""
        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{self.step:07d}"
        tmp = root / f".tmp-step-{self.step:07d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {"step": self.step, "hparams": self.hparams, "total_steps": self.schedule.total_steps}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            limit = self.cfg.save_total_limit
            if limit is not None:
                for old in self.checkpoint_dirs()[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint, if any: same data position, optimizer, RNG, β."""
        dirs = self.checkpoint_dirs()
        if not dirs:
            return False
        self.acc.load_state(str(dirs[-1]))
        state = json.loads((dirs[-1] / STATE_FILE).read_text())
        self.step = state["step"]
        self.hparams = {k: float(v) for k, v in state["hparams"].items()}
        if self.acc.is_main_process:
            self.sink.truncate_after(self.step)
        return True

    def fit(self) -> TrainResult:
        total = self.schedule.total_steps
        cfg = self.cfg
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            disable=not (cfg.progress and self.acc.is_main_process),
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        tokens = 0
        last: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        while self.step < total:
            t0 = time.perf_counter()
            means = self.train_step()
            dt = time.perf_counter() - t0
            tokens += int(means["tokens"])
            means["step_seconds"] = dt
            means["tokens_per_second"] = means["tokens"] / dt
            last = means
            if self.step % cfg.log_every == 0 or self.step == total:
                self.sink.log(
                    {"step": self.step, "epoch": self.step / self.schedule.steps_per_epoch, **means}
                )
            bar.update(1)
            bar.set_postfix(loss=f"{means['loss']:.4f}", tok_s=f"{means['tokens_per_second']:.0f}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < total:
                eval_metrics = self.evaluate()
                self.sink.log({"step": self.step, **eval_metrics})
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < total:
                self.save_checkpoint()
        bar.close()
        if self.eval_examples:
            eval_metrics = self.evaluate()
            self.sink.log({"step": self.step, **eval_metrics})
        return TrainResult(
            steps=self.step,
            hparams=self.hparams,
            last_metrics=last,
            eval_metrics=eval_metrics,
            seconds=time.perf_counter() - start,
            tokens=tokens,
            peak_rss_mb=_peak_rss_mb(),
        )
