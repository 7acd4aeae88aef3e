"""The traced objective: the plain Trace_ELBO's loss and gradients on the same draws, and the
plain path wherever a trace cannot be trusted."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO
from pyro.nn import PyroModule, PyroParam

from ppl_models.gathered import gather_along
from ppl_models.svi import local_params, make_elbo, make_objective, train
from ppl_models.vae.model import build_vae, observations
from ppl_models.vae.networks import build_networks
from ppl_models.vae.options import LIKELIHOODS


def vae_pair(arch="mlp", likelihood="normal", latent_dim=2, hidden_dim=16):
    torch.manual_seed(1)
    return build_vae(*build_networks(arch, latent_dim, hidden_dim), latent_dim, likelihood)


def run_steps(loss_fn, batches, seed=7, lr=1e-2):
    """Seed once, then Adam steps: the losses and the final parameters."""
    loss_fn(batches[0])  # creates any pyro.param site before the optimizer is built
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    torch.manual_seed(seed)
    losses = train(loss_fn, optimizer, [(x,) for x in batches], progress=False).losses
    return losses, [p.detach().clone() for p in loss_fn.parameters()]


def assert_same_fit(plain, traced, batches):
    """Same seed, same steps: the same losses and parameters, to float rounding.

    The first call of each input signature is the tracing one, and it must draw exactly what
    the plain path draws, so every later draw lines up too.
    """
    plain_losses, plain_params = run_steps(plain, batches)
    traced_losses, traced_params = run_steps(traced, batches)
    torch.testing.assert_close(traced_losses, plain_losses, rtol=1e-5, atol=1e-4)
    assert len(traced_params) == len(plain_params)
    for mine, theirs in zip(traced_params, plain_params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_vae_steps_match_the_plain_objective(likelihood, elbo):
    model, guide = vae_pair(likelihood=likelihood)
    images = observations(
        torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(2)), likelihood
    )
    # two shapes: the last batch of an epoch is smaller and gets its own graph
    batches = [images[:8], images[8:16], images[16:], images[:8]]
    plain = make_objective(copy.deepcopy(model), copy.deepcopy(guide), make_elbo(elbo))
    traced = make_objective(model, guide, make_elbo(elbo), "traced")
    assert_same_fit(plain, traced, batches)
    assert traced.fallback_reason is None
    assert len(traced._graphs) == 2


def test_loss_and_gradients_match_on_the_same_draws():
    """One call each from the same seed: loss and every gradient, for the conv networks."""
    model, guide = vae_pair("conv", latent_dim=4)
    x = observations(torch.rand(3, 1, 28, 28), "normal")
    plain = make_objective(model, guide, make_elbo("trace", particles=3))
    traced = make_objective(model, guide, make_elbo("trace", particles=3), "traced")
    params = list(plain.parameters())
    results = []
    for loss_fn in (plain, traced, traced):  # the tracing call, then a replay
        torch.manual_seed(5)
        loss = loss_fn(x)
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=0)
        for mine, theirs in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_of_the_networks_is_replayed():
    """The networks' autocast region is part of the graph (checked with CPU autocast here)."""
    encoder, decoder = build_networks("mlp", 2, 16)
    model, guide = build_vae(encoder, decoder, 2, "bernoulli", autocast=True)
    x = observations(torch.rand(6, 1, 28, 28), "bernoulli")
    plain = make_objective(copy.deepcopy(model), copy.deepcopy(guide), make_elbo("trace"))
    traced = make_objective(model, guide, make_elbo("trace"), "traced")
    assert_same_fit(plain, traced, [x, x, x])
    graph, _ = next(iter(traced._graphs.values()))
    assert "torch.bfloat16" in graph.code and "_enter_autocast" in graph.code


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bf16", [False, True])
def test_traced_steps_match_on_cuda(bf16):
    """On the GPU: the draws come from the CUDA generator, the networks may run in bf16."""
    torch.manual_seed(1)
    encoder, decoder = build_networks("mlp", 8, 64)  # matmuls: deterministic, unlike cuDNN's convs
    model, guide = build_vae(encoder, decoder, 8, "bernoulli", autocast=bf16)
    model, guide = model.cuda(), guide.cuda()
    x = observations(torch.rand(64, 1, 28, 28, device="cuda"), "bernoulli")
    plain = make_objective(copy.deepcopy(model), copy.deepcopy(guide), make_elbo("trace"))
    traced = make_objective(model, guide, make_elbo("trace"), "traced")
    assert_same_fit(plain, traced, [x[:32], x[32:], x[:32]])
    assert traced.fallback_reason is None


