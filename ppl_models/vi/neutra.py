r"""NUTS preconditioned by a fitted guide (NeuTra): the escalation ladder's last rung.

A fitted autoguide is a bijection :math:`z = T(v)` from a standard normal :math:`v` to the flat
unconstrained latent vector :math:`z` (an affine map for the Gaussian guides, a flow for
``auto-iaf``). Where the guide is good, the posterior pulled back through :math:`T`,

.. math:: \pi(v) \propto p(x, T_u(T(v)))\,\lvert\det J_{T_u}(T(v))\rvert\,
          \lvert\det J_T(v)\rvert,

(:math:`T_u` the supports' bijections) is close to a standard normal, whatever the scales and
correlations of the posterior itself: NUTS there needs short trajectories and little warm-up
(Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural
transport"; Pyro's ``NeuTraReparam``). The sampler is :class:`~ppl_models.vi.nuts.VectorizedNuts`
on the batched, compiled potential of :math:`\pi`; its draws are mapped back through :math:`T`
and :math:`T_u` to the model's own sites, deterministic sites included.

:func:`run_nuts` starts the chains at draws of the guide, warms up, draws a first round and then
doubles the kept draws until the checks hold or the draws or the time run out:

- every element's rank-normalised split R-hat at most 1.01 (Vehtari et al. 2021);
- every element's bulk and tail ESS at least 400;
- no divergent transition after warm-up (a divergence means a region the integrator cannot
  follow, and its absence from the draws a bias). After divergences the chains are warmed up
  again towards a target acceptance of 0.95 (shorter steps: Stan's advice of raising
  ``adapt_delta``), and their draws made again; and once more towards 0.99 where at most 1% of
  the transitions still diverge (:func:`retry_target`). Many divergences at 0.95 are the
  geometry (a funnel's neck), which no step size cures: a reparameterization does.

Each element's squared deviations from its mean have a Pareto tail :math:`\hat k`
(:func:`ppl_models.pareto.squared_deviation_khat`), twice the :math:`\hat k` of its own tails.
Where it is at least 1/2, the sd's estimator has no finite variance: its Monte Carlo error is a
lower bound (a heavy tail is visited too rarely for the draws to show its weight), and the
verdict says so. Where it is above the sample-size threshold :math:`\min(1 - 1/\log_{10} S,
0.7)` (Vehtari et al. 2024, the one PSIS uses), no sd can be estimated from the :math:`S` draws
(``unreliable_sds``: the verdict is ``means-only``); where half of it is, no mean can
(``unreliable_means``: ``not-trustworthy``). A Cauchy mixes well in rank, and passes R-hat and
ESS, yet has neither (NUTS visits its tails too rarely for the draws to show more than
:math:`\hat k \approx 1` for the squared deviations, so it is the sd rule that catches it); the
sds of Neal's funnel's :math:`x` exist, but its draws cannot estimate them. More draws do not
cure either (the threshold is 0.7 from 2,154 draws on), so they do not lengthen the rounds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from .. import diagnostics, pareto
from ..svi import default_dtype, local_params
from .compare import flatten_sites
from .guides import FULL_RANK_MAX
from .logweights import element_names
from .nuts import NutsRun, VectorizedNuts, compiled_potential
from .settings import NutsLadderSettings
from .traces import per_draw_value
from .unconstrained import evaluate_draws, guide_layout
from .vmapped import LOOP, PLATE, VMAP, log_joint_fn

RETRY_TARGETS = (0.95, 0.99)  # the target acceptances of the warm-ups after divergences
FEW_DIVERGENCES = 0.01  # at most this share of transitions diverging: a step size can cure it
MAX_R_HAT = 1.01
MIN_ESS = 400.0
SD_TAIL_KHAT = 0.5  # at and above it an sd's estimator has no finite variance (module docstring)
VALUE_CHUNK = 1000  # NUTS draws mapped back to the model's sites per batched call


# ----------------------------------------------------------------------------- the transport map


@dataclass
class Transport:
    r""":math:`z = T(v)` of a fitted guide, as torch functions of a batch ``(n, D)``: ``forward``
    returns :math:`z` and :math:`\log\lvert\det J_T(v)\rvert` ``(n,)``."""

    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    kind: str
    dim: int


def transport(guide) -> Transport:
    """The guide's map from a standard normal (module docstring), its parameters frozen.

    Raises
    ------
    ValueError
        For a guide that is not a distribution over the flat unconstrained vector.
    """
    with torch.no_grad():
        posterior = guide.get_posterior()
    if isinstance(posterior, dist.Independent) and isinstance(posterior.base_dist, dist.Normal):
        loc = posterior.base_dist.loc.detach()
        scale = posterior.base_dist.scale.detach()
        log_det = scale.log().sum()

        def diagonal(v):
            return loc + scale * v, log_det.expand(v.shape[0])

        return Transport(diagonal, "diagonal affine", len(loc))
    if isinstance(posterior, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        loc = posterior.loc.detach()
        if isinstance(posterior, dist.LowRankMultivariateNormal) and len(loc) > FULL_RANK_MAX:
            # a d x d Cholesky factor is out of reach: the marginal sds only
            scale = posterior.variance.detach().sqrt()
            log_det = scale.log().sum()
            return Transport(
                lambda v: (loc + scale * v, log_det.expand(v.shape[0])), "diagonal affine", len(loc)
            )
        with torch.no_grad():
            tril = posterior.scale_tril.detach()
        log_det = tril.diagonal().log().sum()

        def affine(v):
            return loc + v @ tril.T, log_det.expand(v.shape[0])

        return Transport(affine, "affine", len(loc))
    if isinstance(posterior, dist.TransformedDistribution):
        base = posterior.base_dist
        inner = base.base_dist if isinstance(base, dist.Independent) else base
        if not isinstance(inner, dist.Normal):
            raise ValueError("NeuTra needs a flow on a standard normal base")
        transforms = [copy.deepcopy(t) for t in posterior.transforms]
        for t in transforms:
            if isinstance(t, torch.nn.Module):
                t.requires_grad_(False)
        base_loc, base_scale = inner.loc.detach(), inner.scale.detach()
        base_log_det = base_scale.log().sum()

        def flow(v):
            x = base_loc + base_scale * v
            log_det = base_log_det.expand(v.shape[0])
            for t in transforms:
                y = t(x)
                ladj = t.log_abs_det_jacobian(x, y)
                log_det = log_det + (ladj.sum(-1) if ladj.dim() > 1 else ladj)
                x = y
            return x, log_det

        return Transport(flow, "flow", int(base_loc.shape[-1]))
    raise ValueError(
        f"NeuTra needs a Gaussian or flow guide over the flat unconstrained vector, got "
        f"{type(posterior).__name__}"
    )


# ----------------------------------------------------------------------------- the potential


def evaluation_mode(fit) -> str:
    """How a batch of points is evaluated: as the fit evaluated its particles."""
    mode = getattr(fit, "vectorization", PLATE)
    return mode if mode in (PLATE, VMAP, LOOP) else LOOP


def batched_log_joint(fit, mode: str | None = None) -> Callable:
    """:func:`~ppl_models.vi.vmapped.log_joint_fn` for ``fit``'s model, with the draws under a
    plate at the fit's own plate depth (the guide's prototype trace may not show it: a plate
    holding only observed sites)."""
    discrete = getattr(fit, "discrete", None)
    if discrete:  # summed out, one point at a time
        return log_joint_fn(fit.model, fit.guide, fit.data, LOOP, discrete=discrete)
    mode = mode or evaluation_mode(fit)
    if mode == PLATE:
        layout = guide_layout(fit.guide)
        nesting = int(getattr(fit, "max_plate_nesting", 1) or 0)
        return lambda u: evaluate_draws(fit.model, layout, u, fit.data, nesting)
    return log_joint_fn(fit.model, fit.guide, fit.data, mode)


def neutra_potential(fit, move: Transport) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""The potential of :math:`\pi(v)` (module docstring) for a batch ``(C, D)``."""
    log_joint = batched_log_joint(fit)

    def potential(v: torch.Tensor) -> torch.Tensor:
        z, log_det = move.forward(v)
        with pyro.validation_enabled(False), local_params():
            lj, jac, _, _ = log_joint(z)
        return -(lj + jac + log_det)

    return potential


