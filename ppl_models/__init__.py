"""Pyro model/guide pairs fitted by SVI, checked against references, reported as diagnostics."""

import pyro

# Parameters of PyroModules live in their modules (like torch parameters), not in Pyro's global
# parameter store, so two fits never share state and torch optimizers see them. The setting must
# be on before any PyroModule is built, hence here.
pyro.settings.set(module_local_params=True)

__version__ = "0.1.0"