def test_checkpoints_do_not_see_the_graphs():
    model, guide = vae_pair()
    traced = make_objective(model, guide, make_elbo("trace"), "traced")
    before = set(traced.state_dict())
    traced(torch.zeros(4, 1, 28, 28))
    assert set(traced.state_dict()) == before
    assert before == set(make_objective(model, guide, make_elbo("trace")).state_dict())


# ----------------------------------------------------------------------------- other model shapes


def conjugate_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def param_guide(x):
    loc = pyro.param("q_loc", torch.tensor(0.0, dtype=x.dtype))
    scale = pyro.param(
        "q_scale", torch.tensor(1.0, dtype=x.dtype), constraint=dist.constraints.positive
    )
    pyro.sample("mu", dist.Normal(loc, scale))


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_a_pyro_param_guide_is_traced_with_its_store_parameters(elbo):
    x = torch.tensor([1.0, 2.0, 3.0, 4.5], dtype=torch.float64)
    with pyro.get_param_store().scope():
        plain = make_objective(conjugate_model, param_guide, make_elbo(elbo, particles=8))
        plain_losses, plain_params = run_steps(plain, [x] * 30)
    with pyro.get_param_store().scope():
        traced = make_objective(
            conjugate_model, param_guide, make_elbo(elbo, particles=8), "traced"
        )
        traced_losses, traced_params = run_steps(traced, [x] * 30)
        assert traced.fallback_reason is None
        assert len(traced_params) == 2
    torch.testing.assert_close(traced_losses, plain_losses, rtol=1e-10, atol=1e-8)
    for mine, theirs in zip(traced_params, plain_params, strict=True):
        torch.testing.assert_close(mine, theirs)


class DiscreteGuide(PyroModule):
    """q(c) = Bernoulli(sigmoid(logit)): a site without reparameterisation (score function)."""

    def __init__(self):
        super().__init__()
        self.logit = PyroParam(torch.tensor(0.3))

    def forward(self, x):
        pyro.sample("c", dist.Bernoulli(logits=self.logit))


def mixture_model(x):
    c = pyro.sample("c", dist.Bernoulli(0.4))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(3.0 * c, 1.0), obs=x)


def test_score_function_surrogate_matches():
    """For a discrete guide site the loss's value and its gradient come from different terms."""
    x = torch.tensor([2.5, 3.1, 0.2])
    with local_params():
        guide = DiscreteGuide()
        plain = make_objective(mixture_model, guide, make_elbo("trace", particles=16))
        traced = make_objective(mixture_model, guide, make_elbo("trace", particles=16), "traced")
        for _ in range(2):
            results = []
            for loss_fn in (plain, traced):
                torch.manual_seed(11)
                loss = loss_fn(x)
                results.append(
                    (loss.detach(), torch.autograd.grad(loss, [guide.logit_unconstrained])[0])
                )
            (plain_loss, plain_grad), (traced_loss, traced_grad) = results
            torch.testing.assert_close(traced_loss, plain_loss)
            torch.testing.assert_close(traced_grad, plain_grad)
            assert plain_grad != 0