# ----------------------------------------------------------------------------- the draws


@dataclass
class NutsDraws:
    """A NUTS run mapped back to the model: ``values`` site -> ``(C, N, *shape)`` (latent sites,
    then deterministic ones), ``kinds`` site -> latent or deterministic, ``unconstrained``
    ``(C, N, D)`` (the flat latent vector :math:`z`), the run, its checks and notes."""

    values: dict[str, np.ndarray]
    kinds: dict[str, str]
    unconstrained: np.ndarray
    run: NutsRun
    checks: dict
    summaries: dict[str, dict]
    compiled: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def _site_values(fit, z: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The latent and deterministic sites' values at flat unconstrained points ``z`` ``(n, D)``."""
    dtype = fit.dtype
    mode = evaluation_mode(fit)
    with torch.no_grad(), pyro.validation_enabled(False), local_params():
        one = log_joint_fn(fit.model, fit.guide, fit.data, LOOP)(
            torch.as_tensor(z[:1], dtype=dtype)
        )
        shapes = {k: tuple(v.shape[1:]) for k, v in {**one[2], **one[3]}.items()}
        kinds = {k: "latent" for k in one[2]} | {k: "deterministic" for k in one[3]}
        batched = batched_log_joint(fit, mode)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in shapes}
        for lo in range(0, len(z), VALUE_CHUNK):
            chunk = torch.as_tensor(z[lo : lo + VALUE_CHUNK], dtype=dtype)
            _, _, latent, deterministic = batched(chunk)
            for name, value in {**latent, **deterministic}.items():
                if name in parts:
                    v = per_draw_value(value, len(chunk), shapes[name], name)
                    parts[name].append(v.detach().cpu().double().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}, kinds


