r"""The negative ELBO traced once per input signature and replayed as a graph of tensor operations.

Pyro's ``Trace_ELBO`` runs model and guide under its effect handlers on every step: building the
traces, the plates' frames, the sites' scale-and-mask bookkeeping and the loss's sum over sites
costs milliseconds of Python, while for a small network the tensor work behind it costs less. The
model/guide pair of a VAE (like most pairs a fit repeats thousands of times) has a *static
structure*: the same sites, shapes and operations on every step, only the values differ. So
:class:`TracedObjective` records that work once, with ``torch.fx``'s ``make_fx``, as the flat
list of ATen operations it performs on the parameters and the data, and replays the list on later
calls. What the replay computes is the estimator of the plain path, operation for
operation:

.. math::

    -\hat{\mathcal L} = -\frac1P \sum_{p=1}^P \Big[\sum_{\text{model sites}} \log p(\cdot)
    - \sum_{\text{guide sites}} \log q(z_p)\Big], \qquad z_p \sim q,

with the surrogate terms of non-reparameterised sites (score function, partial Rao-Blackwellisation)
and, for ``TraceMeanField_ELBO``, the analytic KL divergences, as Pyro computes them. The random
draws are operations of the graph too (``normal_``, ``bernoulli``, ...), taken from the same global
generators in the same order, so with the same seed the traced objective gives the plain path's loss
and gradients up to float rounding: the plain ``Trace_ELBO`` sums the sites' values as Python
floats, the graph as tensors.

Operations that depend on nothing but constants (the log-scale of a ``Normal(0, 1)`` prior, the
copies of Python numbers Pyro turns into tensors) are computed once at tracing time.

Tensor arguments, positional or keyword (a model script's data), are inputs of the graph; the
other arguments are part of its signature. The plain path stays the fallback, chosen per call,
when tracing cannot be trusted: non-hashable arguments, an effect handler around the call
(``poutine.scale``, ``condition``), a model or guide that reads a tensor's value into Python
while it runs (data-dependent control flow, which a graph would freeze at the traced values),
or a graph that does not give the plain path's loss and gradients on the same draws (checked
once per signature: Pyro's ``OrderedLogistic`` computes its logits in a way the tracer
records as a constant). A fallback is recorded in :attr:`TracedObjective.fallback_reason` and
announced once by a warning (unless the caller reports it itself: ``warn=False``).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.runtime import _PYRO_STACK
from torch.distributions import kl_divergence
from torch.fx.experimental.proxy_tensor import make_fx

from .errors import one_line
from .gathered import gather_along
from .svi import Objective

TRACEABLE_ELBOS = (Trace_ELBO, TraceMeanField_ELBO)
# a graph must give the plain path's loss and gradients to this fraction of each one's largest
# magnitude: float rounding (float32 sums, bf16 autocast) stays far below it, an operation a
# trace got wrong (a value frozen at tracing time, a dropped dependency) far above
CHECK_TOLERANCE = 1e-3

_ATEN = torch.ops.aten
# factories whose only tensor argument gives dtype, device (and for *_like, shape), all of which a
# graph's signature fixes: their result is a constant of the graph
_METADATA_FACTORIES = {
    _ATEN.new_zeros.default,
    _ATEN.new_ones.default,
    _ATEN.new_full.default,
    _ATEN.zeros_like.default,
    _ATEN.ones_like.default,
    _ATEN.full_like.default,
}


class Untraceable(Exception):
    """Tracing this call would not reproduce the plain objective; the message says why."""


class TracedObjective(Objective):
    r"""The negative ELBO of ``model``/``guide`` as :class:`~ppl_models.svi.Objective`, with Pyro's
    trace work done once per input signature.

    The first call with a new signature (the shapes, dtypes and devices of the tensor arguments,
    the other arguments' values, train or eval mode) runs the plain objective once without
    drawing from the random generators (so Pyro's validation checks the model on real data and
    ``pyro.param`` sites are created), then traces the loss into a graph whose inputs are the
    parameters, buffers and tensor arguments, and replays it. Later calls with that signature
    only replay the graph.

    Parameters are bound by identity when a graph is traced: an optimizer updating them in
    place, ``load_state_dict`` and ``.to()`` are all fine; replacing a parameter object (``module.w
    = nn.Parameter(...)``) after the first call needs :meth:`reset`.

    Only ``Trace_ELBO`` and ``TraceMeanField_ELBO`` (what :func:`~ppl_models.svi.make_elbo`
    builds) can be traced; the model and guide must have a static structure.
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO, *, warn: bool = True):
        if type(elbo) not in TRACEABLE_ELBOS:
            raise ValueError(
                f"a traced objective needs Trace_ELBO or TraceMeanField_ELBO, got "
                f"{type(elbo).__name__}; use the plain objective for other estimators"
            )
        super().__init__(model, guide, elbo)
        self._graphs: dict = {}
        self.fallback_reason: str | None = None
        self.warn = warn

    def reset(self) -> None:
        """Forget every traced graph; the next call traces again."""
        self._graphs.clear()

    def _apply(self, fn, *args, **kwargs):
        # a device or dtype change: graphs keep constants of the old device and dtype
        self._graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        try:
            key = self._signature(args, kwargs)
        except Untraceable as why:
            return self._plain(str(why), args, kwargs)
        graph = self._graphs.get(key)
        if graph is None:
            try:
                graph = self._graphs[key] = self._trace(args, kwargs)
            except Untraceable as why:
                graph = self._graphs[key] = str(why)
        if isinstance(graph, str):
            return self._plain(graph, args, kwargs)
        gm, inputs = graph
        return gm(*inputs, *_tensors(args, kwargs))

    # ------------------------------------------------------------------ the fallback

    def _plain(self, reason: str, args, kwargs) -> torch.Tensor:
        if self.fallback_reason is None:
            self.fallback_reason = reason
            if self.warn:
                warnings.warn(
                    f"traced objective: using the plain Trace_ELBO path ({reason})", stacklevel=3
                )
        return super().forward(*args, **kwargs)

    # ------------------------------------------------------------------ tracing

    def _signature(self, args, kwargs) -> tuple:
        if _PYRO_STACK:
            raise Untraceable("the call runs under a Pyro effect handler")
        parts = [self.training]
        for name, value in [*enumerate(args), *sorted(kwargs.items())]:
            if isinstance(value, torch.Tensor):
                parts.append((name, tuple(value.shape), value.dtype, value.device))
                parts.append(value.requires_grad)
            else:
                parts.append((name, _hashable(value)))
        return tuple(parts)

    def _trace(self, args, kwargs) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
        devices = sorted(
            {
                t.device.index or 0
                for t in (*self.parameters(), *_tensors(args, kwargs))
                if t.device.type == "cuda"
            }
        )
        # one plain evaluation that draws nothing: it validates the model (when Pyro's
        # validation is on) and creates any pyro.param site before tracing binds parameters
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            super().forward(*args, **kwargs)
        inputs = (*self.parameters(), *self.elbo.buffers())
        positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        names = [k for k, v in sorted(kwargs.items()) if isinstance(v, torch.Tensor)]

        def loss(*tensors):
            call_args, call_kwargs = list(args), dict(kwargs)
            given = iter(tensors[len(inputs) :])
            for i in positions:
                call_args[i] = next(given)
            for name in names:
                call_kwargs[name] = next(given)
            return _negative_elbo(self.elbo, tuple(call_args), call_kwargs)

        gm = trace_graph(loss, (*inputs, *_tensors(args, kwargs)), devices)
        frozen = [
            node.target
            for node in gm.graph.nodes
            if node.op == "get_attr" and getattr(gm, node.target).requires_grad
        ]
        if frozen:
            # a graph would hold them as constants: their training would stop
            raise Untraceable(
                f"the loss uses {len(frozen)} tensor(s) that require grad but are not parameters "
                "of the model, guide or param store"
            )
        try:
            simplify(gm)
            self._check(gm, inputs, args, kwargs, devices)
        except Untraceable:
            raise
        except Exception as err:  # noqa: BLE001 - the graph, not the model, failed
            first = one_line(str(err)) or type(err).__name__
            raise Untraceable(f"the traced loss failed: {first}") from None
        return gm, inputs

    def _check(self, gm, inputs: tuple, args, kwargs, devices: list[int]) -> None:
        """Compare the graph with the plain objective on the same draws (each from the same
        random state, which is then restored, so the check draws nothing): their losses and
        the gradients of every input that requires grad must agree to
        :data:`CHECK_TOLERANCE` of each one's largest magnitude. A graph that does not (an
        operation a trace got wrong) is not used."""
        wrt = [t for t in inputs if t.requires_grad]
        results = []
        for evaluate in (
            lambda: super(TracedObjective, self).forward(*args, **kwargs),
            lambda: gm(*inputs, *_tensors(args, kwargs)),
        ):
            with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
                loss = evaluate()
                grads = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else ()
            results.append([loss.detach(), *(g for g in grads if g is not None)])
        plain, traced = results
        if len(plain) != len(traced) or not all(
            _agrees(t, p) for t, p in zip(traced, plain, strict=True)
        ):
            raise Untraceable("the traced loss or its gradients disagreed with the plain path's")


