"""The loss side: pure loss functions with their papers' equations (:mod:`.losses`) and the one
registry of methods with their declared capabilities (:mod:`.registry`). Reads only
:class:`tether.contract.LossInputs`; knows no model."""