def mcmc_checks(
    values: dict[str, np.ndarray], run: NutsRun, max_tree_depth: int = 10
) -> tuple[dict, dict[str, dict]]:
    """R-hat, bulk and tail ESS of every element (ArviZ, through
    :func:`ppl_models.diagnostics.summarize_draws`), divergences and saturated trees; ``passed``
    says whether every check holds. Elements constant in every draw have no R-hat or ESS and are
    left out. ``heavy_tails`` names the elements whose sds' Monte Carlo errors are lower bounds,
    ``unreliable_sds`` and ``unreliable_means`` those whose sds or means the draws cannot
    estimate (module docstring), each threshold raised for the largest of many estimates
    (:func:`ppl_models.pareto.family_threshold`)."""
    elements = flatten_sites(values, lead=2)
    summaries = diagnostics.summarize_draws(elements)
    varying = {
        k: s for k, s in summaries.items() if np.ptp(elements[k]) > 0 and math.isfinite(s["r_hat"])
    }

    def worst(key, pick):
        if not varying:
            return None, None
        name = pick(varying, key=lambda k: varying[k][key])
        return name, varying[name][key]

    r_name, r_hat = worst("r_hat", max)
    b_name, bulk = worst("ess_bulk", min)
    t_name, tail = worst("ess_tail", min)
    divergences = int(run.diverging.sum())
    saturated = int((run.tree_depth >= max_tree_depth).sum())
    names = list(varying)
    pooled = run.chains * run.kept
    tail_k = (
        pareto.squared_deviation_khat(np.stack([elements[k].ravel() for k in names]))
        if names and pooled >= 2
        else np.zeros(0)
    )
    tail_limit = pareto.family_threshold(SD_TAIL_KHAT, len(names), pooled)
    estimable = pareto.family_threshold(diagnostics.khat_threshold(pooled), len(names), pooled)
    fitted = np.isfinite(tail_k)  # inf: too few distinct large values to fit (a discrete one)

    def above(limit: float, scale: float = 1.0) -> list[str]:
        return [
            n for n, k, f in zip(names, tail_k, fitted, strict=True) if f and k / scale >= limit
        ]

    energy = run.energy
    e_bfmi = (  # Betancourt's energy Bayesian fraction of missing information, per chain
        (np.diff(energy, axis=1) ** 2).mean(axis=1) / energy.var(axis=1)
        if run.kept > 2 and np.all(energy.var(axis=1) > 0)
        else None
    )
    checks = {
        "chains": run.chains,
        "draws_per_chain": run.kept,
        "warmup": run.warmup,
        "max_r_hat": r_hat,
        "max_r_hat_element": r_name,
        "min_ess_bulk": bulk,
        "min_ess_bulk_element": b_name,
        "min_ess_tail": tail,
        "min_ess_tail_element": t_name,
        "divergences": divergences,
        "max_tree_depth_hits": saturated,
        "mean_tree_depth": float(run.tree_depth.mean()) if run.kept else None,
        "min_e_bfmi": None if e_bfmi is None else float(e_bfmi.min()),
        "max_sd_tail_khat": float(tail_k[fitted].max()) if fitted.any() else None,
        "max_sd_tail_khat_element": (
            names[int(np.where(fitted, tail_k, -np.inf).argmax())] if fitted.any() else None
        ),
        "sd_tail_khat_limit": tail_limit,
        "heavy_tails": above(tail_limit),
        "estimable_khat_limit": estimable,
        "unreliable_sds": above(estimable),
        "unreliable_means": above(estimable, scale=2.0),
        "step_size": [float(e) for e in run.step_size],
        "gradient_calls": run.gradient_calls,
        "rules": f"split R-hat <= {MAX_R_HAT}, bulk and tail ESS >= {MIN_ESS:g}, no divergence",
    }
    failed = []
    if run.kept == 0:
        failed.append("no draws were kept")
    if r_hat is not None and not r_hat <= MAX_R_HAT:
        failed.append(f"split R-hat {r_hat:.3f} ({r_name}) above {MAX_R_HAT}")
    if bulk is not None and not bulk >= MIN_ESS:
        failed.append(f"bulk ESS {bulk:.0f} ({b_name}) below {MIN_ESS:g}")
    if tail is not None and not tail >= MIN_ESS:
        failed.append(f"tail ESS {tail:.0f} ({t_name}) below {MIN_ESS:g}")
    if divergences:
        failed.append(f"{divergences} divergent transition(s) after warm-up")
    checks["failed"] = failed
    checks["passed"] = not failed
    return checks, summaries


