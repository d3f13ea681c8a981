"""The ``eplb-native`` command line (also ``python -m eplb_native``); the only module that prints.

Commands:
    simulate  replay a trace, re-planning with each policy, and print the balance table
    plan      a static plan from a whole trace, written as a vllm-ascend expert_map_path JSON
    inspect   the balance of an existing expert_map_path JSON on a trace

Exit codes: 0 success, 2 bad input (bad option, malformed trace or map), printed without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eplb_native import __version__
from eplb_native.checks import check_num_threads
from eplb_native.expert_map import load_expert_map_with_ranks, save_expert_map
from eplb_native.limits import MAX_THREADS
from eplb_native.metrics import evaluate
from eplb_native.plan import Plan, default_placement
from eplb_native.planning import POLICY_NAMES
from eplb_native.sim.replay import STATIC, ReplayResult, ReplaySettings, replay
from eplb_native.sim.traces import (
    SHIPPED_TRACE,
    TRACE_EXTENSIONS,
    SyntheticSeries,
    Trace,
    as_time_series,
    load_trace,
    shipped_trace_path,
)

logger = logging.getLogger(__name__)

_TRACE_HELP = (
    f"expert-load trace ({', '.join(TRACE_EXTENSIONS)}); default: the shipped {SHIPPED_TRACE} "
    "(Qwen3-30B-A3B decode, MIT). Formats: .npz with 'load' [T,L,N] or [L,N]; .npy; CSV "
    "'step,layer,expert,count' (long) or 'step,layer,<N expert columns>' (wide); SGLang "
    "expert_distribution_recorder .pt dumps ('logical_count', or per-pass 'records'); a .pt dict "
    "with vLLM's 'expert_load_window' + 'physical_to_logical_map' (vLLM writes no load file: save "
    "those EplbModelState fields yourself); JSON with 'logical_count' or 'load'"
)
_SYNTHETIC_HELP = (
    "A trace with a single aggregate step (like the shipped one) is replayed as a SYNTHETIC "
    "series built from it: each step draws tokens-per-step x top-k expert selections per layer "
    "(multinomial) from the aggregate expert shares, drifted by a mean-reverting log-normal "
    "random walk on each expert's popularity; --seed fixes it."
)


_VERBOSE_HELP = "log one line per rebalance"


class _UsageError(ValueError):
    """A bad combination of options, reported like argparse's own errors."""


DEFAULT_POLICIES: tuple[str, ...] = tuple(name for name in POLICY_NAMES if name != "random")
"""What ``simulate`` compares by default: every policy except ``random``."""


def policy_options(policies: Sequence[str], episode: int | None) -> dict[str, Any]:
    """The ``options=`` object of each policy that takes one from the command line:
    FlashLB's ``episode_steps`` from ``--episode`` (None: FlashLBOptions' default)."""
    if "flashlb" not in policies:
        return {}
    from eplb_native.flashlb import FlashLBOptions

    options = FlashLBOptions() if episode is None else FlashLBOptions(episode_steps=episode)
    return {"flashlb": options}


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        msg = f"expected a positive integer, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = f"expected an integer >= 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _thread_count(text: str) -> int:
    try:
        return check_num_threads(int(text), "--threads")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--threads: ")) from error


