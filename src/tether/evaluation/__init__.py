"""Evaluation and report. ``tether eval``: what to evaluate (:mod:`.target`), the data read and chosen
metric groups (:mod:`.inputs`), the registry of metric groups (:mod:`.groups`) with one compute module
each (:mod:`.compute`), what the groups share (:mod:`.context`), generation (:mod:`.generation`), metric
math shared with the losses (:mod:`.metrics`), the lm-eval adapter (:mod:`.lmeval`) and the orchestration
(:mod:`.evaluate`), whose result is :class:`tether.eval_result.EvalResult`. ``tether report``: run
directories read (:mod:`.runs`), plotted (:mod:`.plots`) and rendered as Markdown (:mod:`.report`). Reads
run directories through :mod:`tether.rundir`; never imports training."""
