"""The run's schedules: which examples each optimizer step uses (a seeded order, so that the data position
is the step alone) and the learning rate at each step (warmup, then constant, linear or cosine decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tether.config import TrainConfig
from tether.errors import TetherError


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
        return self.split(self.step_indices(step), micro, world, rank)

    def positions(self, micro: int, world: int, rank: int) -> list[list[int]]:
        """Where this process's share of each micro-batch lies in the step's global order."""
        return self.split(list(range(self.global_batch)), micro, world, rank)

    @staticmethod
    def split(idx: list[int], micro: int, world: int, rank: int) -> list[list[int]]:
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
    """The learning rate's factor at each step: linear warmup, then ``train.scheduler``."""
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


def lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's LR scheduler. It is not registered with accelerate (that would pickle it): its state goes
    into a checkpoint's JSON state file."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))


def apply_optimizer_config(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: TrainConfig,
    total_steps: int,
    step: int,
) -> None:
    """After loading a checkpoint: the optimizer's settings and the LR schedule are this run's (the same
    values unless a change was allowed, e.g. a longer run or ``train.lr``)."""
    f = lr_lambda(cfg, total_steps)
    for g in optimizer.param_groups:
        g.update(initial_lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        g.update(weight_decay=cfg.weight_decay, lr=cfg.lr * f(step))
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
