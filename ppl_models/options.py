"""Choice lists shared by run configurations and the code that implements them.

This module imports nothing heavy (no torch, Pyro or NumPy), so a configuration can validate its
values and the command line can list its choices without loading PyTorch; the modules that
implement each choice import their list from here, so every list is written once.
"""

DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when present
ELBO_KINDS = ("trace", "meanfield")  # Trace_ELBO, or TraceMeanField_ELBO (analytic KL)
# how the objective evaluates the ELBO: Pyro's handlers on every call, or traced once and replayed
OBJECTIVE_KINDS = ("plain", "traced")
