"""The training loop: small and linear. No loss math and no method names here; the loop reads the
method's declared capabilities.

One optimizer step consumes one *global batch* of ``batch_size × grad_accum × processes`` examples, in a
deterministic order drawn from the seed and the epoch. The loss of a micro-batch is
``Σ per-example losses × processes / global batch size``, so after gradient accumulation (and DDP's
averaging over processes) the gradient is exactly that of the mean loss over the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tether.config import TrainConfig
from tether.contract import LossInputs
from tether.engine.logprobs import Batch, LogProbModel, collate, loss_inputs
from tether.engine.reference import Reference
from tether.engine.scores import RowScores, ScoreModel, row_values, score_inputs
from tether.errors import TetherError
from tether.methods.registry import Method
from tether.training import sharding
from tether.training.checkpoints import Checkpoints, TrainState
from tether.training.preempt import Preempted, StopOnSignal
from tether.training.schedule import lr_scheduler, make_schedule
from tether.training.sink import MetricsSink, peak_rss_mb


class TrainingDiverged(TetherError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""

    exit_code = 3


@dataclass
class TrainResult:
    steps: int
    hparams: dict[str, float]
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    peak_rss_mb: float = 0.0


def _adamw(params: list, cfg: TrainConfig, device: torch.device, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where this torch supports it on ``device``."""
    kw = {
        "lr": cfg.lr,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay,
    }
    try:
        return torch.optim.AdamW(params, fused=fused and device.type in ("cpu", "cuda"), **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


class Trainer:
    """Runs the optimisation of a prepared policy against a reference with a registered method. What a
    checkpoint saves and restores is ``self.state`` (:class:`~tether.training.checkpoints.TrainState`)."""

    def __init__(
        self,
        *,
        accelerator,
        policy: LogProbModel | ScoreModel,
        method: Method,
        hparams: dict[str, float],
        reference: Reference | None,
        cfg: TrainConfig,
        run_dir: Path,
        train_examples: Sequence,
        eval_examples: Sequence,
        pad_id: int,
        sink: MetricsSink,
        run_config: dict | None = None,
        data_fingerprint: dict[str, str] | None = None,
    ):
        self.acc = accelerator
        self.method = method
        self.reference = reference
        self.cfg = cfg
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
        self.sharded = self._shard(policy, reference)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = _adamw(params, cfg, accelerator.device, fused=not self.sharded)
        scheduler = lr_scheduler(optimizer, cfg, self.schedule.total_steps)
        if self.sharded:
            self.policy = policy  # FSDP2 in place: nothing for accelerate to wrap
        else:
            self.policy, optimizer = accelerator.prepare(policy, optimizer)
        self.optimizer = optimizer
        if method.live_reference and accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
            raise TetherError(
                f"method.name: '{method.name}' mixes the policy's parameters into its reference, which needs "
                "whole (unsharded) parameters on every process; launch with DDP (or one process), not FSDP/DeepSpeed"
            )
        live = reference.model if method.live_reference and reference is not None else None
        self.state = TrainState(
            accelerator,
            self.policy,
            optimizer,
            scheduler,
            self.schedule.total_steps,
            dict(hparams),
            sharded=self.sharded,
            live_reference=live,
            start_max_abs=sharding.max_abs(params),
        )
        self.checkpoints = Checkpoints(run_dir, cfg, run_config, data_fingerprint)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def hparams(self) -> dict[str, float]:
        return self.state.hparams

    # ---------------------------------------------------------------------------------------------
    # Sharding (train.sharding: fsdp; see tether.training.sharding)
    # ---------------------------------------------------------------------------------------------

    def _shard(self, policy: LogProbModel, reference: Reference | None) -> bool:
        """Shard the policy (and a frozen-copy reference) in place with FSDP2 when asked and there is more
        than one process; whether it did."""
        cfg, acc = self.cfg, self.acc
        if not sharding.active(cfg, acc.num_processes):
            if sharding.wanted(cfg) and acc.is_main_process:
                print(
                    "note: train.sharding fsdp on one process: nothing to shard (checkpoints hold the full state)"
                )
            return False
        sharding.shard(policy, acc.device, acc.num_processes)
        what = "policy"
        if reference is not None and reference.mode == "copy" and reference.model is not None:
            sharding.shard(reference.model, acc.device, acc.num_processes)
            what = "policy and reference"
        if acc.is_main_process:
            print(f"sharding: {what} sharded across {acc.num_processes} processes (FSDP2)", flush=True)
        return True

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP: no gradient all-reduce before the step's last micro-batch. FSDP2 reduce-scatters every
        micro-batch instead (the gradients stay sharded; the sum of the reductions is that of the sum)."""
        if last or self.acc.num_processes == 1 or self.sharded:
            return contextlib.nullcontext()
        return self.acc.no_sync(self.policy)

    def _clip_grad_norm(self) -> Tensor:
        if self.sharded:
            return sharding.clip_grad_norm_(list(self.policy.parameters()), self.cfg.max_grad_norm)
        return self.acc.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)

    def full_policy(self, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """The trained model (the ``LogProbModel``'s inner model), unsharded, on the main process; None on the
        others. Sharded: every process calls it; the main one fills ``rebuild()`` (the model as loaded at
        the start) with the gathered weights."""
        if not self.sharded:
            return self.acc.unwrap_model(self.policy).model if self.acc.is_main_process else None
        state = sharding.full_model_state(self.policy)
        if not self.acc.is_main_process:
            return None
        model = rebuild()
        LogProbModel(model).load_state_dict(state)
        return model

    # ---------------------------------------------------------------------------------------------
    # One micro-batch: log-probs → loss inputs → method
    # ---------------------------------------------------------------------------------------------

    def _forward(self, batch: Batch, split: str):
        return self.method(self._inputs(batch, split), self.hparams)

    def _ref(self, batch: Batch, split: str) -> tuple:
        """The reference's summed log-probs (and hidden states, head) of ``batch``; Nones without one."""
        if self.reference is None:
            return None, None, None
        return self.reference(batch, split, want_hidden=self.method.needs_reference_logits)

    def _inputs(self, batch: Batch, split: str, ref: tuple | None = None) -> LossInputs:
        ref_sum, ref_hidden, ref_head = ref if ref is not None else self._ref(batch, split)
        mix = None
        if self.method.reference_logits is not None:
            fn, hp = self.method.reference_logits, dict(self.hparams)
            mix = lambda z, z_ref, y: fn(z, z_ref, y, hp)  # noqa: E731
        bf16 = self.cfg.mixed_precision == "bf16"  # autocast over fp32 weights (TRL's bf16)
        with torch.autocast(self.acc.device.type, dtype=torch.bfloat16, enabled=bf16):
            rows = self.policy(batch, ref_hidden=ref_hidden, ref_head=ref_head, mix=mix)
        if isinstance(rows, RowScores):  # a score head (its method declares head "score"): no reference
            examples = self.train_examples if split == "train" else self.eval_examples
            values = row_values(examples, batch.index.tolist(), self.method.row_values)
            values = None if values is None else {k: v.to(self.acc.device) for k, v in values.items()}
            return score_inputs(rows, batch, values)
        origin = None if self.reference is None else self.reference.origin_chosen(batch, split)
        inp = loss_inputs(rows, batch, ref_sum, origin)
        stat = self.method.across_processes
        if stat is not None and split == "train" and self.acc.num_processes > 1:
            # every process runs the same number of training micro-batches, so the collective lines up
            inp = dataclasses.replace(inp, process_mean=self.acc.reduce(stat(inp).detach(), "mean"))
        return inp

    def _plan(self, stats: list[Tensor]) -> tuple[dict[str, float], dict[str, Tensor]]:
        """The step's :class:`~tether.methods.registry.BatchPlan`: this process's per-example statistic of
        each micro-batch (``stats``) gathered over processes into the global batch's order, then the method's
        plan, with draws seeded from the run's seed and the step (identical on every process and resume)."""
        plan = self.method.batch_plan
        assert plan is not None
        world, rank = self.acc.num_processes, self.acc.process_index
        pos = [p for ps in self.schedule.positions(self.cfg.batch_size, world, rank) for p in ps]
        local = torch.stack([torch.tensor(pos, dtype=torch.float64), torch.cat(stats).double().cpu()], 1)
        pairs = self.acc.gather(local.to(self.acc.device)).cpu() if world > 1 else local
        values = torch.empty(self.schedule.global_batch, dtype=torch.float64)
        values[pairs[:, 0].long()] = pairs[:, 1]
        gen = torch.Generator().manual_seed((self.cfg.seed << 32) + self.step)
        return plan.plan(self.hparams, values, gen, len(stats))

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
        """Sums of the micro-batch's losses and metrics; a metric with a ``where`` mask also sums the mask
        (under ``_w:<name>``), so that its mean is over the masked examples (``LossOutput.add``)."""
        weights = getattr(out, "weights", {})
        for k, v in [("loss", out.losses.detach().float()), *out.metrics.items()]:
            if k in weights:
                w = weights[k].double()
                sums[f"_w:{k}"] = sums.get(f"_w:{k}", torch.zeros((), dtype=torch.float64)) + w.sum().cpu()
                v = v.double() * w
            sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v.double().sum().cpu()

    @staticmethod
    def _means(totals: dict[str, float], n: float) -> dict[str, float]:
        """Global-batch means: over all examples, or over a masked metric's examples (none: not logged)."""
        out = {}
        for k, v in totals.items():
            if k.startswith("_w:"):
                continue
            w = totals.get(f"_w:{k}", n)
            if w > 0:
                out[k] = v / w
        return out

    # ---------------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        world = self.acc.num_processes
        micro = self.schedule.micro_batches(self.step, self.cfg.batch_size, world, self.acc.process_index)
        scale = world / self.schedule.global_batch
        self.policy.train()
        # A loss that depends on the whole global batch (BatchPlan): with one micro-batch per process the
        # statistic comes from the step's own forward, with several from a no-grad pre-pass.
        plan, hparams, per_example = self.method.batch_plan, self.hparams, None
        batches = refs = None
        if plan is not None and len(micro) > 1:  # the pre-pass's batches and reference outputs are reused
            batches = [self._batch(idx, self.train_examples) for idx in micro]
            with torch.no_grad():
                refs = [self._ref(b, "train") for b in batches]
                stats = [
                    plan.statistic(self._inputs(b, "train", r)) for b, r in zip(batches, refs, strict=True)
                ]
            hparams, per_example = self._plan(stats)
        positions = self.schedule.positions(self.cfg.batch_size, world, self.acc.process_index)
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64)
        tokens = torch.zeros((), dtype=torch.float64)
        bad = torch.zeros((), dtype=torch.float64)
        for j, idx in enumerate(micro):
            batch = batches[j] if batches else self._batch(idx, self.train_examples)
            sync = j == len(micro) - 1
            with self._no_sync(sync):
                inp = self._inputs(batch, "train", refs[j] if refs else None)
                if plan is not None and per_example is None:
                    hparams, per_example = self._plan([plan.statistic(inp)])
                mine = None if per_example is None else {k: v[positions[j]] for k, v in per_example.items()}
                out = self.method(inp, hparams, mine)
                self.acc.backward(out.losses.sum() * scale)
            bad += float(not torch.isfinite(out.losses.detach()).all())
            self._accumulate(sums, out)
            count += len(idx)
            tokens += batch.n_tokens
        totals, n = self._reduce({**sums, "_nonfinite": bad, "_tokens": tokens}, count)
        nonfinite, n_tokens = totals.pop("_nonfinite"), totals.pop("_tokens")
        means = self._means(totals, n)
        if nonfinite > 0:
            raise TrainingDiverged(
                f"step {self.step + 1}: loss is NaN or infinite; training stopped"
                f"{self.checkpoints.last_good_note(self.state)}"
            )
        means["tokens"] = n_tokens
        grad_norm = None
        if self.cfg.max_grad_norm is not None:
            grad_norm = self._clip_grad_norm()
        self.optimizer.step()
        self.state.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:
            means["grad_norm"] = float(grad_norm)
        state = self.state
        state.health[state.step + 1] = {"loss": means["loss"], "grad_norm": means.get("grad_norm", 0.0)}
        means["lr"] = state.scheduler.get_last_lr()[0]
        for k, v in hparams.items():  # a batch plan's state after this step
            means[f"hparams/{k}"] = v
        state.hparams = self.method.after_optimizer_step(state.step + 1, hparams, means, self._mix_reference)
        means.update(self.method.state_values(state.hparams, state.reference_updates))
        state.step += 1
        return means

    def _mix_reference(self, alpha: float) -> None:
        """The live reference mixed with the policy (the same parameters on every process under DDP, so
        every process's copy stays the same)."""
        assert self.reference is not None
        self.reference.mix_from(self.acc.unwrap_model(self.policy), alpha)
        self.state.reference_updates += 1

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
        n_batches = math.ceil(len(mine) / bs)
        if self.sharded:  # every forward all-gathers: each process runs as many (a short one: a spare)
            n_batches = math.ceil(math.ceil(len(self.eval_examples) / world) / bs)
        for s in range(0, n_batches * bs, bs):
            idx = mine[s : s + bs]
            part: dict[str, Tensor] = {}
            self._accumulate(part, self._forward(self._batch(idx or [0], self.eval_examples), "eval"))
            for k, v in part.items():
                sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + (v if idx else 0 * v)
            count += len(idx)
        if not sums:  # more processes than eval examples: keep the reduction shapes equal
            sums = {"loss": torch.zeros((), dtype=torch.float64)}
        self.policy.train()
        totals, n = self._reduce(sums, count)
        return {f"eval/{k}": v for k, v in self._means(totals, max(n, 1.0)).items()}

    def resume(self) -> bool:
        """Continue from the newest usable checkpoint, if any (see :meth:`Checkpoints.resume`); the
        metrics log forgets what was logged after it."""
        found = self.checkpoints.resume(self.state) is not None
        if self.acc.is_main_process:
            at_end = found and self.step == self.schedule.total_steps
            self.sink.truncate_after(self.step if found else 0, drop_eval_at_step=at_end)
        return found

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
        if self.step == 0 and self.eval_examples and cfg.eval_at_start is not False:
            self.sink.log({"step": 0, **self.evaluate()})  # eval curves start at the reference
        with StopOnSignal(cfg.save_on_signal) as stop:
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
                stopping = stop.requested(self.acc) and self.step < total
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == total or stopping:
                    saved = self.checkpoints.save(self.state)  # the final step always: it can be extended
                if stopping:
                    bar.close()
                    raise Preempted(
                        f"stopped by SIGTERM after step {self.step} of {total}; checkpoint {saved} written: "
                        "run the same command with train.resume=true to continue"
                    )
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
            peak_rss_mb=peak_rss_mb(),
        )
