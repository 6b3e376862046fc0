"""``sharpmix sweeps add-ratios`` and ``sharpmix sweeps compare`` (issue 11, part 5), and the
rate grid's lines of ``sharpmix sweeps recommendation`` (part 2). Short functions over the client,
wired into ``sharpmix/cli.py``'s ``sweeps`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract.recommendation import Recommendation
    from contract.reuse import SweepComparison
    from service.client import SharpmixClient
    from service.config import Settings

ClientOf = Callable[[argparse.Namespace, "Settings"], "SharpmixClient"]
Table = Callable[[Sequence[str], Sequence[Sequence[object]]], str]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def add_ratios(args: argparse.Namespace, client: SharpmixClient) -> int:
    """Add the ratios, print the sweep; with ``--wait`` follow it to its end."""
    from sharpmix.cli import _final_code, _print_json, _print_sweep, _progress

    sweep = client.add_candidates(args.sweep_id, args.ratios, args.idempotency_key)
    if args.wait:
        sweep = client.wait(sweep.id, timeout=args.timeout, on_progress=_progress(args))
    if args.json:
        _print_json(sweep.model_dump(mode="json"))
    else:
        _print_sweep(sweep)
    return _final_code(sweep) if args.wait else 0


def compare(args: argparse.Namespace, client: SharpmixClient, table: Table) -> int:
    """Print two sweeps side by side."""
    from sharpmix.cli import _print_json

    result = client.compare(args.a, args.b)
    if args.json:
        _print_json(result.model_dump(mode="json"))
        return 0
    print(render_comparison(result, table))
    return 0


def render_comparison(result: SweepComparison, table: Table) -> str:
    """The comparison as text: the answers, the spec differences, then per ratio and set."""

    def answer(rec: Recommendation | None, state: str) -> str:
        if rec is None:
            return f"none yet ({state})"
        ratio = "none qualifies" if rec.ratio is None else f"{rec.ratio:g}"
        return f"{ratio} ({rec.basis}, lr {rec.learning_rate:g}, confidence {rec.confidence})"

    lines = [
        f"a {result.a}: {answer(result.recommendation_a, result.state_a)}",
        f"b {result.b}: {answer(result.recommendation_b, result.state_b)}",
    ]
    if result.spec_differences:
        lines.append("spec differences:")
        lines += [f"  {d.field}: {d.a!r} -> {d.b!r}" for d in result.spec_differences]
    else:
        lines.append("same spec")
    rows: list[list[object]] = []
    for entry in result.ratios:
        for name, sides in entry.sets.items():
            a, b = sides.get("a"), sides.get("b")
            rows.append(
                [
                    f"{entry.ratio:g}",
                    name,
                    _num(a.eta_c if a else None),
                    _num(b.eta_c if b else None),
                    _num(a.loss_change if a else None),
                    _num(b.loss_change if b else None),
                    _verdict(entry.in_basin_a),
                    _verdict(entry.in_basin_b),
                ]
            )
    headers = ["ratio", "set", "eta_c a", "eta_c b", "dL a", "dL b", "basin a", "basin b"]
    lines.append(table(headers, rows) if rows else "neither sweep has measured anything yet")
    return "\n".join(lines)


def _verdict(value: bool | None) -> str:
    return "-" if value is None else ("in" if value else "out")


def print_rate_region(rec: Recommendation) -> None:
    """The largest stable rate per ratio, when the sweep had a rate grid."""
    region = rec.rate_region
    if region is None:
        return
    grid = ", ".join(f"{lr:g}" for lr in region.learning_rates)
    print(f"  learning rates {grid}: largest stable rate per ratio")
    for entry in region.max_rates:
        print(
            f"    ratio {entry.ratio:g}: {_num(entry.max_stable_lr)} "
            f"(first-step bound {_num(entry.eta_c_bound)})"
        )


def add_commands(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
    client_of: ClientOf,
    table: Table,
) -> None:
    """``add-ratios`` and ``compare`` under ``sharpmix sweeps``."""

    def run_add(args: argparse.Namespace, settings: Settings) -> int:
        with client_of(args, settings) as client:
            return add_ratios(args, client)

    def run_compare(args: argparse.Namespace, settings: Settings) -> int:
        with client_of(args, settings) as client:
            return compare(args, client, table)

    text = "add candidate ratios to a succeeded sweep (its gradients and trials are reused)"
    add = verbs.add_parser("add-ratios", help=text, description=text, parents=common)
    add.add_argument("sweep_id", metavar="SWEEP_ID")
    add.add_argument("ratios", metavar="RATIO", type=float, nargs="+", help="new ratios, 0-1")
    add.add_argument("--idempotency-key", help="makes a retry safe: the same key never adds twice")
    add.add_argument("--wait", action="store_true", help="wait until it has finished again")
    add.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds, with --wait")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    add.set_defaults(run=run_add)

    text = "two sweeps side by side: per ratio, both answers, the spec fields that differ"
    cmp = verbs.add_parser("compare", help=text, description=text, parents=common)
    cmp.add_argument("a", metavar="SWEEP_A")
    cmp.add_argument("b", metavar="SWEEP_B")
    cmp.set_defaults(run=run_compare)


__all__ = ["add_commands", "print_rate_region", "render_comparison"]