def _add_shape_options(parser: argparse.ArgumentParser, default_ranks: int | None) -> None:
    parser.add_argument(
        "--ranks",
        type=_positive,
        default=default_ranks,
        required=default_ranks is None,
        help="D, expert-parallel ranks" + (f" (default {default_ranks})" if default_ranks else ""),
    )
    slots = parser.add_mutually_exclusive_group()
    slots.add_argument("--slots", type=_positive, help="S, expert slots per rank (P = D * S)")
    slots.add_argument(
        "--redundant",
        type=_non_negative,
        help="R, redundant slots beyond the N experts (P = N + R); default: one per rank",
    )
    parser.add_argument(
        "--threads",
        type=_thread_count,
        default=0,
        help=f"planner threads, at most the usable cores (0: all of them; up to {MAX_THREADS})",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative,
        default=0,
        help="seed of the policies and the synthetic series",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eplb-native",
        description="Expert Parallelism Load Balancer: replay traces, compare policies, write expert maps.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    # -v after the command too; SUPPRESS keeps the value given before it when it is absent.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_simulate(commands, verbose)
    _add_plan(commands, verbose)
    _add_inspect(commands, verbose)
    return parser


def _add_simulate(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser
) -> None:
    """The ``simulate`` subcommand: replay a trace with each policy."""
    simulate = commands.add_parser(
        "simulate",
        parents=[verbose],
        help="replay a trace with each policy and print the balance table",
        description=(
            "Replays a trace as a server would: the default placement first, then every "
            "--interval steps each policy re-plans with the runtime's call (planning.plan, "
            "FlashLB remembering each layer's balance) from the window just seen (per step; "
            "FlashLB folds it into episodes of --episode steps) and is scored on the steps that "
            "follow (out of sample). "
            "Columns: per-step PAR (max/mean rank load, layer mean) mean and p99; PAR of each "
            "window's summed load; gap of its max rank load to the lower bound; weight copies per "
            "rebalance; layers updated (all rebalances); planning ms per call. 'static' keeps the "
            "default placement. Policy rows split each expert's tokens evenly over its replicas; "
            "the 'fixed' and 'spread' rows under each score the same placements under the "
            "runtime's replica routing (fixed: each rank sends an expert's tokens to one replica; "
            "spread: a rank's own replica first, the rest spread over the replicas), tokens "
            "coming from every rank in equal parts. " + _SYNTHETIC_HELP
        ),
    )
    simulate.add_argument("--trace", type=Path, help=_TRACE_HELP)
    simulate.add_argument(
        "--policies",
        nargs="+",
        metavar="POLICY",
        help=f"policies to compare (space or comma separated; of: {', '.join(POLICY_NAMES)}); "
        "default: every registered policy except random",
    )
    _add_shape_options(simulate, default_ranks=8)
    simulate.add_argument(
        "--interval", type=_positive, default=50, help="steps between re-plans (default 50)"
    )
    simulate.add_argument(
        "--episode", type=_positive, help="FlashLB: steps per heat episode (default 1: per step)"
    )
    synthetic = simulate.add_argument_group("synthetic series (single-step traces only)")
    synthetic.add_argument(
        "--steps", type=_positive, default=300, help="steps to generate (default 300)"
    )
    synthetic.add_argument(
        "--tokens-per-step", type=_positive, default=256, help="tokens per step (default 256)"
    )
    synthetic.add_argument(
        "--top-k", type=_positive, help="experts per token (default: the trace's top_k, else 8)"
    )
    synthetic.add_argument(
        "--drift", type=float, default=0.05, help="per-step std of log popularity (default 0.05)"
    )
    simulate.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    simulate.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="write PAR over time and rank-load heatmaps (needs matplotlib)",
    )
    simulate.add_argument(
        "--layer", type=_non_negative, default=0, help="layer of the heatmaps (default 0)"
    )


def _add_plan(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser
) -> None:
    """The ``plan`` subcommand: a static plan written as an expert_map_path JSON."""
    plan = commands.add_parser(
        "plan",
        parents=[verbose],
        help="write a static plan for a whole trace as a vllm-ascend expert_map_path JSON",
        description="Plans once from the whole trace (load: its sum; history: its per-step heat, "
        "FlashLB episodes of --episode steps; current: the default placement) and writes the "
        "expert_map_path JSON.",
    )
    plan.add_argument("--trace", type=Path, help=_TRACE_HELP)
    plan.add_argument(
        "--policy",
        default="swift_balancer",
        help=f"one of {', '.join(POLICY_NAMES)} (default swift_balancer, vllm-ascend's default)",
    )
    _add_shape_options(plan, default_ranks=None)
    plan.add_argument(
        "--episode", type=_positive, help="FlashLB: steps per heat episode (default 1: per step)"
    )
    plan.add_argument(
        "--deepseek-parity",
        action="store_true",
        help="with --policy default_eplb: DeepSeek EPLB's own plan, made without the placement "
        "in force: slots are reshuffled and a rank may hold two replicas of one expert "
        "(vllm-ascend then routes to one of them only); default: the slot-stable plan",
    )
    plan.add_argument("-o", "--output", type=Path, required=True, help="expert_map.json to write")