def regression_model(x, y, prior_scale=10.0):
    w = pyro.sample("w", dist.Normal(0.0, prior_scale).expand([x.shape[-1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y)):
        mean = (w.unsqueeze(-2) * x).sum(-1)  # broadcasts over vectorized particles
        pyro.sample("y", dist.Normal(mean, sigma[..., None]), obs=y)


def test_tensor_keyword_arguments_are_inputs_of_the_graph():
    # a model script's data comes as keywords: tensors become graph inputs (in name order),
    # other values part of the signature; new data of the same shape replays the same graph
    torch.manual_seed(0)
    x, y = torch.randn(30, 3), torch.randn(30)
    with pyro.get_param_store().scope():
        guide = pyro.infer.autoguide.AutoNormal(regression_model)
        plain = make_objective(regression_model, guide, make_elbo("trace", particles=4))
        traced = make_objective(regression_model, guide, make_elbo("trace", particles=4), "traced")
        plain(x=x, y=y)  # creates the guide's parameters
        params = list(plain.parameters())
        calls = [{"x": x, "y": y}, {"y": -y, "x": 2 * x}, {"x": x, "y": y, "prior_scale": 2.0}]
        for kwargs in calls:
            torch.manual_seed(3)
            expected = plain(**kwargs)
            want = torch.autograd.grad(expected, params)
            for _ in range(2):  # the tracing call, then a replay
                torch.manual_seed(3)
                loss = traced(**kwargs)
                torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
                for mine, theirs in zip(torch.autograd.grad(loss, params), want, strict=True):
                    torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-10)
    assert traced.fallback_reason is None and len(traced._graphs) == 2  # prior_scale: another


def logistic_model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1], dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=(w.unsqueeze(-2) * x).sum(-1)), obs=y)


def plain_then_traced(model, datasets: list[tuple]):
    """An auto-normal guide's loss and gradients on each of ``datasets``, from the plain
    objective, the traced one's tracing call and its replay, each on the same draws: the traced
    objective, and per dataset ``[(loss, grads)] * 3``."""
    with pyro.get_param_store().scope():
        guide = pyro.infer.autoguide.AutoNormal(model)
        plain = make_objective(model, guide, make_elbo("trace", particles=8))
        traced = make_objective(model, guide, make_elbo("trace", particles=8), "traced")
        plain(*datasets[0])  # creates the guide's parameters
        params = list(plain.parameters())
        runs = []
        for data in datasets:
            results = []
            for loss_fn in (plain, traced, traced):
                torch.manual_seed(3)
                loss = loss_fn(*data)
                results.append((loss.detach(), torch.autograd.grad(loss, params)))
            runs.append(results)
    return traced, runs


def test_a_summed_negation_is_replayed_as_the_negated_sum_with_the_same_numbers():
    # Pyro's Bernoulli log density is a negated cross-entropy, summed at once: the graph sums
    # first and negates the sum (one pass over the data's terms fewer, forward and backward),
    # and gives the plain path's loss and gradients in float64 to the last bits
    torch.manual_seed(0)
    x = torch.randn(200, 3, dtype=torch.float64)
    y = (torch.rand(200, dtype=torch.float64) < 0.5).to(x.dtype)
    traced, (results,) = plain_then_traced(logistic_model, [(x, y)])
    ((gm, _),) = traced._graphs.values()
    aten = torch.ops.aten
    cross_entropy = aten.binary_cross_entropy_with_logits.default
    (bce,) = [n for n in gm.graph.nodes if n.target is cross_entropy]
    assert [u.target for u in bce.users] == [aten.sum.default]
    (total,) = bce.users
    assert [u.target for u in total.users] == [aten.neg.default]
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-13, atol=0)
        for mine, theirs in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def grouped_model(group, y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
    with pyro.plate("groups", 5):
        alpha = pyro.sample("alpha", dist.Normal(mu, 1.0))
    with pyro.plate("data", len(y)) as i:
        pyro.sample("y", dist.Bernoulli(logits=alpha[..., group[i]]), obs=y[i])


def test_a_group_effect_indexed_by_the_data_is_gathered_with_the_same_numbers():
    # alpha[..., group] and its accumulating backward are replayed as gather and scatter_add,
    # which copy and add the same numbers in the same order: loss and gradients to the last
    # bits, negative indices (counted from the end) included, and for new data of the same shape
    torch.manual_seed(0)
    group = torch.randint(-5, 5, (300,))
    y = (torch.rand(300, dtype=torch.float64) < 0.5).to(torch.float64)
    # the tracing call's data, then other data of the same shapes
    traced, runs = plain_then_traced(grouped_model, [(group, y), (group.flip(0), y)])
    for results in runs:
        for loss, grads in results[1:]:
            torch.testing.assert_close(loss, results[0][0], rtol=1e-13, atol=0)
            for mine, theirs in zip(grads, results[0][1], strict=True):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    ((gm, _),) = traced._graphs.values()
    targets = {n.target for n in gm.graph.nodes}
    assert gather_along in targets
    assert torch.ops.aten.index.Tensor not in targets


# ----------------------------------------------------------------------------- the fallback


def branching_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    if x.sum() > 0:  # structure chosen by the data's value: a trace would freeze one branch
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def mu_guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))


