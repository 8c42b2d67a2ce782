"""Training: the loop (:mod:`.trainer`), one run from config to run directory (:mod:`.run`), sDPO's
stages of runs (:mod:`.stages`, above a run) and the entry point choosing between them (:mod:`.job`)."""