def _add_inspect(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser
) -> None:
    """The ``inspect`` subcommand: the balance of an existing expert map on a trace."""
    inspect = commands.add_parser(
        "inspect",
        parents=[verbose],
        help="balance of an existing expert_map_path JSON on a trace",
        description="Evaluates the map on the trace: per-step PAR, PAR of the summed load, gap "
        "to the lower bound per layer, next to the default placement.",
    )
    inspect.add_argument("expert_map", type=Path, help="expert_map_path JSON (vllm-ascend format)")
    inspect.add_argument("--trace", type=Path, help=_TRACE_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "simulate":
            _simulate(args)
        elif args.command == "plan":
            _plan(args)
        else:
            _inspect(args)
    except _UsageError as error:
        parser.error(str(error))
    except (ValueError, ImportError, OSError) as error:
        print(f"eplb-native {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def _trace_label(trace: Trace) -> str:
    path = Path(trace.source)
    return f"{SHIPPED_TRACE} (shipped)" if path == shipped_trace_path() else str(path)


def _num_redundant(args: argparse.Namespace, num_experts: int, duplicates: bool = False) -> int:
    """R from --slots or --redundant (default: one redundant slot per rank). Unless
    ``duplicates``, refuses more slots per rank than experts (a rank would hold an expert twice)."""
    if args.slots is not None:
        num_physical = int(args.ranks) * int(args.slots)
        if num_physical < num_experts:
            msg = f"--slots: {args.ranks} ranks x {args.slots} slots = {num_physical} < {num_experts} experts"
            raise _UsageError(msg)
        num_redundant = num_physical - num_experts
    else:
        num_redundant = int(args.ranks if args.redundant is None else args.redundant)
    num_slots = -(-(num_experts + num_redundant) // int(args.ranks))
    if num_slots > num_experts and not duplicates:
        option = "--slots" if args.slots is not None else "--redundant"
        msg = (
            f"{option}: {num_slots} slots per rank for {num_experts} experts: some rank would hold "
            "two replicas of one expert, which the slot-stable policies never plan; use fewer "
            "slots, or 'plan --policy default_eplb --deepseek-parity' for DeepSeek EPLB's plan"
        )
        raise _UsageError(msg)
    return num_redundant


def _chosen_policies(requested: Sequence[str] | None) -> list[str]:
    if not requested:
        return list(DEFAULT_POLICIES)
    names = [name for item in requested for name in item.split(",") if name]
    for name in names:
        if name not in POLICY_NAMES:
            msg = f"--policies: unknown policy {name!r}; available: {', '.join(POLICY_NAMES)}"
            raise _UsageError(msg)
    return list(dict.fromkeys(names))


def _require_folder(path: Path | None, option: str) -> None:
    """A usage error unless the folder ``path`` is to be written in exists (checked before the
    work, not after it)."""
    if path is not None and not path.parent.is_dir():
        msg = f"{option}: folder {str(path.parent)!r} does not exist"
        raise _UsageError(msg)


def _simulate(args: argparse.Namespace) -> None:
    policies = _chosen_policies(args.policies)
    _require_folder(args.json, "--json")
    _require_folder(args.plot, "--plot")
    probe = load_trace(shipped_trace_path() if args.trace is None else args.trace)
    trace_top_k = probe.metadata.get("top_k", "")
    top_k = args.top_k or (int(trace_top_k) if trace_top_k.isdigit() else 8)
    series = SyntheticSeries(
        num_steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        top_k=top_k,
        drift=args.drift,
        seed=args.seed,
    )
    if args.plot is not None and args.layer >= probe.num_layers:
        msg = f"--layer: the trace has layers 0..{probe.num_layers - 1}, got {args.layer}"
        raise _UsageError(msg)
    settings = ReplaySettings(
        num_ranks=args.ranks,
        num_redundant_experts=_num_redundant(args, probe.num_experts),
        interval=args.interval,
        num_threads=args.threads,
        seed=args.seed,
    )
    trace = as_time_series(probe, series)
    _print_trace(trace)
    num_windows = len(range(settings.interval, trace.num_steps, settings.interval))
    options = policy_options(policies, args.episode)
    with _progress_bar((1 + len(policies)) * num_windows) as bar:

        def advance(label: str, _window: int) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        result = replay(trace.load, policies, settings, options=options, on_window=advance)
    episode = options["flashlb"].episode_steps if options else None
    _print_replay(trace, result, episode)
    _print_table(result)
    if args.json is not None:
        payload = _json_payload(trace, result, episode)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        from eplb_native.sim.plots import plot_replay

        title = (
            f"{_trace_label(trace)}{' (synthetic series)' if trace.synthetic else ''}: per-step PAR"
        )
        plot_replay(result, args.plot, layer=args.layer, title=title)
        print(f"wrote {args.plot}")


def _progress_bar(total: int) -> Any:
    """A tqdm bar of ``total`` replay windows on stderr, shown once the run has taken a second
    and only when stderr is a terminal (tqdm's ``disable=None``)."""
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    return tqdm(
        total=total, desc="replay", unit="window", leave=False, delay=1.0, disable=None,
        file=sys.stderr,
    )  # fmt: skip


def _json_payload(trace: Trace, result: ReplayResult, episode: int | None) -> dict[str, Any]:
    """What ``simulate --json`` writes: the package version, the trace, the replay settings and
    one summary row per policy (``PolicyReplay.summary``) and its scores under each replica
    routing rule (``PolicyReplay.routing_summary``)."""
    settings = result.settings
    return {
        "version": __version__,
        "trace": trace.source,
        "trace_name": _trace_label(trace),
        "model": trace.metadata.get("model"),
        "steps": trace.num_steps,
        "layers": trace.num_layers,
        "experts": trace.num_experts,
        "synthetic": trace.synthetic,
        "replay": {
            "ranks": settings.num_ranks,
            "slots": result.num_slots,
            "redundant": settings.num_redundant_experts,
            "interval": settings.interval,
            "episode": episode,
            "first_scored_step": result.first_step,
            "threads": settings.num_threads,
            "seed": settings.seed,
        },
        "policies": result.summary(),
        "routing": result.routing_summary(),
    }


def _print_trace(trace: Trace) -> None:
    """What is replayed: the trace, and how its synthetic series was made if it is one."""
    model = trace.metadata.get("model")
    print(
        f"trace: {_trace_label(trace)}{f', {model}' if model else ''}: "
        f"{_steps(trace.num_steps)} x {trace.num_layers} layers x {trace.num_experts} experts"
    )
    if trace.synthetic is not None:
        syn = trace.synthetic
        print(
            f"SYNTHETIC series built from the trace's single aggregate step: {syn['num_steps']} steps, "
            f"each {syn['tokens_per_step']} tokens x top-{syn['top_k']} selections per layer drawn "
            f"multinomially from the aggregate shares, popularity drifting as a mean-reverting "
            f"log-normal random walk (drift {syn['drift']}, reversion {syn['reversion']}, seed {syn['seed']})"
        )


def _print_replay(trace: Trace, result: ReplayResult, episode: int | None) -> None:
    """How it was replayed: ranks, slots, re-plan interval, scored steps."""
    settings = result.settings
    print(
        f"replay: {settings.num_ranks} ranks x {result.num_slots} slots "
        f"({settings.num_redundant_experts} redundant); re-plan every {settings.interval} steps "
        f"from the last {settings.interval}"
        f"{'' if episode is None else f' (FlashLB episodes of {episode})'}; scored out of sample "
        f"on steps {result.first_step}..{trace.num_steps - 1}"
    )


_COLUMNS = (
    ("policy", "{:<18}", None),
    ("par_mean", "{:>9.4f}", "par_mean"),
    ("par_p99", "{:>9.4f}", "par_p99"),
    ("par_aggr", "{:>9.4f}", "par_aggregate"),
    ("gap_lb", "{:>8.4f}", "gap_to_lower_bound"),
    ("copies/reb", "{:>11.1f}", "weight_copies_per_rebalance"),
    ("layers_upd", "{:>11d}", "layers_updated"),
    ("plan_ms", "{:>9.2f}", "plan_ms"),
)


def _print_table(result: ReplayResult) -> None:
    widths = [len(fmt.format("x" if key is None else 0)) for _, fmt, key in _COLUMNS]
    print(
        " ".join(
            title.ljust(w) if key is None else title.rjust(w)
            for (title, _, key), w in zip(_COLUMNS, widths, strict=True)
        )
    )
    routed = result.routing_summary()
    for name, row in result.summary().items():
        label = f"{name} (no rebal.)" if name == STATIC else name
        cells = [fmt.format(label if key is None else row[key]) for _, fmt, key in _COLUMNS]
        print(" ".join(cells))
        for rule, scores in routed[name].items():
            cells = [
                fmt.format(f"  {rule} routing") if key is None
                else fmt.format(scores[key]) if key in scores else "-".rjust(width)
                for (_, fmt, key), width in zip(_COLUMNS, widths, strict=True)
            ]  # fmt: skip
            print(" ".join(cells))


def _plan(args: argparse.Namespace) -> None:
    if args.policy not in POLICY_NAMES:
        msg = f"--policy: unknown policy {args.policy!r}; available: {', '.join(POLICY_NAMES)}"
        raise _UsageError(msg)
    if args.deepseek_parity and args.policy != "default_eplb":
        msg = f"--deepseek-parity: DeepSeek EPLB's plan is --policy default_eplb's, not {args.policy}'s"
        raise _UsageError(msg)
    _require_folder(args.output, "-o")
    from eplb_native.policies import rebalance_experts

    trace = load_trace(shipped_trace_path() if args.trace is None else args.trace)
    num_redundant = _num_redundant(args, trace.num_experts, duplicates=args.deepseek_parity)
    initial = default_placement(trace.num_layers, trace.num_experts, args.ranks, num_redundant)
    plan = rebalance_experts(
        trace.load.sum(axis=0),
        num_replicas=initial.num_physical,
        num_groups=1,
        num_nodes=1,
        num_ranks=args.ranks,
        policy=args.policy,
        current=None if args.deepseek_parity else initial.phy2log,
        history=trace.load,
        options=policy_options([args.policy], args.episode).get(args.policy),
        num_threads=args.threads,
        seed=args.seed,
    )
    assert isinstance(plan, Plan)  # planned from a numpy load: numpy arrays, not tensors
    save_expert_map(plan, args.output, args.ranks, allow_duplicate_on_rank=args.deepseek_parity)
    before = evaluate(initial, trace.load, args.ranks)
    after = evaluate(plan, trace.load, args.ranks)
    print(
        f"trace: {_trace_label(trace)}: {_steps(trace.num_steps)} x {trace.num_layers} layers x "
        f"{trace.num_experts} experts; {args.ranks} ranks x {initial.slots_per_rank(args.ranks)} slots "
        f"({num_redundant} redundant); policy {args.policy}"
        f"{' (DeepSeek parity)' if args.deepseek_parity else ''} (in sample: planned and scored "
        "on the whole trace)"
    )
    print(
        f"PAR before (default placement): {before.par:.4f}  (summed load: {before.par_aggregate:.4f})"
    )
    print(
        f"PAR after  ({args.policy}): {after.par:.4f}  (summed load: {after.par_aggregate:.4f}, "
        f"gap to lower bound {float(after.gap.mean()):.4f})"
    )
    print(f"wrote {args.output}")


def _inspect(args: argparse.Namespace) -> None:
    plan, num_ranks = load_expert_map_with_ranks(args.expert_map, allow_duplicate_on_rank=True)
    trace = load_trace(shipped_trace_path() if args.trace is None else args.trace)
    if (trace.num_layers, trace.num_experts) != (plan.num_layers, plan.num_experts):
        msg = (
            f"expert_map {args.expert_map}: places {plan.num_experts} experts in {plan.num_layers} layers, "
            f"but trace {trace.source} has {trace.num_experts} experts in {trace.num_layers} layers"
        )
        raise ValueError(msg)
    num_redundant = plan.num_physical - plan.num_experts
    print(
        f"map: {args.expert_map}: {plan.num_layers} layers, {num_ranks} ranks x "
        f"{plan.slots_per_rank(num_ranks)} slots ({num_redundant} redundant)"
    )
    print(f"trace: {_trace_label(trace)}: {_steps(trace.num_steps)}")
    reference = default_placement(plan.num_layers, plan.num_experts, num_ranks, num_redundant)
    rows: list[tuple[str, Plan]] = [("this map", plan), ("default placement", reference)]
    print(
        f"{'':<18} {'par_step':>9} {'par_aggr':>9} {'gap_mean':>9} {'gap_max':>9} {'worst layer':>12}"
    )
    for label, candidate in rows:
        stats = evaluate(candidate, trace.load, num_ranks)
        worst = int(np.argmax(stats.gap))
        print(
            f"{label:<18} {stats.par:>9.4f} {stats.par_aggregate:>9.4f} {float(stats.gap.mean()):>9.4f} "
            f"{float(stats.gap.max()):>9.4f} {worst:>12d}"
        )
    stats = evaluate(plan, trace.load, num_ranks)
    quartiles = np.percentile(stats.gap, [0, 25, 50, 75, 100])
    print(
        "gap to lower bound per layer (this map): "
        + ", ".join(
            f"{name} {value:.4f}"
            for name, value in zip(("min", "p25", "median", "p75", "max"), quartiles, strict=True)
        )
    )


__all__ = ["DEFAULT_POLICIES", "build_parser", "main"]
