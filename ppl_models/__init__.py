"""Pyro model/guide pairs fitted by SVI, checked against references, reported as diagnostics.

Importing the package changes no global state: Pyro settings that a fit needs are set inside
the fitting calls and restored after them (:func:`ppl_models.svi.local_params`).
"""

__version__ = "0.1.0"
