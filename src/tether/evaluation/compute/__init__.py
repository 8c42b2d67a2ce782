"""The compute modules of ``tether eval``'s metric groups, one per group (registered in
:data:`tether.evaluation.groups.METRIC_GROUPS`): each has ``compute(inputs: GroupInputs) -> GroupResult``
(:mod:`tether.evaluation.context`)."""
