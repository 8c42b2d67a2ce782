"""Evaluation and report: what to evaluate (:mod:`.target`), metric groups (:mod:`.groups`), generation
(:mod:`.generation`), metric math shared with the losses (:mod:`.metrics`), the lm-eval adapter
(:mod:`.lmeval`), the orchestration (:mod:`.evaluate`) and plots/Markdown of run directories
(:mod:`.report`). Reads run directories through :mod:`tether.rundir`; never imports training."""
