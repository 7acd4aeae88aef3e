r"""Measure the verdict on adversarial posteriors with known answers.

Every case of :mod:`ppl_models.bench.adversarial` (a model, its data, a designed guide or a real
fit, and the truth) is diagnosed **without a reference**, as a new user's fit is
(:func:`ppl_models.vi.diagnose.diagnose`), and, with ``--with-reference``, again against exact
draws of its truth where it has them. Its actual errors against the truth class it
``accurate`` (every mean within 0.1 sd, every sd ratio in [0.9, 1.1]), ``off`` (a mean more than
0.25 sd off or an sd ratio outside [0.75, 1.25]) or ``between``. Two rates:

- **false reassurance**: the share of ``off`` cases called ``trustworthy`` (target 0);
- **acceptance**: the share of ``accurate`` cases called ``trustworthy`` (target at least 80%).

Per case it prints the class, the largest mean error (in truth sds), the range of the sd
ratios, k-hat, the verdict and the rule that decided it (a label read from the verdict's
sentences: the first, or for a verdict short of ``trustworthy`` the first that does not
certify); ``bench.json`` keeps every reason.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

from .posteriors import DEFAULT_SCRIPTS

DEFAULT_DRAWS = 20_000
TARGET_FALSE_REASSURANCE = 0.0
TARGET_ACCEPTANCE = 0.8
TRUSTWORTHY = "trustworthy"  # the label, as ppl_models.vi.verdict names it

# the rule that spoke first, read from the verdict's first sentence (verdict_text.py's words);
# "other" where none matches (a reworded verdict)
RULES = (
    (r"^Where q puts mass, its own draws certify it", "self-certified"),
    (r"^All \d+ compared elements are within", "reference agrees"),
    (r"convergence rule", "not converged"),
    (r"q never visits", "missed mode"),
    (r"is above the threshold", "k-hat > threshold"),
    (r"nothing certifies the fit: k-hat", "k-hat > 0.5: no self-check"),
    (r"nothing certifies the fit: the importance ESS", "importance ESS"),
    (r"^The reference has no draws", "uncompared sites"),
    (r"are off the reference|differ from the reference|constant or not finite", "reference"),
    (r"cannot resolve|within the\s+Monte Carlo error", "reference too noisy"),
    (r"though within their Monte Carlo error", "PSIS unresolved"),
    (r"PSIS cannot check the means", "PSIS mean tails"),
    (r"PSIS cannot check the sds", "PSIS sd tails"),
    (r"moves the means", "PSIS means"),
    (r"changes the sds", "PSIS sds"),
    (r"mean-error bounds are too wide", "VIABEL mean bounds"),
    (r"means are certified .* but the sds are not|the sds cannot be certified", "VIABEL sd bounds"),
)


POSITIVE = ("self-certified", "reference agrees")  # labels of sentences that certify


def rule_of(reason: str | None) -> str:
    """A short label for the rule behind a verdict's reason (``other`` if unknown)."""
    for pattern, label in RULES:
        if reason and re.search(pattern, reason):
            return label
    return "other"


