"""``pairwise``: accuracy and mean margin of the implicit reward β·(r_w − r_l) and of the length-averaged
likelihood avg_w − avg_l; ``pairwise/accuracy`` is the one matching the run's method."""

from __future__ import annotations

from tether.evaluation.context import GroupInputs, GroupResult, response_lengths
from tether.evaluation.metrics import logps_inputs, pairwise_metrics


def compute(inp: GroupInputs) -> GroupResult:
    pol, ref = inp.logprob_tables()
    lengths = response_lengths(inp.examples)
    pw = pairwise_metrics(logps_inputs(pol, ref, lengths, True), inp.beta)
    use_reward = inp.ref_based if inp.ref_based is not None else not inp.loaded.same
    kind_name = "reward" if use_reward else "likelihood"
    m = {
        "pairwise/accuracy": pw[f"pairwise/{kind_name}_accuracy"],
        "pairwise/margin": pw[f"pairwise/{kind_name}_margin"],
        "pairwise/kind": kind_name,
        **pw,
    }
    rpw = pairwise_metrics(logps_inputs(ref, ref, lengths, True), inp.beta)
    rm = {k: rpw[k] for k in ("pairwise/likelihood_accuracy", "pairwise/likelihood_margin")}
    if not use_reward:
        rm["pairwise/accuracy"] = rm["pairwise/likelihood_accuracy"]
        rm["pairwise/margin"] = rm["pairwise/likelihood_margin"]
    return GroupResult(m, rm)
