r"""Neal's funnel: a scale that is the exponential of another latent, with no data at all.

y ~ Normal(0, 3), x_k | y ~ Normal(0, exp(y / 2)) for k = 1..9. The posterior is the prior,
known exactly: y ~ Normal(0, 3) and each x_k has mean 0 and sd exp(9/4) = 9.49 (E[exp(y)] =
exp(9/2)), with heavy tails. The neck (y around -6, x within 0.05 of 0) and the mouth
(y around 6, x spread over +/-60) defeat both a mean-field Gaussian and NUTS in this
parametrization.

Source: Neal (2003), "Slice sampling", Annals of Statistics 31:705-767, section 8; the
standard test of Pyro's reparametrizers (``LocScaleReparam``; ``tests/infer/reparam/
test_neutra.py`` and ``test_structured.py`` fit it).

Truth: closed form (``TRUTH``: moments), and exact independent draws in ``REFERENCE``
(``runs/references/make_references.py --only neals_funnel`` draws y, then x given y: no MCMC).

    ppl-models fit runs/neals_funnel.py --reference runs/references/neals_funnel.json.zip
"""

import math

import pyro
import pyro.distributions as dist

KIND = "funnel"
GUIDE = "auto-normal"
REFERENCE = "references/neals_funnel.json.zip"
# Posterior moments, exact: x_k's sd is sqrt(E[exp(y)]) = exp(9/4).
TRUTH = {"y": {"mean": 0.0, "sd": 3.0}, "x": {"mean": 0.0, "sd": math.exp(9.0 / 4.0)}}


def model(dim):
    y = pyro.sample("y", dist.Normal(0.0, 3.0))
    with pyro.plate("dims", dim):
        pyro.sample("x", dist.Normal(0.0, (y / 2).exp()))


def data():
    return {"dim": 9}
