r"""A hidden Markov model of binary "tones", its hidden states summed out by enumeration.

probs_x[k] ~ Dirichlet(0.9 e_k + 0.1) (sticky transitions), probs_y[k, d] ~ Beta(a_kd, b_kd);
for each sequence n and time t, x_t ~ Categorical(probs_x[x_{t-1}]) with x_{-1} = 0, and
y_{t,d} ~ Bernoulli(probs_y[x_t, d]) for each tone d. The states x_t are discrete latent sites
marked for parallel enumeration inside ``pyro.markov``.

Source: adapted from Pyro's ``examples/hmm.py`` (``model_1``, Apache-2.0): the same transition
prior, plates (sequences at dim -2, tones at dim -1), ``pyro.markov`` loop and indexing
(``probs_x[x]``, ``probs_y[x.squeeze(-1)]``). Changes: 2 hidden states and 3 tones instead of
16 and 88, 16 simulated sequences of length 20 (seed 0) instead of the polyphonic music data,
equal lengths (no mask), and the emission prior differs by state (``EMISSION_PRIOR``: state 0
mostly silent, state 1 mostly sounding) so that the posterior has one mode rather than two
mirror images (label switching): at the swapped mode the density is e^-35 of the peak.

Truth: NUTS reference draws (``REFERENCE``; ``runs/references/make_references.py --only
hmm_enum``), run on a NumPyro twin that sums the states out by the forward algorithm.

    ppl-models fit runs/hmm_enum.py --reference runs/references/hmm_enum.json.zip
"""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

KIND = "enumeration"
GUIDE = "auto-normal"
REFERENCE = "references/hmm_enum.json.zip"

HIDDEN, TONES = 2, 3
# Beta(a, b) per state and tone: state 0 mostly silent, state 1 mostly sounding.
EMISSION_PRIOR = {"a": ((1.0, 1.0, 1.0), (3.0, 3.0, 3.0)), "b": ((3.0, 3.0, 3.0), (1.0, 1.0, 1.0))}
SIMULATED_FROM = {
    "probs_x": ((0.9, 0.1), (0.2, 0.8)),
    "probs_y": ((0.1, 0.2, 0.1), (0.8, 0.7, 0.6)),
}
SEQUENCES, LENGTH, SEED = 16, 20, 0


def model(sequences):
    num_sequences, length, data_dim = sequences.shape
    options = {"dtype": sequences.dtype, "device": sequences.device}
    probs_x = pyro.sample(
        "probs_x", dist.Dirichlet(0.9 * torch.eye(HIDDEN, **options) + 0.1).to_event(1)
    )
    probs_y = pyro.sample(
        "probs_y",
        dist.Beta(
            torch.tensor(EMISSION_PRIOR["a"], **options),
            torch.tensor(EMISSION_PRIOR["b"], **options),
        ).to_event(2),
    )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2):
        x = 0
        for t in pyro.markov(range(length)):
            x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
            with tones_plate:
                pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[:, t])


def data():
    rng = np.random.default_rng(SEED)
    probs_x = np.asarray(SIMULATED_FROM["probs_x"])
    probs_y = np.asarray(SIMULATED_FROM["probs_y"])
    sequences = np.zeros((SEQUENCES, LENGTH, TONES))
    for n in range(SEQUENCES):
        x = 0
        for t in range(LENGTH):
            x = rng.choice(HIDDEN, p=probs_x[x])
            sequences[n, t] = rng.random(TONES) < probs_y[x]
    # floats, so that the data arrive in the run's float dtype (Bernoulli observations)
    return {"sequences": sequences.tolist()}