def test_data_dependent_control_flow_falls_back_to_the_plain_path():
    x = torch.tensor([1.0, 2.0])
    with pyro.get_param_store().scope():
        traced = make_objective(branching_model, mu_guide, make_elbo("trace"), "traced")
        with pytest.warns(UserWarning, match="plain Trace_ELBO path"):
            traced(x)
        assert "cannot be traced" in traced.fallback_reason
        plain = make_objective(branching_model, mu_guide, make_elbo("trace"))
        for value in (x, -x):
            torch.manual_seed(0)
            expected = plain(value)
            torch.manual_seed(0)
            torch.testing.assert_close(traced(value), expected)


def ordinal_model(x, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 2.0))
    cut = dist.TransformedDistribution(
        dist.Normal(0.0, 3.0).expand([3]).to_event(1), [dist.transforms.OrderedTransform()]
    )
    cutpoints = pyro.sample("cutpoints", cut)
    with pyro.plate("obs", x.shape[-1]):
        logistic = dist.OrderedLogistic(beta[..., None] * x, cutpoints.unsqueeze(-2))
        pyro.sample("y", logistic, obs=y)


def test_a_graph_that_disagrees_with_the_plain_path_is_not_used():
    # OrderedLogistic's logits come out of make_fx as a constant of the graph (its loss was NaN
    # on replay): the check on the same draws catches it, and the plain path is used
    x = torch.linspace(-2, 2, 40, dtype=torch.float64)
    y = (x > 0).to(torch.float64) + (x > 1)
    with pyro.get_param_store().scope():
        guide = pyro.infer.autoguide.AutoNormal(ordinal_model)
        plain = make_objective(ordinal_model, guide, make_elbo("trace", particles=4))
        traced = make_objective(ordinal_model, guide, make_elbo("trace", particles=4), "traced")
        plain(x, y)
        with pytest.warns(UserWarning, match="disagreed with the plain path"):
            traced(x, y)
        for seed in (0, 1):
            torch.manual_seed(seed)
            expected = plain(x, y)
            torch.manual_seed(seed)
            torch.testing.assert_close(traced(x, y), expected)
    assert torch.isfinite(expected)


def mean_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def failing_model(x):
    raise ValueError("the model's own error")


