"""``reward``: a reward model's (score head's) held-out pairwise accuracy, the fraction of pairs with
r(chosen) > r(rejected) (ties count as wrong, as TRL's ``RewardTrainer`` counts them), and the mean margin
r(chosen) − r(rejected), r being the model's score at each row's last non-padding token."""

from __future__ import annotations

from tether.engine.scores import score_table
from tether.evaluation.context import GroupInputs, GroupResult


def compute(inp: GroupInputs) -> GroupResult:
    ld = inp.loaded
    table = score_table(
        ld.model,
        inp.examples,
        batch_size=ld.batch_size,
        pad_id=ld.tokenizer.pad_token_id,
        device=ld.device,
        progress=ld.progress,
    )
    chosen, rejected = table[:, 0].double(), table[:, 1].double()
    metrics = {
        "reward/accuracy": float((chosen > rejected).double().mean()),
        "reward/margin": float((chosen - rejected).mean()),
        "reward/chosen": float(chosen.mean()),
        "reward/rejected": float(rejected.mean()),
    }
    return GroupResult(metrics)
