r"""Cormack-Jolly-Seber capture-recapture of the European dipper, alive/dead states enumerated.

phi ~ Uniform(0, 1) (survival), rho ~ Uniform(0, 1) (recapture). For each animal, after its
first capture: z_t ~ Bernoulli(phi z_{t-1}) (alive at occasion t) and
y_t ~ Bernoulli(rho z_t) (recaptured). The states z_t are discrete latent sites marked for
parallel enumeration in ``pyro.markov``; everything up to and including the first capture is
masked out, so the likelihood is conditional on first capture, as in CJS.

Source: adapted from Pyro's ``examples/capture_recapture/cjs.py`` (``model_1``, Apache-2.0), on
the dipper data it ships (``dipper_capture_history.csv``: 294 birds, 7 occasions; Lebreton et
al. 1992, Ecological Monographs 62:67-118), written here as counts of each capture history.
One change: the example updates its mask in place (``first_capture_mask |= ...``), and Pyro
reads a mask when it scores the trace, after the loop, so the example's masks are all the
final ones: it also scores each first capture (a factor rho) and the occasions before it
(1 - rho each). Here the mask is rebuilt each step, so the enumerated log-likelihood equals the
closed-form CJS likelihood (the suite's tests check it at random points).

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
cjs_dipper``), run on a NumPyro twin that writes the CJS likelihood in closed form (products of
phi and rho up to the last capture, then the probability chi_t of never being seen again).

    ppl-models fit runs/cjs_dipper.py --reference runs/references/cjs_dipper.json.zip
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

KIND = "enumeration"
GUIDE = "auto-normal"
REFERENCE = "references/cjs_dipper.json.zip"

# How many of the 294 dippers had each capture history (1 = captured at that occasion).
HISTORIES = {
    "0000001": 39, "0000010": 23, "0000011": 23, "0000100": 16, "0000110": 9, "0000111": 16,
    "0001000": 16, "0001001": 2, "0001011": 1, "0001100": 11, "0001110": 7, "0001111": 8,
    "0010000": 29, "0010110": 1, "0011000": 12, "0011100": 6, "0011110": 2, "0011111": 2,
    "0100000": 29, "0110000": 11, "0110110": 1, "0111000": 2, "0111100": 3, "0111110": 1,
    "0111111": 2, "1000000": 9, "1010000": 2, "1100000": 6, "1101110": 1, "1111000": 2,
    "1111100": 1, "1111110": 1,
}  # fmt: skip


def model(capture_history):
    N, T = capture_history.shape
    phi = pyro.sample("phi", dist.Uniform(0.0, 1.0))  # survival probability
    rho = pyro.sample("rho", dist.Uniform(0.0, 1.0))  # recapture probability
    with pyro.plate("animals", N, dim=-1):
        z = torch.ones(N, dtype=capture_history.dtype, device=capture_history.device)
        # which animals have been captured before occasion t: only their terms count
        first_capture_mask = torch.zeros(N, dtype=torch.bool, device=capture_history.device)
        for t in pyro.markov(range(T)):
            with poutine.mask(mask=first_capture_mask):
                mu_z_t = first_capture_mask.to(phi) * phi * z + (1 - first_capture_mask.to(phi))
                z = pyro.sample(f"z_{t}", dist.Bernoulli(mu_z_t), infer={"enumerate": "parallel"})
                pyro.sample(f"y_{t}", dist.Bernoulli(rho * z), obs=capture_history[:, t])
            # a new tensor each step: Pyro reads each site's mask after the loop has run
            first_capture_mask = first_capture_mask | capture_history[:, t].bool()


def data():
    rows = [[float(c) for c in history] for history, n in HISTORIES.items() for _ in range(n)]
    return {"capture_history": rows}
