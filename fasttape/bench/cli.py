"""``fasttape bench``: graph families side by side with every installed peer.

Builds each family at each size with fasttape, times it with the hand-written baseline kernel
and with every installed peer that agrees with fasttape's value and gradient, prints a table
that fits 100 columns on stdout (progress on stderr), and optionally writes every figure as
JSON or Markdown and a PNG plot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from fasttape.atomic import atomic_write_text
from fasttape.bench.cases import FAMILIES, TENSOR_FAMILIES
from fasttape.bench.machine import machine_info
from fasttape.bench.output import (
    SCHEMA,
    fit,
    render_quiet,
    render_table,
    render_targets,
    render_west,
    verdicts,
    write_json,
    write_plot,
)
from fasttape.bench.peers import PEERS
from fasttape.bench.runner import Settings, measure_case, warm_up

__all__ = ["main", "build_parser", "compiling", "progress", "render", "run"]

FULL_NODES = [1_000, 10_000, 100_000, 1_000_000]
QUICK_NODES = [1_000, 10_000]
MAX_NODES = 100_000_000

#: The parser's description (plain text: argparse prints it as is).
DESCRIPTION = """\
Time ten graph families with fasttape, a hand-written baseline kernel and every installed
peer (CasADi, JAX, PyTorch eager and torch.compile, autograd, ddx, plain Python) that agrees
with fasttape's value and gradient; the -vec families run fasttape's tensor tapes, beside the
scalar tape of the same function. The table goes to stdout, progress to stderr. The first
run compiles fasttape's kernels with Numba (about a minute on 2 cores); they are cached for
later runs."""

EPILOG = """\
examples:
  fasttape bench --quick                       small sizes, about 10 s once kernels are cached
  fasttape bench --families rosenbrock --nodes 1e5 --peers casadi-sx
  fasttape bench --quick --markdown bench.md --json bench.json --check

Peers that are not installed are listed once: pip install "fasttape[peers]" installs them.
--check exits with status 1 when a target is missed (MISSED, NOT met, BEHIND)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _node_list(text: str) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip().replace("_", "")
        try:
            v = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {item!r}") from None
        if v != int(v) or not 1 <= v <= MAX_NODES:
            raise argparse.ArgumentTypeError(
                f"sizes must be whole numbers from 1 to {MAX_NODES:.0e}, got {item}"
            )
        out.append(int(v))
    return out


