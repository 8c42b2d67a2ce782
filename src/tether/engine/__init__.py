"""The model side: loading models (:mod:`.models`), the chunked log-prob engine (:mod:`.logprobs`), the
reference three ways (:mod:`.reference`) and the one on-disk cache (:mod:`.cache`). Produces
:class:`tether.contract.LossInputs`; knows no loss and no method name."""
