"""Indexing one dimension by an integer vector as a gather: the same numbers and gradients as
PyTorch's own indexing, for every key it takes, and every other key left to PyTorch."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_models.gathered import GatherIndexing, gather_along, vector_key

SOURCE = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(2, 3, 5)
IDX3 = torch.tensor([2, 0, -1, 1, -3, 2])  # for a dimension of 3, negatives from the end
IDX5 = torch.tensor([4, 0, -5, 3, 3])
IDX2 = torch.tensor([1, 0, -1, -2])


@pytest.mark.parametrize(
    ("key", "dim"),
    [
        ((slice(None), IDX3), 1),
        ((Ellipsis, IDX5), 2),
        ((IDX2,), 0),
        (IDX2, 0),
        ((Ellipsis, IDX3, slice(None)), 1),
        ((slice(None), IDX3, Ellipsis), 1),
        ((slice(None), slice(None), IDX5), 2),
    ],
)
def test_a_vector_key_gives_the_indexed_numbers_and_gradients(key, dim):
    found = vector_key(SOURCE, key)
    assert found is not None and found[0] == dim
    source = SOURCE.clone().requires_grad_()
    plain = source[key]
    with GatherIndexing():
        mine = source[key]
    assert torch.equal(mine, plain)
    weight = torch.randn(plain.shape, dtype=plain.dtype, generator=torch.Generator().manual_seed(0))
    (g_plain,) = torch.autograd.grad((plain * weight).sum(), source)
    (g_mine,) = torch.autograd.grad((mine * weight).sum(), source)
    assert torch.equal(g_mine, g_plain)  # repeated indices add their gradients, in the same order


@pytest.mark.parametrize(
    "key",
    [
        (IDX2, IDX3[:4]),  # two vectors index jointly
        (0, IDX3),  # an integer drops a dimension
        (slice(1, None), IDX3),  # a partial slice
        (None, IDX2),  # a new axis
        (Ellipsis, IDX5.to(torch.int32)),
        (Ellipsis, IDX5.reshape(5, 1)),  # a matrix of indices
        (SOURCE[:, :, 0] > 3,),  # a mask
        [0, 1],
    ],
)
def test_any_other_key_is_left_to_pytorch(key):
    assert vector_key(SOURCE, key) is None
    with GatherIndexing():
        mine = SOURCE[key]
    assert torch.equal(mine, SOURCE[key])


def test_an_index_out_of_range_still_fails():
    with GatherIndexing(), pytest.raises((IndexError, RuntimeError)):
        SOURCE[:, torch.tensor([3])]
    with GatherIndexing(), pytest.raises((IndexError, RuntimeError)):
        SOURCE[:, torch.tensor([-4])]


def test_gather_along_a_known_nonnegative_index_needs_no_wrap():
    index = torch.tensor([1, 1, 0])
    assert torch.equal(gather_along(SOURCE, 1, index, wrap=False), SOURCE[:, index])


def test_a_hierarchical_models_log_density_is_the_same_under_the_mode():
    # the diagnosis's draws run the model under the mode: the same trace, number for number
    def model(group, y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("draws", 7, dim=-2), pyro.plate("groups", 4):
            alpha = pyro.sample("alpha", dist.Normal(mu, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(logits=alpha[..., group]), obs=y)

    gen = torch.Generator().manual_seed(1)
    group = torch.randint(0, 4, (50,), generator=gen)
    y = torch.randint(0, 2, (50,), generator=gen).to(torch.float64)
    results = []
    for mode in (False, True):
        torch.manual_seed(2)
        if mode:
            with GatherIndexing():
                trace = pyro.poutine.trace(model).get_trace(group, y)
        else:
            trace = pyro.poutine.trace(model).get_trace(group, y)
        results.append(trace.log_prob_sum())
    assert torch.equal(results[0], results[1])