def _choice_list(choices: tuple[str, ...], what: str) -> Any:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        for s in items:
            if s not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {s!r} (choose from {', '.join(choices)})"
                )
        return items

    return parse


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fasttape bench``."""
    p = _Parser(prog="fasttape bench", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=_choice_list(FAMILIES, "family"), default=None,
                   metavar="LIST",
                   help=f"comma-separated, from {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--nodes", type=_node_list, default=None, metavar="SIZES",
                   help="comma-separated sizes in instructions, e.g. 1e3,1e5 "
                        "(default 1e3,1e4,1e5,1e6; --quick: 1e3,1e4)")
    p.add_argument("--repeat", type=_positive(int), default=None, metavar="N",
                   help="timed samples per figure, median reported (default 7, --quick 5)")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                   help="Numba threads (batch evaluation); the single-point sweeps are serial")
    p.add_argument("--native", action="store_true",
                   help="add a fasttape-native row (tape.native(): LLVM machine code) with its "
                        "compile time, up to 200,000 instructions")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, peer caps and a shorter autograd-west run: about 10 s "
                        "once the kernels are cached")
    p.add_argument("--peers", type=_choice_list((*(q.name for q in PEERS), "none"), "peer"),
                   default=None, metavar="LIST",
                   help=f"comma-separated, from {', '.join(q.name for q in PEERS)}, or none "
                        "(default: all that are installed)")
    p.add_argument("--peer-timeout", type=_positive(float), default=None, metavar="S",
                   help="seconds per peer and case (default 60, --quick 15)")
    p.add_argument("--west-calls", type=_positive(int), default=10_000, metavar="N",
                   help="evaluations of the autograd-west workload (default 10000; --quick "
                        "runs 1000 and scales up)")
    p.add_argument("--no-west", action="store_true",
                   help="skip the autograd-west 10k x 10k workload")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write all figures and the machine description as JSON")
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                   help="write the whole report as Markdown: every row and every column "
                        "(build, compile and first-call times, peak memory, differences)")
    p.add_argument("--plot", type=Path, default=None, metavar="PATH",
                   help='write a PNG plot (needs matplotlib: pip install "fasttape[plot]")')
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 when a target is missed")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress messages on stderr")
    return p


def progress(tty: bool) -> Any:
    """Progress on stderr: one self-overwriting line on a terminal, plain lines otherwise."""
    start = time.perf_counter()

    def say(msg: str) -> None:
        line = f"[bench {time.perf_counter() - start:6.1f} s] {msg}"
        if tty:  # a line that wrapped could not be overwritten: cut it to the terminal
            width = shutil.get_terminal_size().columns - 1
            line = line if len(line) <= width else line[: max(0, width - 3)] + "..."
            sys.stderr.write(f"\r\x1b[K{line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return say


def run(ns: argparse.Namespace, say: Any = None) -> dict[str, Any]:
    """Run the benchmark described by parsed arguments; the JSON-ready result."""
    say = say or (lambda _m: None)
    families = ns.families or list(FAMILIES)
    nodes = ns.nodes or (QUICK_NODES if ns.quick else FULL_NODES)
    peers = None if ns.peers is None else [p for p in ns.peers if p != "none"]
    settings = Settings(
        families=families, nodes=nodes,
        repeat=ns.repeat or (5 if ns.quick else 7), quick=ns.quick, peers=peers,
        peer_timeout=ns.peer_timeout or (15.0 if ns.quick else 60.0),
        min_sample=0.005 if ns.quick else 0.02, native=ns.native,
    )
    if ns.threads is not None:
        import numba

        numba.set_num_threads(min(ns.threads, numba.config.NUMBA_NUM_THREADS))
    t0 = time.perf_counter()
    tensors = any(f in TENSOR_FAMILIES for f in families)
    with compiling(say, "the single-point sweeps" + (" and tensor tapes" if tensors else "")):
        warm_s = warm_up(tensors)
    rows: list[dict[str, Any]] = []
    total = len(families) * len(nodes)
    for i, (family, n) in enumerate(((f, n) for f in families for n in nodes), 1):
        rows += measure_case(family, n, settings, lambda m, i=i: say(f"[{i}/{total}] {m}"))
    west = None
    if not ns.no_west and "autograd-west" in families:
        from fasttape.bench.west import west_workload

        say("autograd-west 10k x 10k workload")
        west = west_workload(n_calls=ns.west_calls,
                             measured_calls=min(1_000, ns.west_calls) if ns.quick else None,
                             threads=ns.threads, repeat=3,
                             compiling=lambda what: compiling(say, what))
    peers_info = {}
    for p in PEERS:
        if peers is None or p.name in peers:
            missing = p.available()
        else:  # not asked for: found or not, without paying for its import
            missing = None if p.installed() else "not installed"
        peers_info[p.name] = {"installed": missing is None, "version": p.version()
                              if missing is None else None, "status": missing or "installed"}
    return {
        "schema": SCHEMA,
        "command": "fasttape bench " + " ".join(getattr(ns, "argv", [])),
        "machine": machine_info(),
        "settings": {
            "families": families, "nodes": nodes, "repeat": settings.repeat, "peers": peers,
            "quick": ns.quick, "peer_timeout_s": settings.peer_timeout,
            "threads": ns.threads, "min_sample_s": settings.min_sample,
            "timing": "median of samples, round-robin",
        },
        "kernel_load_s": warm_s,
        "peers": peers_info,
        "rows": rows,
        "west": west,
        "total_s": time.perf_counter() - t0,
    }


@contextmanager
def compiling(say: Callable[[str], None], what: str) -> Iterator[None]:
    """Announce a step that may compile Numba kernels, then say how long it took.

    On a first run (empty cache) such a step takes seconds to minutes; afterwards the kernels
    load from the cache in a fraction of a second.
    """
    say(f"compiling kernels for {what} (first run only, cached afterwards)...")
    t0 = time.perf_counter()
    yield
    say(f"kernels for {what} ready in {time.perf_counter() - t0:.1f} s")


def render(result: dict[str, Any], markdown: bool = False) -> str:
    """The whole report: header, table, west workload, targets, peers.

    The text form fits :data:`~fasttape.bench.output.WIDTH` columns and leaves out the rows
    of peers that are not installed or skipped (one line each instead); the Markdown form has
    every row and every column.
    """
    m = result["machine"]
    b = "- " if markdown else ""
    wanted = result["settings"]["peers"]
    installed = [f"{k} {v['version'] or ''}".strip() for k, v in result["peers"].items()
                 if v["installed"] and (wanted is None or k in wanted)]
    head = [
        f"{b}machine: {m['cpu']}, {m['cpus_usable']} usable cores, Python {m['python']}, "
        f"NumPy {m['numpy']}, Numba {m['numba']}, fasttape {m['fasttape']}",
        f"{b}peers: {', '.join(installed) or 'none'}",
        f"{b}timing: median of {result['settings']['repeat']} samples, in ns per fasttape "
        "instruction for every system; 'vs ft' = value+gradient time / fasttape's, sampled "
        "in turn (same load); code: arrays = tape built as arrays, traced = ft.trace",
    ]
    if markdown:
        head.append(f"- command: `{result['command'].strip()}`")
    parts = ["\n".join(head), "", render_table(result["rows"], markdown), ""]
    quiet = "" if markdown else render_quiet(result)
    if quiet:
        parts += [quiet, ""]
    west = render_west(result["west"], markdown)
    if west:
        parts += [west, ""]
    parts += [render_targets(result["rows"], markdown), "",
              f"total {result['total_s']:.1f} s"]
    text = "\n".join(parts)
    return text if markdown else fit(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fasttape bench``; returns the exit status.

    0 on success, 2 on bad arguments, 1 when the baseline kernel disagrees with fasttape
    (an engine bug), when ``--plot`` cannot be written, or, with ``--check``, when a target
    is missed.
    """
    argv = list(sys.argv[2:] if argv is None else argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a bad argument: report the status, don't exit
        return int(exc.code or 0)
    ns.argv = argv
    say = progress(sys.stderr.isatty()) if ns.progress else None
    result = run(ns, say)
    if ns.progress and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    print(render(result))
    status = 0
    if ns.json is not None:
        write_json(ns.json, result)
    if ns.markdown is not None:
        atomic_write_text(ns.markdown, render(result, markdown=True) + "\n")
    if ns.plot is not None:
        try:
            title = f"fasttape bench ({result['machine']['cpu']})"
            write_plot(ns.plot, result["rows"], title=title)
        except ImportError:
            print('fasttape bench: --plot needs matplotlib (pip install "fasttape[plot]")',
                  file=sys.stderr)
            status = 1
    bad = [r for r in result["rows"] if r["system"] == "baseline"
           and r["status"].startswith("DISAGREES")]
    if bad:
        status = 1
    if ns.check:
        missed = [what for what, met in verdicts(result) if not met]
        if missed:
            print(f"fasttape bench --check: {len(missed)} target(s) missed: "
                  + "; ".join(missed), file=sys.stderr)
            status = 1
    return status
