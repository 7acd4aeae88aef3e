r"""The convergence rule of a fit, applied to its trace of losses.

**Convergence** is monitored as Stan's ADVI does: every ``eval_every`` steps the mean loss
:math:`\bar L_k` (the negative ELBO) over the last window is compared with the previous
window's. The rule holds at window :math:`k` when the relative change
:math:`|\bar L_k - \bar L_{k-1}| / \max(|\bar L_k|, 1)` is below ``tolerance`` (Stan's
``tol_rel_obj``, 0.01, relative to at least one nat: a posterior without data, as a funnel, has
a loss near 0) **and** the absolute change is within three standard errors of the
difference of the two window means (or 0.05 nats): a relative rule alone is met trivially when
:math:`|\mathrm{ELBO}|` is large. For a fit on minibatches (``subsampled``) a change within two
standard errors of that difference satisfies the relative part too: subsampling noise moves the
window means by more than 1% with no drift. A full-data fit gets no such allowance: its slow
drift (a fit climbing out of a funnel's neck) can hide within the Monte Carlo noise of single
windows while the relative rule still sees it. The fit is called converged when the rule holds
at the last window; it never stops early unless asked (``stop_early=True``).
"""

from __future__ import annotations

import math

import numpy as np

from .settings import FitSettings


def convergence_report(
    losses: np.ndarray,
    eval_every: int = FitSettings.eval_every,
    tolerance: float = FitSettings.tolerance,
    subsampled: bool = False,
) -> dict:
    """Apply the convergence rule (module docstring) to a loss trace; ``subsampled`` says the
    losses are minibatch estimates of the full-data loss.

    Returns a dict with ``rule`` (words), ``held`` (at the last window), ``step`` (from which
    it held to the end, or None), and per window ``window_steps``, ``window_means``,
    ``relative_changes``, ``absolute_changes``, ``noise``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    k = len(losses) // eval_every
    means, ses = [], []
    for i in range(k):
        window = losses[i * eval_every : (i + 1) * eval_every]
        means.append(float(window.mean()))
        ses.append(float(window.std(ddof=1) / math.sqrt(len(window))))
    rel, absolute, noise, held = [], [], [], []
    for i in range(1, k):
        change = abs(means[i] - means[i - 1])
        r = change / max(abs(means[i]), 1.0)  # a loss near 0 (no data) is not divided by 0
        noise_sd = math.hypot(ses[i], ses[i - 1])
        allowed = max(3.0 * noise_sd, 0.05)
        rel.append(r)
        absolute.append(change)
        noise.append(allowed)
        noise_only = subsampled and change <= 2.0 * noise_sd
        held.append((r < tolerance or noise_only) and change <= allowed)
    since = None
    for i in range(len(held) - 1, -1, -1):
        if not held[i]:
            break
        since = (i + 2) * eval_every
    minibatch = (
        " or, the losses being minibatch estimates, the change is within two standard errors "
        "of the window means' difference (no evidence of movement),"
        if subsampled
        else ""
    )
    rule = (
        f"every {eval_every} steps, the mean loss (-ELBO) over the last {eval_every} steps is "
        f"compared with the previous window's; converged when the change relative to the "
        f"loss (at least 1 nat) is below {tolerance:g} (Stan ADVI's tol_rel_obj){minibatch} "
        "and the change is within three standard errors of that difference (at least 0.05 "
        "nats)"
    )
    if not held:
        status = f"not assessed: fewer than two windows of {eval_every} steps"
    elif held[-1]:
        status = f"held from step {since} to the end ({len(losses)} steps)"
    else:
        status = (
            f"did not hold at the end: the last windows' means differ by {absolute[-1]:.3g} "
            f"nats (relative {rel[-1]:.2g}; allowed {noise[-1]:.3g} nats)"
        )
    return {
        "rule": rule,
        "status": status,
        "held": bool(held[-1]) if held else False,
        "step": since,
        "eval_every": eval_every,
        "tolerance": tolerance,
        "window_steps": [(i + 1) * eval_every for i in range(k)],
        "window_means": means,
        "relative_changes": rel,
        "absolute_changes": absolute,
        "noise": noise,
    }