def deciding_rule(verdict: str, reasons: list[str]) -> tuple[str, str | None]:
    """The rule that decided a verdict and its sentence: for ``trustworthy``, the first reason
    that certifies (a note on a negligible mode may come before it); for a verdict short of it,
    the first reason that does not certify (a reference may agree while a later check
    withholds the certificate)."""
    labels = [rule_of(r) for r in reasons]
    for label, reason in zip(labels, reasons, strict=True):
        if (label in POSITIVE) == (verdict == TRUSTWORTHY):
            return label, reason
    return (labels[0], reasons[0]) if reasons else ("other", None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to its ``bench verdict`` subparser."""
    parser.add_argument(
        "--cases", help="comma-separated case names (default: all; --list names them)"
    )
    parser.add_argument(
        "--kinds",
        help="comma-separated kinds of case (exact, accurate, near-miss, correlated, skewed, "
        "boundary, logistic, heavy-tail, missed-mode, funnel, posteriordb, high-dim, discrete, "
        "minibatch)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=DEFAULT_DRAWS,
        help=f"guide draws S of each diagnosis (default {DEFAULT_DRAWS:,})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the diagnoses (default 0)")
    parser.add_argument(
        "--with-reference",
        action="store_true",
        dest="with_reference",
        help="also diagnose each case against exact draws of its truth, where it has them",
    )
    parser.add_argument(
        "--scripts",
        type=Path,
        default=DEFAULT_SCRIPTS,
        help=f"folder of the shipped model scripts (default {DEFAULT_SCRIPTS}, from the "
        "repository's root)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the cases (name, kind, q, about) and exit"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder for bench.json, created when missing (default: here)",
    )


def q_moments_of(summary: dict) -> dict[str, tuple[float, float]]:
    """q's mean and sd of every element, from the diagnosis's draws."""
    return {r["name"]: (r["mean"], r["sd"]) for r in summary["parameters"]}


def khat_text(summary: dict) -> str:
    """k-hat as the table shows it: ``-inf`` where every weight was equal (stored as null)."""
    k = summary.get("psis_khat")
    if k is not None:
        return f"{k:.2f}"
    if any("weights are equal" in n for n in summary.get("notes", [])):
        return "-inf"
    return "—"


def run_case(case, *, scripts: Path, draws: int, seed: int, with_reference: bool) -> dict:
    """Build, diagnose and classify one case; its record for ``bench.json``."""
    from ..vi.diagnose import diagnose
    from .adversarial import classify, measure

    start = time.perf_counter()
    built = case.build(scripts)
    built_seconds = time.perf_counter() - start
    start = time.perf_counter()
    summary = diagnose(built.fit, None, draws=draws, seed=seed, progress=False).summary
    seconds = time.perf_counter() - start
    q = built.q_moments if built.q_moments is not None else q_moments_of(summary)
    errors = measure(q, built.truth)
    reasons = list(summary["verdict_reasons"])
    rule, deciding = deciding_rule(summary["verdict"], reasons)
    record = {
        "case": case.name,
        "kind": case.kind,
        "q": case.q,
        "about": case.about,
        "truth": built.truth.source,
        "q_moments": "closed form (designed)"
        if built.q_moments is not None
        else f"q's draws (S = {summary['draws']:,})",
        "class": classify(errors),
        "max_mean_error": errors.max_mean_error,
        "worst_mean": errors.worst_mean,
        "sd_ratio_min": errors.sd_ratio_min,
        "sd_ratio_max": errors.sd_ratio_max,
        "worst_sd": errors.worst_sd,
        "elements": errors.elements,
        "khat": summary["psis_khat"],
        "khat_text": khat_text(summary),
        "khat_threshold": summary["psis_khat_threshold"],
        "d2": summary["d2"],
        "converged": summary["converged"],
        "verdict": summary["verdict"],
        "rule": rule,
        "deciding_reason": deciding,
        "first_reason": reasons[0] if reasons else None,
        "reasons": reasons,
        "build_seconds": built_seconds,
        "diagnose_seconds": seconds,
        "with_reference": None,
    }
    if with_reference and built.reference is not None:
        reference = built.reference()
        start = time.perf_counter()
        s = diagnose(built.fit, reference, draws=draws, seed=seed, progress=False).summary
        reasons = list(s["verdict_reasons"])
        rule, deciding = deciding_rule(s["verdict"], reasons)
        record["with_reference"] = {
            "reference": s["reference"],
            "verdict": s["verdict"],
            "rule": rule,
            "deciding_reason": deciding,
            "first_reason": reasons[0] if reasons else None,
            "reasons": reasons,
            "seconds": time.perf_counter() - start,
        }
    return record


def rates(
    records: list[dict],
    verdict_of=lambda r: r["verdict"],
    rule_of_record=lambda r: r.get("rule", "other"),
) -> dict:
    """False reassurance (``trustworthy`` among ``off``) and acceptance (``trustworthy`` among
    ``accurate``), with counts, the cases behind them, and how many accurate cases each rule
    rejects; ``verdict_of`` and ``rule_of_record`` read a record's verdict (None: the record
    is left out) and deciding rule."""
    judged = [r for r in records if verdict_of(r) is not None]

    def share(cls: str) -> dict:
        among = [r for r in judged if r["class"] == cls]
        yes = [r["case"] for r in among if verdict_of(r) == TRUSTWORTHY]
        return {
            "trustworthy": len(yes),
            "of": len(among),
            "rate": len(yes) / len(among) if among else None,
            "cases": yes if cls == "off" else [r["case"] for r in among if r["case"] not in yes],
        }

    false, accept = share("off"), share("accurate")
    rejected = [r for r in judged if r["class"] == "accurate" and verdict_of(r) != TRUSTWORTHY]
    by_rule: dict[str, int] = {}
    for r in rejected:
        rule = rule_of_record(r)
        by_rule[rule] = by_rule.get(rule, 0) + 1
    return {
        "false_reassurance": {**false, "target": TARGET_FALSE_REASSURANCE},
        "acceptance": {**accept, "target": TARGET_ACCEPTANCE},
        "between": sum(r["class"] == "between" for r in judged),
        "accurate_rejected_by": dict(sorted(by_rule.items(), key=lambda kv: -kv[1])),
        # "cases": the off cases called trustworthy; the accurate cases not called trustworthy
        "targets_met": {
            "false_reassurance": false["trustworthy"] == 0,
            "acceptance": accept["rate"] is not None and accept["rate"] >= TARGET_ACCEPTANCE,
        },
    }


def _list(cases) -> None:
    width = max(len(c.name) for c in cases) + 2
    for c in cases:
        print(f"{c.name:<{width}}{c.kind:<13}{c.q:<17}{c.about}")


def main(args: argparse.Namespace) -> int:
    """Diagnose every selected case, print the table and the rates, write ``bench.json``;
    returns 0, or 1 when a case could not be run (its error is in the table and the file)."""
    from . import adversarial, make_out_dir

    cases = adversarial.select(args.cases, args.kinds)
    if args.list:
        _list(cases)
        return 0
    if args.draws < 100:
        raise ValueError(f"--draws must be >= 100, got {args.draws}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    scripts = Path(args.scripts)
    if not scripts.is_dir():
        raise NotADirectoryError(f"--scripts must be the folder of the model scripts: {scripts}")
    out = make_out_dir(args.out)

    import torch

    from ..runs import atomic_write_json, environment

    env = environment(seed=args.seed, device="cpu")
    records, failed = [], []
    start = time.perf_counter()
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.name} ...", file=sys.stderr, flush=True)
        try:
            records.append(
                run_case(
                    case,
                    scripts=scripts,
                    draws=args.draws,
                    seed=args.seed,
                    with_reference=args.with_reference,
                )
            )
        except Exception as err:  # noqa: BLE001 - a case that fails is reported, not fatal
            first = (str(err).strip().splitlines() or [""])[0]
            failed.append({"case": case.name, "error": f"{type(err).__name__}: {first}"})
    result = {
        "benchmark": "verdict",
        "settings": {
            "draws": args.draws,
            "seed": args.seed,
            "with_reference": bool(args.with_reference),
            "cases": [c.name for c in cases],
        },
        "classes": {
            "accurate": "every |mean error| <= 0.1 sd and every sd ratio in [0.9, 1.1]",
            "off": "some |mean error| > 0.25 sd or some sd ratio outside [0.75, 1.25]",
            "between": "neither (reported, not scored)",
        },
        "rates": rates(records),
        "rates_with_reference": rates(
            records,
            lambda r: None if r["with_reference"] is None else r["with_reference"]["verdict"],
            lambda r: r["with_reference"]["rule"],
        )
        if args.with_reference
        else None,
        "cases": records,
        "failed": failed,
        "seconds": time.perf_counter() - start,
        "cpu_threads": torch.get_num_threads(),
        **{key: env[key] for key in ("device", "device_name", "versions", "python", "created")},
        "git_commit": env.get("git_commit"),
    }
    atomic_write_json(out / "bench.json", result)
    print_table(result)
    print(f"wrote {out / 'bench.json'}")
    return 1 if failed else 0


COLUMNS = (
    ("case", 28),
    ("kind", 12),
    ("q", 16),
    ("class", 9),
    ("mean err", 9),
    ("sd ratios", 14),
    ("k-hat", 7),
    ("verdict", 17),
    ("deciding rule", 0),
)


def _row(cells) -> str:
    out = []
    for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True)):
        text = str(cell)
        if 3 < i < 7:  # numbers right-aligned, a space before the next column
            out.append(f"{text:>{width - 1}} ")
        else:
            out.append(f"{text:<{width}}" if width else text)
    return "".join(out).rstrip()


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3f}"


def print_table(result: dict) -> None:
    """The per-case table, the rates and the accurate cases the verdict rejects."""
    s = result["settings"]
    print(
        f"ppl-models bench verdict: {len(result['cases'])} cases, S = {s['draws']:,}, "
        f"seed {s['seed']}; verdicts without a reference"
    )
    print(_row(name for name, _ in COLUMNS))
    for r in result["cases"]:
        print(
            _row(
                [
                    r["case"],
                    r["kind"],
                    r["q"],
                    r["class"],
                    _fmt(r["max_mean_error"]),
                    f"{_fmt(r['sd_ratio_min'])}-{_fmt(r['sd_ratio_max'])}",
                    r["khat_text"],
                    r["verdict"],
                    r["rule"],
                ]
            )
        )
    _print_rates("without a reference", result["rates"])
    if result.get("rates_with_reference"):
        _print_rates("with the truth as reference", result["rates_with_reference"])
        for r in result["cases"]:
            w = r["with_reference"]
            if w is not None:
                print(f"  {r['case']}: {r['class']}, with reference {w['verdict']} ({w['rule']})")
    rejected = [
        r for r in result["cases"] if r["class"] == "accurate" and r["verdict"] != TRUSTWORTHY
    ]
    if rejected:
        print("accurate cases not called trustworthy (the deciding reason):")
        for r in rejected:
            print(f"  {r['case']} [{r['verdict']}, k-hat {r['khat_text']}]: {r['deciding_reason']}")
    false = [r for r in result["cases"] if r["class"] == "off" and r["verdict"] == TRUSTWORTHY]
    for r in false:
        print(
            f"FALSE REASSURANCE: {r['case']} is off (mean error {_fmt(r['max_mean_error'])} sd, "
            f"sd ratios {_fmt(r['sd_ratio_min'])}-{_fmt(r['sd_ratio_max'])}) yet trustworthy: "
            f"{r['first_reason']}"
        )
    for f in result["failed"]:
        print(f"FAILED {f['case']}: {f['error']}")


def _print_rates(title: str, rates_: dict) -> None:
    false, accept = rates_["false_reassurance"], rates_["acceptance"]

    def pct(x):
        return "—" if x is None else f"{100 * x:.0f}%"

    met = rates_["targets_met"]
    by_rule = ", ".join(f"{rule} {n}" for rule, n in rates_["accurate_rejected_by"].items())
    print(
        f"{title}: false reassurance {false['trustworthy']}/{false['of']} off cases "
        f"({pct(false['rate'])}; target 0: {'met' if met['false_reassurance'] else 'MISSED'}); "
        f"acceptance {accept['trustworthy']}/{accept['of']} accurate cases "
        f"({pct(accept['rate'])}; target >= {100 * TARGET_ACCEPTANCE:.0f}%: "
        f"{'met' if met['acceptance'] else 'missed'}); {rates_['between']} between"
    )
    if by_rule:
        print(f"  accurate cases rejected, by deciding rule: {by_rule}")
