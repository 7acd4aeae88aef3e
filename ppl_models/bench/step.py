"""Benchmark the host's share of an SVI step: a tiny VAE whose networks cost almost nothing.

With the MLP 784-16-2 at batch 32 (the defaults) the arithmetic of a step is a few microseconds;
what is left is the host's work: Python, dispatch of each tensor operation, autograd's
bookkeeping, Adam. Five ways to take the same Adam step on the same networks and one batch,
timed in microseconds per step:

- networks only: encoder, decoder, a sum as the loss, backward, Adam (the floor any ELBO adds to);
- hand-written: the reparameterised ELBO written directly in PyTorch;
- package (plain): the package's objective, Pyro's Trace_ELBO as a module;
- package (traced): the same objective traced once and replayed as a graph (objective = traced);
- JitTrace_ELBO: Pyro's own traced ELBO (TorchScript).

Each is reported as time per step, time beyond the networks-only floor, and as a ratio of time
per step to the hand-written step (the target for the package: at most 1.5 on a CPU). After
warm-up steps the methods alternate in rounds, so a machine's drifting load hits them alike; the
median round counts.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

from ..options import DEVICES
from ..vae.options import ARCHS, LIKELIHOODS

METHODS = ("networks", "handwritten", "plain", "traced", "jit")
LABELS = {
    "networks": "networks only",
    "handwritten": "hand-written ELBO",
    "plain": "package (plain)",
    "traced": "package (traced)",
    "jit": "JitTrace_ELBO",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench step`` subparser."""
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="default: CUDA if present"
    )
    parser.add_argument("--arch", choices=ARCHS, default="mlp", help="networks (default mlp)")
    parser.add_argument(
        "--hidden-dim", type=int, default=16, dest="hidden_dim", help="mlp hidden units (16)"
    )
    parser.add_argument(
        "--latent-dim", type=int, default=2, dest="latent_dim", help="latent dimension (2)"
    )
    parser.add_argument("--batch-size", type=int, default=32, dest="batch_size", help="(32)")
    parser.add_argument(
        "--likelihood", choices=LIKELIHOODS, default="normal", help="pixel likelihood (normal)"
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round (200)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per method (9)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first (50)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a tiny step gains nothing from more; 0: torch default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and the batch")
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="folder for bench.json (default: here)"
    )