def trace_graph(
    fn: Callable, inputs: tuple, devices: list[int], what: str = "the loss"
) -> torch.fx.GraphModule:
    """``fn(*inputs)`` recorded by ``make_fx`` as a graph of ATen operations, drawing nothing
    (the random state is restored) and with Pyro's validation off. Tensors ``fn`` reads that
    are not among ``inputs`` become constants of the graph. Raises :class:`Untraceable`, naming
    ``what`` with the tracer's first line, where it fails: it refuses to read a traced tensor's
    value into Python (data-dependent control flow), or meets an operation it cannot record."""
    with (
        torch.random.fork_rng(devices=devices),
        pyro.validation_enabled(False),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer notes on constants and aliasing
        try:
            # a plain function of the tensors: make_fx counts a bound method's self
            return make_fx(lambda *tensors: fn(*tensors), pre_dispatch=True)(*inputs)
        except Exception as err:  # noqa: BLE001 - any failure of the tracer, not the model's
            first = one_line(str(err)) or type(err).__name__
            raise Untraceable(f"{what} cannot be traced: {first}") from None


def simplify(gm: torch.fx.GraphModule) -> None:
    """The rewrites of a traced graph, each exact (the same numbers as the graph traced):
    constants folded, identities dropped, negations moved below their sums, and a vector
    indexing one dimension replayed as a gather."""
    with torch.no_grad():
        _fold_constants(gm)
        _drop_identities(gm)
        _sink_negations(gm)
        _gather_indexing(gm)


def _agrees(traced: torch.Tensor, plain: torch.Tensor) -> bool:
    """Whether ``traced`` is ``plain`` within :data:`CHECK_TOLERANCE` of its largest
    magnitude (NaN where the plain path has NaN)."""
    if traced.shape != plain.shape:
        return False
    scale = (
        float(plain.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max())
        if plain.numel()
        else 0.0
    )
    tolerance = CHECK_TOLERANCE * max(scale, 1e-12)
    return bool(
        torch.allclose(traced.float(), plain.float(), rtol=0.0, atol=tolerance, equal_nan=True)
    )


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensor arguments in the graph's order: positional, then keyword by name."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return tensors + [v for _, v in sorted(kwargs.items()) if isinstance(v, torch.Tensor)]


def _hashable(value) -> tuple:
    try:
        hash(value)
    except TypeError:
        raise Untraceable(f"argument {value!r} cannot be hashed") from None
    return (type(value), value)


def _negative_elbo(elbo_module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The plain objective's value and gradient, computed with tensors only (no ``.item()``).

    Pyro's own particle losses read the ELBO into a Python float (the loss's value) and keep a
    tensor only for the surrogate; a traced graph cannot carry a Python float, so the sums over
    sites are written out here as tensors: Trace_ELBO's as :class:`pyro.infer.JitTrace_ELBO`
    writes them for tracing, TraceMeanField_ELBO's as its ``_differentiable_loss_particle``.
    Where the surrogate is the ELBO itself (every guide site reparameterised), it is the same
    tensor, and the loss is that tensor's negative.
    """
    elbo, model, guide = elbo_module.elbo, elbo_module.model, elbo_module.guide
    particle_terms = (
        _meanfield_particle if isinstance(elbo, TraceMeanField_ELBO) else _trace_particle
    )
    values, surrogates = [], []
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        value, surrogate = particle_terms(model_trace, guide_trace)
        values.append(value)
        surrogates.append(surrogate)
    # one pair of traces per particle, or one pair for all (vectorized): either way / P
    loss = -_mean(values, elbo.num_particles)
    if all(s is v for s, v in zip(surrogates, values, strict=True)):
        return loss
    surrogate = -_mean(surrogates, elbo.num_particles)
    # the value of the loss, the gradient of the surrogate (they differ for score-function sites)
    return loss.detach() + (surrogate - surrogate.detach())


def _sum(terms: list):
    total = 0.0
    for i, term in enumerate(terms):
        total = term if i == 0 else total + term
    return total


def _mean(terms: list, particles: int):
    return _sum(terms) if particles == 1 else _sum(terms) / particles


def _trace_particle(model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
    """One particle's ELBO and surrogate ELBO as ``Trace_ELBO`` defines them."""
    model_terms = [s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample"]
    guide_terms, entropy_terms, score_terms = [], [], []
    log_r = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function_term, entropy_term = site["score_parts"]
        guide_terms.append(site["log_prob_sum"])
        if entropy_term is site["log_prob"]:  # a reparameterised site: the same sum
            entropy_terms.append(site["log_prob_sum"])
        elif not is_identically_zero(entropy_term):
            entropy_terms.append(entropy_term.sum())
        if not is_identically_zero(score_function_term):
            if log_r is None:
                log_r = _compute_log_r(model_trace, guide_trace)
            term = log_r.sum_to(site["cond_indep_stack"])
            score_terms.append((term * score_function_term).sum())
    value = _sum(model_terms) - _sum(guide_terms)
    if not score_terms and len(entropy_terms) == len(guide_terms):
        if all(e is g for e, g in zip(entropy_terms, guide_terms, strict=True)):
            return value, value
    surrogate = _sum(model_terms) - _sum(entropy_terms) + _sum(score_terms)
    return value, surrogate


def _meanfield_particle(model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One particle's ELBO as ``TraceMeanField_ELBO`` defines it: the analytic
    :math:`\mathrm{KL}(q \,\|\, p)` of every latent site where one is registered, a Monte Carlo
    term elsewhere; value and surrogate coincide (every guide site is reparameterised)."""
    gains, losses = [], []
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            gains.append(model_site["log_prob_sum"])
            continue
        guide_site = guide_trace.nodes[name]
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            gains.append(model_site["log_prob_sum"])
            losses.append(guide_site["score_parts"].entropy_term.sum())
            continue
        kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
        if torch.is_tensor(kl):
            losses.append(kl.sum())
        else:
            losses.append(kl * torch.Size(guide_site["fn"].batch_shape).numel())
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            losses.append(guide_site["score_parts"].entropy_term.sum())  # auxiliary sites
    value = _sum(gains) - _sum(losses) if gains else -_sum(losses)
    return value, value


def _fold_constants(gm: torch.fx.GraphModule) -> None:
    """Compute once what depends only on constants and on shapes; drop what nothing uses.

    A graph's shapes are fixed by its signature, so besides operations on constants this folds
    factories like ``new_zeros(x, ...)`` and the constant members of ``broadcast_tensors``. Never
    folded: random operations (they must draw at every replay), ``empty`` (uninitialised
    memory), and mutating operations with any value they write to.
    """
    graph = gm.graph
    values: dict[torch.fx.Node, object] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            values[node] = getattr(gm, node.target)
            continue
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            source, index = node.args
            if source in values:
                values[node] = values[source][index]
            elif _is_op(source, _ATEN.broadcast_tensors.default):
                member = source.args[0][index]
                if member in values and "val" in node.meta:
                    values[node] = values[member].expand(node.meta["val"].shape)
            continue
        op = node.target
        if not isinstance(op, torch._ops.OpOverload) or not _foldable(node):
            continue
        sources = node.all_input_nodes
        if op in _METADATA_FACTORIES:
            sources = sources[1:]
        if not all(source in values for source in sources):
            continue
        call_args, call_kwargs = torch.fx.node.map_arg(
            (node.args, node.kwargs), lambda arg: values[arg] if arg in values else _like(arg)
        )
        values[node] = op(*call_args, **call_kwargs)
    count = 0
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in values for user in node.users):
            continue
        name = f"_folded_{count}"
        count += 1
        gm.register_buffer(name, value, persistent=False)
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        node.replace_all_uses_with(constant)
    _eliminate_dead_code(graph)
    gm.recompile()


def _drop_identities(gm: torch.fx.GraphModule) -> None:
    """Drop operations that return their input's values exactly: ``x / 1``, ``x * 1``,
    ``x - 0``, ``x + 0`` with a folded constant of ones or zeros that changes neither shape nor
    dtype, and ``x.to(dtype)`` to the dtype ``x`` has (Pyro's ``Normal(0, 1)`` prior and the
    networks' autocast casts). IEEE arithmetic makes each an identity; gradients are unchanged."""
    identities = {
        _ATEN.div.Tensor: 1.0,
        _ATEN.mul.Tensor: 1.0,
        _ATEN.sub.Tensor: 0.0,
        _ATEN.add.Tensor: 0.0,
    }
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or "val" not in node.meta:
            continue
        if any(
            isinstance(u.target, torch._ops.OpOverload) and _mutates(u.target) for u in node.users
        ):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node) or "val" not in source.meta:
            continue
        out, example = node.meta["val"], source.meta["val"]
        if not isinstance(out, torch.Tensor) or not isinstance(example, torch.Tensor):
            continue
        if out.shape != example.shape or out.dtype != example.dtype:
            continue
        if node.target is _ATEN.to.dtype and len(node.args) == 2 and not node.kwargs:
            node.replace_all_uses_with(source)
            continue
        neutral = identities.get(node.target)
        if neutral is None or len(node.args) != 2 or node.kwargs:
            continue
        other = node.args[1]
        if not (isinstance(other, torch.fx.Node) and other.op == "get_attr"):
            continue
        constant = getattr(gm, other.target)
        if isinstance(constant, torch.Tensor) and bool((constant == neutral).all()):
            node.replace_all_uses_with(source)
    _eliminate_dead_code(graph)
    used = {node.target for node in graph.nodes if node.op == "get_attr"}
    for name in [name for name in gm._buffers if name not in used]:
        del gm._buffers[name]  # constants whose every use was folded or dropped
    gm.recompile()


def _sink_negations(gm: torch.fx.GraphModule) -> None:
    """Move a negation below the sum that is its only use: ``sum(-x)`` becomes ``-sum(x)``.

    Pyro's Bernoulli, Binomial and Categorical log densities are negated cross-entropies, which
    the ELBO sums at once: the rewrite saves a pass over the summed tensor forward, and its
    gradient's backward. The numbers are the same exactly: negation is exact and the sum adds
    the same terms in the same order."""
    graph = gm.graph
    sums = (_ATEN.sum.default, _ATEN.sum.dim_IntList)
    for node in list(graph.nodes):
        if not _is_op(node, _ATEN.neg.default) or len(node.users) != 1:
            continue
        (total,) = node.users
        if not any(_is_op(total, op) for op in sums) or total.args[0] is not node:
            continue
        with graph.inserting_after(total):
            negated = graph.call_function(_ATEN.neg.default, (total,))
        negated.meta = dict(total.meta)
        total.replace_all_uses_with(negated)
        negated.args = (total,)  # its own argument, which the line above replaced too
        total.replace_input_with(node, node.args[0])
        graph.erase_node(node)
    gm.recompile()


def _gather_indexing(gm: torch.fx.GraphModule) -> None:
    """Replay ``x[..., i]``, one int64 vector ``i`` indexing one dimension of ``x`` on the CPU,
    as :func:`~ppl_models.gathered.gather_along`: the same loss and gradients to the bit, about
    a third of the time of ``index`` and its accumulating backward. A folded constant ``i``
    with no negative number is not wrapped at each replay."""
    graph = gm.graph
    for node in list(graph.nodes):
        if not _is_op(node, _ATEN.index.Tensor) or "val" not in node.meta:
            continue
        source, indices = node.args
        tensors = [(k, i) for k, i in enumerate(indices) if i is not None]
        if len(tensors) != 1:
            continue
        ((dim, index),) = tensors
        constant = getattr(gm, index.target) if index.op == "get_attr" else None
        example = index.meta.get("val", constant)
        if (
            not isinstance(example, torch.Tensor)
            or example.dtype != torch.int64
            or example.dim() != 1
            or node.meta["val"].device.type != "cpu"
        ):
            continue
        wrap = constant is None or bool((constant < 0).any())
        with graph.inserting_before(node):
            gathered = graph.call_function(gather_along, (source, dim, index), {"wrap": wrap})
        gathered.meta = dict(node.meta)
        node.replace_all_uses_with(gathered)
        graph.erase_node(node)
    gm.recompile()


def _is_op(node, op) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is op


def _mutates(op) -> bool:
    # detach_ only drops the autograd history of a fresh constant; it writes no values
    return op._schema.is_mutable and op is not _ATEN.detach_.default


def _foldable(node: torch.fx.Node) -> bool:
    op = node.target
    if torch.Tag.nondeterministic_seeded in op.tags or _mutates(op) or "empty" in op._schema.name:
        return False
    return not any(
        isinstance(user.target, torch._ops.OpOverload) and _mutates(user.target)
        for user in node.users
    )


def _like(node: torch.fx.Node) -> torch.Tensor:
    """A real tensor with the traced example's metadata (for the argument of a factory)."""
    example = node.meta["val"]
    return torch.empty_strided(
        example.shape, example.stride(), dtype=example.dtype, device=example.device
    )


def _eliminate_dead_code(graph: torch.fx.Graph) -> None:
    """Erase the nodes nothing uses, except random and mutating operations (written out: the
    ``is_impure_node`` argument of ``Graph.eliminate_dead_code`` is recent)."""
    for node in reversed(list(graph.nodes)):
        if not node.users and not _is_impure(node):
            graph.erase_node(node)


def _is_impure(node: torch.fx.Node) -> bool:
    op = node.target
    if op is _ATEN.detach_.default:
        # kept while anything else reads the tensor it detached (its autograd history matters)
        return len(node.args[0].users) > 1
    if isinstance(op, torch._ops.OpOverload) and (
        op._schema.is_mutable or torch.Tag.nondeterministic_seeded in op.tags
    ):
        return True
    return node.is_impure()
