"""``deviation``: MinorSFT's m_θ, the mean over held-out chosen/completion answers of
(log π(y) − log π_ref(y)) / n(y)."""

from __future__ import annotations

from tether.evaluation.context import GroupInputs, GroupResult, response_lengths
from tether.evaluation.metrics import deviation_metrics, logps_inputs


def compute(inp: GroupInputs) -> GroupResult:
    if inp.loaded.same and "pairwise" not in inp.groups:
        return GroupResult({"deviation": 0.0})  # the reference is the model: 0 by construction, no forward
    pol, ref = inp.logprob_tables()
    lengths = response_lengths(inp.examples)
    return GroupResult(deviation_metrics(logps_inputs(pol, ref, lengths, inp.kind == "pairs")))