@pytest.mark.parametrize("where", ["make_fx", "_fold_constants"])
def test_any_failure_of_the_tracer_falls_back_and_a_models_own_error_does_not(where, monkeypatch):
    # the tracer's failure (whatever its type) is not the model's: the plain path is used; an
    # error of the model itself still reaches the caller
    from ppl_models import traced as traced_module

    def broken(*args, **kwargs):
        raise TypeError("an operation the tracer cannot record")

    monkeypatch.setattr(traced_module, where, broken)
    x = torch.tensor([1.0, 2.0])
    with pyro.get_param_store().scope():
        plain = make_objective(mean_model, mu_guide, make_elbo("trace"))
        traced = make_objective(mean_model, mu_guide, make_elbo("trace"), "traced", warn=False)
        torch.manual_seed(0)
        expected = plain(x)
        torch.manual_seed(0)
        torch.testing.assert_close(traced(x), expected)
        assert "an operation the tracer cannot record" in traced.fallback_reason
        failing = make_objective(failing_model, mu_guide, make_elbo("trace"), "traced")
        with pytest.raises(ValueError, match="the model's own error"):
            failing(x)


def test_a_fallback_can_be_left_to_the_caller_to_report(recwarn):
    with pyro.get_param_store().scope():
        traced = make_objective(branching_model, mu_guide, make_elbo("trace"), "traced", warn=False)
        traced(torch.tensor([1.0, 2.0]))
    assert "cannot be traced" in traced.fallback_reason
    assert not [w for w in recwarn if "plain Trace_ELBO path" in str(w.message)]


def test_a_tensor_that_requires_grad_outside_the_parameters_falls_back():
    shift = torch.tensor(0.5, requires_grad=True)  # trained by someone else's optimizer

    def shifted_model(x):
        mu = pyro.sample("mu", dist.Normal(shift, 10.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pyro.get_param_store().scope():
        traced = make_objective(shifted_model, mu_guide, make_elbo("trace"), "traced")
        with pytest.warns(UserWarning, match="require grad but are not parameters"):
            traced(torch.tensor([1.0, 2.0])).backward()
    assert shift.grad is not None  # the plain path keeps the gradient flowing


def test_an_effect_handler_around_the_call_falls_back():
    model, guide = vae_pair()
    x = observations(torch.rand(4, 1, 28, 28), "normal")
    plain = make_objective(model, guide, make_elbo("trace"))
    traced = make_objective(model, guide, make_elbo("trace"), "traced")
    with pytest.warns(UserWarning, match="Pyro effect handler"):
        with poutine.scale(scale=0.5):
            torch.manual_seed(0)
            halved = traced(x)
    torch.manual_seed(0)
    torch.testing.assert_close(halved, plain(x) / 2, rtol=1e-5, atol=1e-3)
    assert not traced._graphs


def test_choices_are_validated():
    model, guide = vae_pair()
    with pytest.raises(ValueError, match="objective must be one of plain, traced, got 'jit'"):
        make_objective(model, guide, make_elbo("trace"), "jit")
    with pytest.raises(ValueError, match="needs Trace_ELBO or TraceMeanField_ELBO, got JitTrace"):
        make_objective(model, guide, JitTrace_ELBO(), "traced")


# ----------------------------------------------------------------------------- the config choice


def test_a_vae_run_with_the_traced_objective_matches_the_plain_run(synthetic_mnist, tmp_path):
    from test_vae_job import elbos, tiny

    from ppl_models import cli
    from ppl_models.runs import read_json

    assert cli.main(tiny(synthetic_mnist, tmp_path / "plain")) == 0
    assert cli.main(tiny(synthetic_mnist, tmp_path / "traced", "--set", "objective=traced")) == 0
    assert 'objective = "traced"' in (tmp_path / "traced" / "config.toml").read_text()
    plain, traced = elbos(tmp_path / "plain"), elbos(tmp_path / "traced")
    assert len(traced) == len(plain) == 2
    for mine, theirs in zip(traced, plain, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-5)
    bounds = [
        read_json(tmp_path / run / "summary.json")["iw_bounds"] for run in ("traced", "plain")
    ]
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-4)


def test_the_objective_key_is_validated(synthetic_mnist, tmp_path, capsys):
    from test_vae_job import tiny

    from ppl_models import cli

    assert cli.main(tiny(synthetic_mnist, tmp_path / "run", "--set", "objective=jit")) == 2
    assert "objective must be one of plain, traced, got 'jit'" in capsys.readouterr().err
