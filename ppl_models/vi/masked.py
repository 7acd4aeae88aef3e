r"""Missing data through ``obs_mask``: the imputation site's observed entries get a density.

``pyro.sample(name, d, obs=y, obs_mask=m)`` imputes the entries of ``y`` where ``m`` is False
through a latent site ``{name}_unobserved`` of ``y``'s full shape, its density masked to those
entries, and returns ``torch.where(m, observed, unobserved)`` (the deterministic site ``name``).
At the observed entries the latent's value is discarded, yet each is a coordinate of the guide
with no density at all: the posterior is improper there, the ELBO's entropy term grows without
bound (plain Pyro's ``AutoNormal`` widens those scales for ever) and NUTS wanders off along them.

Those entries are given a stand-in density instead, a standard normal in the unconstrained
coordinate :math:`u = T^{-1}(x)` of the site's support,

.. math:: \log s(x) = \log \mathcal N(u; 0, 1) + \log |\partial u / \partial x|,

which leaves the model's posterior unchanged (nothing in the model reads those values), makes the
joint density proper, and is fitted exactly by any guide of the Gaussian families: the other
latents' fit and diagnosis are as if the entries were not there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.util import broadcast_shape
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to, constraints

from .initialization import prior_trace

UNOBSERVED, OBSERVED = "_unobserved", "_observed"


class StandInWhereMasked(TorchDistribution):
    """``model_dist`` where ``mask`` is True, the standard normal stand-in :math:`s` elsewhere.
    (Not ``base_dist``: the non-centring rung must not see a location-scale family here.)"""

    arg_constraints = {}

    def __init__(self, model_dist, mask: torch.Tensor):
        batch_shape = broadcast_shape(mask.shape, model_dist.batch_shape)
        self.model_dist = model_dist.expand(batch_shape)
        self._mask = mask.bool().expand(batch_shape)
        super().__init__(batch_shape, model_dist.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return StandInWhereMasked(self.model_dist.expand(batch_shape), self._mask)

    @property
    def has_rsample(self):
        return self.model_dist.has_rsample

    @constraints.dependent_property
    def support(self):
        return self.model_dist.support

    def sample(self, sample_shape=()):
        return self.model_dist.sample(sample_shape)

    def rsample(self, sample_shape=()):
        return self.model_dist.rsample(sample_shape)

    def log_prob(self, value):
        transform = biject_to(self.support)
        u = transform.inv(value)
        standin = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
        if self.event_dim:
            standin = standin.sum(tuple(range(-self.event_dim, 0)))
        jacobian = transform.log_abs_det_jacobian(u, value)
        extra = self.event_dim - transform.codomain.event_dim  # dims the Jacobian keeps
        if extra > 0:
            jacobian = jacobian.sum(tuple(range(-extra, 0)))
        return torch.where(self._mask, self.model_dist.log_prob(value), standin - jacobian)


def masked_imputations(model: Callable, data: dict, dtype: torch.dtype | None = None) -> list[str]:
    """The ``obs_mask`` imputation sites of ``model(**data)`` with observed entries: latent
    ``{name}_unobserved`` beside an observed ``{name}_observed`` and a deterministic ``name``."""
    nodes = prior_trace(model, data, dtype or torch.get_default_dtype()).nodes
    found = []
    for name, site in nodes.items():
        if site["type"] != "sample" or site["is_observed"] or not name.endswith(UNOBSERVED):
            continue
        base = name[: -len(UNOBSERVED)]
        observed = nodes.get(base + OBSERVED)
        mask = site["mask"]
        if (
            observed is not None
            and observed["is_observed"]
            and base in nodes
            and isinstance(mask, torch.Tensor)
            and not bool(mask.all())
        ):
            found.append(name)
    return found


class _StandIn(Messenger):
    def __init__(self, sites: frozenset[str]):
        super().__init__()
        self.sites = sites

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites:
            mask = msg["mask"]
            if isinstance(mask, torch.Tensor):
                msg["fn"] = StandInWhereMasked(msg["fn"], mask)
                msg["mask"] = None


def with_stand_ins(model: Callable, sites: list[str]) -> Callable:
    """``model`` whose imputation sites ``sites`` have the stand-in density :math:`s` at their
    observed entries (module docstring)."""
    chosen = frozenset(sites)

    @functools.wraps(model)
    def standing_in(*args, **kwargs):
        with _StandIn(chosen):
            return model(*args, **kwargs)

    return standing_in


def stand_in_note(sites: list[str]) -> str:
    """The report's note on the stand-in density of ``sites``."""
    return (
        f"Missing data (obs_mask): the entries of {', '.join(sites)} where the data are observed "
        "have no density in the model, which discards their values; each was given a standard "
        "normal stand-in in its unconstrained coordinate, so that the posterior is proper. The "
        "other latents' posterior is unchanged; those entries' rows show the stand-in and mean "
        "nothing."
    )