def run_nuts(
    fit,
    settings: NutsLadderSettings | None = None,
    *,
    seed: int = 0,
    deadline: float | None = None,
) -> NutsDraws:
    """NeuTra NUTS preconditioned by ``fit``'s guide (module docstring).

    Parameters
    ----------
    fit
        An :class:`~ppl_models.vi.fitting.SviFit` with a package autoguide (a Gaussian or
        ``auto-iaf``); its model's discrete latent sites, if any, are summed out of the
        potential (one chain's point at a time).
    settings
        Chains, warm-up, first and largest draws per chain, tree depth, target acceptance,
        whether to compile the potential.
    deadline
        ``time.perf_counter()`` value at which warm-up or sampling stops (the draws so far are
        kept and the checks say what they lack).

    Raises
    ------
    ValueError
        For a guide NeuTra cannot use, or a potential that is not finite at the starting points.
    """
    with default_dtype(fit.dtype):  # constants the model makes agree with its latents
        return _run_nuts(fit, settings or NutsLadderSettings(), seed, deadline)


def _run_nuts(fit, settings: NutsLadderSettings, seed: int, deadline: float | None) -> NutsDraws:
    start = time.perf_counter()
    notes = []
    move = transport(fit.guide)
    potential = neutra_potential(fit, move)
    c, d = settings.chains, move.dim
    generator = torch.Generator().manual_seed(seed)
    normal = [torch.randn(c, d, generator=generator, dtype=fit.dtype) for _ in range(3)]
    compiled = compiled_potential(potential, normal[0], normal[1:], jit=settings.jit)
    if compiled.note:
        notes.append(f"The potential runs eagerly: {compiled.note}.")
    # the chains start at draws of the guide: v ~ N(0, I)
    init = normal[0].double().numpy()
    sampler = VectorizedNuts(
        compiled.fn,
        init,
        seed=seed,
        max_tree_depth=settings.max_tree_depth,
        target_accept=settings.target_accept,
    )
    warmup_seconds = sampling_seconds = 0.0
    retried: list[int] = []  # the divergences of each run before a retry
    while True:
        t = time.perf_counter()
        finished = sampler.warmup(settings.warmup, deadline)
        warmup_seconds += time.perf_counter() - t
        t = time.perf_counter()
        rounds, checks, summaries, values, kinds, z, stopped_early = _rounds(
            sampler, fit, move, settings, finished, deadline
        )
        sampling_seconds += time.perf_counter() - t
        # divergences in a region the adapted step is too long for (a banana's or a funnel's
        # tails): warm up once more towards a higher acceptance, with shorter steps, and redraw
        diverged = checks.get("divergences") if finished and not stopped_early else 0
        transitions = c * (rounds[-1] if rounds else 0)
        target = retry_target(sampler.target, diverged, transitions) if diverged else None
        if target is not None:
            retried.append(diverged)
            notes.append(
                f"{diverged} transition(s) diverged at target acceptance {sampler.target:g}: "
                f"the chains were warmed up again towards {target:g} (shorter steps) and "
                "their draws made again; only the last run's draws are kept."
            )
            sampler.target = target
            sampler.discard()
            continue
        break
    run = sampler.result(
        warmup_seconds=warmup_seconds,
        sampling_seconds=sampling_seconds,
        stopped_early=stopped_early,
    )
    if z is None:  # the deadline came during warm-up
        z = np.zeros((c, 0, d))
        checks = {"passed": False, "failed": ["the time ran out during warm-up"], "chains": c}
    else:
        checks.setdefault("failed", [])
    if stopped_early and run.kept:
        checks["failed"] = [*checks["failed"], "the time ran out before the draws were complete"]
        checks["passed"] = False
    checks.update(
        rounds=rounds,
        target_accept=sampler.target,
        divergences_before_retry=retried or None,
        warmup_seconds=warmup_seconds,
        sampling_seconds=run.sampling_seconds,
        compiled=compiled.how,
        preconditioner=f"{getattr(fit, 'guide_name', 'guide')} ({move.kind})",
    )
    notes.append(
        f"NeuTra NUTS: {c} chains run together (vectorized), {run.warmup} warm-up iterations "
        f"(step size by dual averaging, diagonal mass matrix), then "
        f"{' -> '.join(str(r) for r in rounds) or 'no'} kept draws per chain; the potential "
        f"({compiled.how}) is the posterior pulled back through the {move.kind} map of the "
        f"{checks['preconditioner']} guide, and the draws are pushed forward to the model's sites."
    )
    return NutsDraws(
        values=values,
        kinds=kinds,
        unconstrained=z,
        run=run,
        checks=checks,
        summaries=summaries,
        compiled=compiled.how,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def retry_target(target: float, divergences: int, transitions: int) -> float | None:
    """The target acceptance of the next warm-up after ``divergences`` of ``transitions``
    diverged at ``target``: the next of :data:`RETRY_TARGETS` above it, the first always and
    the later ones only where at most :data:`FEW_DIVERGENCES` of the transitions diverged;
    None where there is none to try."""
    higher = [t for t in RETRY_TARGETS if t > target]
    if not higher or (
        len(higher) < len(RETRY_TARGETS) and divergences > FEW_DIVERGENCES * transitions
    ):
        return None
    return higher[0]


def _rounds(sampler, fit, move, settings, finished, deadline):
    """Draw rounds after warm-up: a first round of ``settings.draws`` per chain, doubled while
    the checks fail for want of draws (too few effective draws, a noisy R-hat), never past
    ``max_draws`` or the deadline. Returns the rounds' sizes, the checks, the ArviZ summaries,
    the site values, their kinds, the unconstrained draws, and whether the deadline cut in."""
    c, d = sampler.z.shape
    rounds, want, kept = [], settings.draws, 0
    checks, summaries, values, kinds, z = {}, {}, {}, {}, None
    stopped_early = not finished
    while finished:
        need = want - kept
        got = sampler.sample(need, deadline)
        kept += got
        run = sampler.result()
        if not run.kept:
            stopped_early = True
            break
        z = _to_unconstrained(move, run.draws, fit.dtype)
        values, kinds = _site_values(fit, z.reshape(-1, d))
        values = {k: v.reshape(c, run.kept, *v.shape[1:]) for k, v in values.items()}
        checks, summaries = mcmc_checks(values, run, settings.max_tree_depth)
        rounds.append(run.kept)
        if got < need:
            stopped_early = True
            break
        # more draws cure too few effective draws and a noisy R-hat, never a divergence
        if checks["passed"] or want >= settings.max_draws or checks["divergences"]:
            break
        want = min(2 * want, settings.max_draws)
    return rounds, checks, summaries, values, kinds, z, stopped_early


def _to_unconstrained(move: Transport, v: np.ndarray, dtype) -> np.ndarray:
    c, n, d = v.shape
    with torch.no_grad():
        z, _ = move.forward(torch.as_tensor(v.reshape(-1, d), dtype=dtype))
    return z.double().numpy().reshape(c, n, d)


def element_list(values: dict[str, np.ndarray]) -> list[str]:
    """Element names of ``(C, N, *shape)`` site arrays, in order."""
    out = []
    for site, arr in values.items():
        out += element_names(site, arr.shape[2:])
    return out
