"""NUTS reference draws of ``runs/hierarchical_logistic.py``'s posterior, in posteriordb's format.

The model is written again for NumPyro (an optional benchmark extra: ``pip install
'ppl_models[bench]'``), whose compiled NUTS is fast enough for long chains at J = 1,000; the
two models must stay the same (priors, likelihood, data). Four chains of 1,000 warm-up and
1,000 kept draws each; the run stops with an error unless every split R-hat is at most 1.01,
every bulk ESS at least 400, and no transition diverged.

    python runs/references/hierarchical_logistic_nuts.py --groups 100
    python runs/references/hierarchical_logistic_nuts.py --groups 1000 --sites mu,sigma,beta

Writes ``runs/references/hierarchical_logistic_J<groups>.json.zip``: a list of chains, each
mapping ``mu``, ``sigma``, ``beta`` and ``alpha[j]`` (1-based) to its draws.
"""

import argparse
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_simulate():
    spec = importlib.util.spec_from_file_location("hl", HERE.parent / "hierarchical_logistic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.simulate


def numpyro_model(J, group, x, y):
    import numpyro
    import numpyro.distributions as nd

    mu = numpyro.sample("mu", nd.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", nd.HalfNormal(2.0))
    beta = numpyro.sample("beta", nd.Normal(0.0, 2.0))
    with numpyro.plate("groups", J):
        alpha = numpyro.sample("alpha", nd.Normal(mu, sigma))
    with numpyro.plate("obs", len(y)):
        numpyro.sample("y", nd.Bernoulli(logits=alpha[group] + beta * x), obs=y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--sites", default="mu,sigma,beta,alpha", help="sites to keep")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    numpyro.set_host_device_count(4)
    data = load_simulate()(args.groups)
    arrays = {
        "J": data["J"],
        "group": jnp.asarray(data["group"]),
        "x": jnp.asarray(data["x"], dtype=jnp.float32),
        "y": jnp.asarray(data["y"], dtype=jnp.float32),
    }
    mcmc = MCMC(NUTS(numpyro_model), num_warmup=1000, num_samples=1000, num_chains=4)
    mcmc.run(jax.random.PRNGKey(args.seed), extra_fields=("diverging",), **arrays)
    draws = {k: np.asarray(v, dtype=np.float64) for k, v in mcmc.get_samples(True).items()}
    stats = summary(draws, group_by_chain=True)
    r_hat = max(float(np.max(s["r_hat"])) for s in stats.values())
    ess = min(float(np.min(s["n_eff"])) for s in stats.values())
    divergent = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    print(f"max R-hat {r_hat:.4f}, min bulk ESS {ess:.0f}, divergences {divergent}")
    if r_hat > 1.01 or ess < 400 or divergent:
        raise SystemExit("the chains fail the reference's checks; nothing written")
    keep = args.sites.split(",")
    chains = []
    for c in range(4):
        chain = {}
        for name in keep:
            value = draws[name][c]
            if value.ndim == 1:
                chain[name] = [float(f"{v:.7g}") for v in value]
            else:
                for j in range(value.shape[1]):
                    chain[f"{name}[{j + 1}]"] = [float(f"{v:.7g}") for v in value[:, j]]
        chains.append(chain)
    out = HERE / f"hierarchical_logistic_J{args.groups}.json.zip"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(out.name.removesuffix(".zip"), json.dumps(chains))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
