"""Models with neural modules and parameters: ``PyroModule`` models, ``pyro.param`` in a model.

A fit keeps every ``PyroModule``'s parameters in the module (Pyro's ``module_local_params``),
so that two fits never share state. A ``PyroModule`` built before that mode was switched on (at
import, as Pyro's regression tutorial builds its model) lacks the module-local parameter state;
:func:`adopt_local_params` gives it one. A model's own parameters (``pyro.param`` statements,
``PyroParam``, the plain weights of a ``PyroModule[nn.Linear]``) are fitted with the guide as
point estimates, type-II maximum likelihood: the posterior is conditional on them
(:func:`point_estimates` reads them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from pyro import poutine
from pyro.nn import PyroModule


def model_modules(model: Callable) -> list[torch.nn.Module]:
    """The torch modules ``model`` uses: itself (or the module a bound method belongs to), and
    the modules its function's globals and closure refer to (a module built by the script)."""
    found: list[torch.nn.Module] = []

    def add(value) -> None:
        if isinstance(value, torch.nn.Module) and all(value is not m for m in found):
            found.append(value)

    model = getattr(model, "__wrapped__", model)  # through a functools.wraps wrapper
    add(model)
    add(getattr(model, "__self__", None))
    function = getattr(model, "__func__", model)
    for value in list(getattr(function, "__globals__", {}).values()):
        add(value)
    for cell in getattr(function, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return found


def adopt_local_params(modules: Iterable[torch.nn.Module]) -> None:
    """Give every ``PyroModule`` in ``modules`` the module-local parameter state it would have
    had if it had been built with ``module_local_params`` on (Pyro's ``_Context.param_state``)."""
    for module in modules:
        for sub in module.modules():
            context = getattr(sub, "_pyro_context", None)
            if isinstance(sub, PyroModule) and not hasattr(context, "param_state"):
                context.param_state = {"params": {}, "constraints": {}}


def module_parameters(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    """The trainable parameters of ``modules``, each once."""
    seen, out = set(), []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def point_estimates(model: Callable, guide: Callable, data: dict) -> dict[str, np.ndarray]:
    """The model's own parameters (its ``pyro.param`` sites, as one run of the model on a draw
    of ``guide`` reads them, in their constrained space) by name: what the fit estimated as
    points."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(**data)
        with poutine.trace(param_only=True) as tape:
            poutine.replay(model, trace=guide_trace)(**data)
    return {
        name: site["value"].detach().cpu().double().numpy()
        for name, site in tape.trace.nodes.items()
        if site["type"] == "param"
    }