def main(args: argparse.Namespace) -> int:
    """Time the five steps, print the table, write ``bench.json``; returns 0."""
    import pyro
    import torch

    from ..runs import atomic_write_json, environment
    from ..svi import resolve_device, seed_everything

    positive = ("hidden_dim", "latent_dim", "batch_size", "steps", "repeats")
    bad = [f"--{name.replace('_', '-')}" for name in positive if getattr(args, name) < 1]
    if bad or args.warmup < 0 or args.threads < 0:
        raise ValueError(
            f"need {', '.join(bad) or '--warmup and --threads'} to be "
            f"{'>= 1' if bad else '>= 0'}; got {vars(args)}"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out must be a folder, got {out}")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seed_everything(args.seed)
        with (
            pyro.validation_enabled(False),  # as in ppl-models vae: no per-site NaN checks
            pyro.get_param_store().scope(),  # JitTrace_ELBO's entries, dropped afterwards
            pyro.settings.context(module_local_params=False),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated
            steppers, first_calls, fallback = _steppers(args, device)
            seconds, cpu_seconds = _measure(steppers, args, device)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    result = _result(args, seconds, cpu_seconds, first_calls, fallback, used_threads)
    env = environment(seed=args.seed, device=str(device))
    result.update({key: env[key] for key in ("device", "device_name", "versions", "python")})
    result["created"] = env["created"]
    atomic_write_json(out / "bench.json", result)
    _print_table(result)
    return 0


def _steppers(args, device):
    """One function per method taking ``n`` Adam steps on the batch; the seconds of each
    method's first call (tracing, compiling); the traced objective's fallback reason (None
    when it replays its graph)."""
    import copy

    import torch

    from ..svi import make_elbo, make_objective, train
    from ..vae.model import build_vae, observations
    from ..vae.networks import build_networks

    encoder, decoder = build_networks(args.arch, args.latent_dim, args.hidden_dim)
    model, guide = build_vae(encoder, decoder, args.latent_dim, args.likelihood)
    model, guide = model.to(device), guide.to(device)
    pixels = torch.rand(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = observations(pixels, args.likelihood).to(device)
    losses = {}
    for method in METHODS:
        pair = copy.deepcopy(model), copy.deepcopy(guide)
        if method == "jit":
            losses[method] = _jit_loss(*pair)
        elif method in ("networks", "handwritten"):
            losses[method] = _torch_loss(*pair, method)
        else:
            losses[method] = make_objective(*pair, make_elbo("trace"), method)
    steppers, first_calls = {}, {}
    for method, loss_fn in losses.items():
        start = time.perf_counter()
        loss_fn(x)  # creates parameters (JitTrace_ELBO: its param-store entries) and graphs
        first_calls[method] = time.perf_counter() - start
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

        def steps(n, loss_fn=loss_fn, optimizer=optimizer):
            train(loss_fn, optimizer, [(x,)] * n, sync_every=n, progress=False)

        steppers[method] = steps
    return steppers, first_calls, losses["traced"].fallback_reason


def _measure(steppers: dict, args, device) -> tuple[dict, dict]:
    """Wall and process-CPU seconds per step of every round of every method; the order rotates
    from round to round. On a shared machine the CPU time is the steadier of the two: it leaves
    out the time the process waits for a core."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for steps in steppers.values():
        steps(args.warmup)
    wall = {method: [] for method in steppers}
    cpu = {method: [] for method in steppers}
    order = list(steppers)
    for round_ in range(args.repeats):
        for method in order[round_ % len(order) :] + order[: round_ % len(order)]:
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            steppers[method](args.steps)
            sync()
            wall[method].append((time.perf_counter() - start) / args.steps)
            cpu[method].append((time.process_time() - start_cpu) / args.steps)
    return wall, cpu


def _torch_loss(model, guide, method: str):
    """The hand-written ELBO, or the networks alone with a plain sum as the loss, as a module."""
    import torch

    from .vae import handwritten_loss

    class TorchLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.guide = model, guide

        def forward(self, x):
            if method == "handwritten":
                return handwritten_loss(self.model, self.guide, x)
            loc, log_scale = self.guide.encoder(x)
            return self.model.decoder(loc + log_scale).sum()

    return TorchLoss()


def _jit_loss(model, guide):
    """Pyro's ``JitTrace_ELBO`` on the same pair, as a module.

    JitTrace_ELBO hands TorchScript the param store's entries, so model and guide register their
    networks with ``pyro.module``; :func:`main` runs the benchmark in a param store of its own
    with ``module_local_params`` off.
    """
    import pyro
    import torch
    from pyro.infer import JitTrace_ELBO

    def pyro_model(x):
        pyro.module("decoder", model)
        model(x)

    def pyro_guide(x):
        pyro.module("encoder", guide)
        guide(x)

    class JitLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.guide = model, guide
            self.elbo = JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)

        def forward(self, x):
            # the same two functions at every call: JitTrace_ELBO compiles once per their ids
            return self.elbo.differentiable_loss(pyro_model, pyro_guide, x)

    return JitLoss()


def _result(args, seconds: dict, cpu_seconds: dict, first_calls, fallback, threads: int) -> dict:
    median = {method: statistics.median(s) for method, s in seconds.items()}
    cpu = {method: statistics.median(s) for method, s in cpu_seconds.items()}
    rows = []
    for method in METHODS:
        rows.append(
            {
                "method": method,
                "us_per_step": 1e6 * median[method],
                "us_min": 1e6 * min(seconds[method]),
                "us_rounds": [1e6 * s for s in seconds[method]],
                "us_beyond_networks": 1e6 * (median[method] - median["networks"]),
                "first_call_s": first_calls[method],
                "time_over_handwritten": median[method] / median["handwritten"],
                "cpu_us_per_step": 1e6 * cpu[method],
                "cpu_time_over_handwritten": cpu[method] / cpu["handwritten"],
            }
        )
    hand_extra = median["handwritten"] - median["networks"]
    return {
        "benchmark": "step",
        "arch": args.arch,
        "hidden_dim": args.hidden_dim,
        "latent_dim": args.latent_dim,
        "batch_size": args.batch_size,
        "likelihood": args.likelihood,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu_threads": threads,
        "traced_fallback": fallback,
        "rows": rows,
        # the targets: time per step of the package over the hand-written one, <= 1.5 on a CPU
        "time_plain_over_handwritten": median["plain"] / median["handwritten"],
        "time_traced_over_handwritten": median["traced"] / median["handwritten"],
        "time_jit_over_handwritten": median["jit"] / median["handwritten"],
        "cpu_time_plain_over_handwritten": cpu["plain"] / cpu["handwritten"],
        "cpu_time_traced_over_handwritten": cpu["traced"] / cpu["handwritten"],
        # the same for what each adds to the networks-only step (None if the floor is not below)
        "beyond_networks_traced_over_handwritten": (
            (median["traced"] - median["networks"]) / hand_extra if hand_extra > 0 else None
        ),
        "beyond_networks_plain_over_handwritten": (
            (median["plain"] - median["networks"]) / hand_extra if hand_extra > 0 else None
        ),
    }


def _print_table(result: dict) -> None:
    arch = (
        f"MLP 784-{result['hidden_dim']}-{result['latent_dim']}"
        if result["arch"] == "mlp"
        else f"conv, latent {result['latent_dim']}"
    )
    print(
        f"SVI step of a {arch} VAE, batch {result['batch_size']}, {result['likelihood']}; device "
        f"{result['device']} ({result['device_name']}), {result['cpu_threads']} CPU threads, "
        f"torch {result['versions']['torch']}, pyro {result['versions']['pyro-ppl']}"
    )
    header = ("method", "us/step", "min", "beyond networks", "x hand-written", "CPU us/step")
    header += ("CPU x hand", "1st call ms")
    print(f"{header[0]:<20}" + "".join(f"{h:>16}" for h in header[1:]))
    for row in result["rows"]:
        cells = (
            row["us_per_step"],
            row["us_min"],
            row["us_beyond_networks"],
            row["time_over_handwritten"],
        )
        print(
            f"{LABELS[row['method']]:<20}"
            + "".join(f"{c:>16.0f}" for c in cells[:3])
            + f"{cells[3]:>16.2f}{row['cpu_us_per_step']:>16.0f}"
            + f"{row['cpu_time_over_handwritten']:>16.2f}{1e3 * row['first_call_s']:>16.0f}"
        )
    print(
        f"median of {result['repeats']} rounds of {result['steps']} steps; time (traced)/(hand-"
        f"written) = {result['time_traced_over_handwritten']:.2f} (target <= 1.5 on a CPU), "
        f"(plain)/(hand-written) = {result['time_plain_over_handwritten']:.2f}; in process CPU "
        f"time {result['cpu_time_traced_over_handwritten']:.2f} and "
        f"{result['cpu_time_plain_over_handwritten']:.2f}"
    )
    if result["traced_fallback"]:
        print(
            "warning: the traced objective fell back to the plain path: "
            + result["traced_fallback"]
        )
