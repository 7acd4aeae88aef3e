"""Pyro model/guide pairs fitted by SVI, checked against references, reported as diagnostics.

Importing the package changes no global state: Pyro settings that a fit needs are set inside
the fitting calls and restored after them (:func:`ppl_models.svi.local_params`). The public
API below is imported lazily, on first use, so ``import ppl_models`` (and the command line's
``--help``) imports neither torch nor Pyro:

- :func:`~ppl_models.vi.fitting.fit_svi` fits a model (any Pyro model) by SVI;
- :func:`~ppl_models.vi.ladder.fit_auto` climbs the escalation ladder (richer guides,
  reparametrisation, PSIS, NUTS) until a fit is certified;
- :func:`~ppl_models.vi.diagnose.diagnose` diagnoses the fit against an optional reference;
- :func:`~ppl_models.vi.report.write_report` writes the diagnosis as a run directory;
- :func:`~ppl_models.vi.references.load_reference` and
  :func:`~ppl_models.vi.references.nuts_reference` make references;
- :func:`~ppl_models.vi.script.load_script` loads a model script.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "fit_svi": "ppl_models.vi.fitting",
    "fit_auto": "ppl_models.vi.ladder",
    "diagnose": "ppl_models.vi.diagnose",
    "write_report": "ppl_models.vi.report",
    "load_reference": "ppl_models.vi.references",
    "nuts_reference": "ppl_models.vi.references",
    "load_script": "ppl_models.vi.script",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppl_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])
