"""Output of ``fasttape bench``: the text table, Markdown, JSON and the plot."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

from fasttape.atomic import atomic_write, atomic_write_text

__all__ = ["COLUMNS", "SHORT_COLUMNS", "WIDTH", "SCHEMA", "render_table", "render_quiet",
           "render_west", "render_targets", "verdicts", "fit", "write_json", "write_plot"]

#: JSON schema name and version (bump when keys change meaning).
SCHEMA = "fasttape-bench/1"

#: (row key, header, format) of every column: the Markdown report (``--markdown PATH``).
COLUMNS = (
    ("family", "family", "s"),
    ("n_nodes", "nodes", "n"),
    ("system", "system", "s"),
    ("code", "code", "s"),
    ("build_s", "build s", "t"),
    ("compile_s", "compile s", "t"),
    ("first_call_s", "1st call s", "t"),
    ("value_ns", "value ns/node", "f"),
    ("vg_ns", "v+g ns/node", "f"),
    ("grad_over_value", "grad/value", "r"),
    ("vs_fasttape", "v+g vs fasttape", "r"),
    ("peak_bytes_per_node", "peak B/node", "b"),
    ("grad_rel_diff", "grad rel diff", "e"),
    ("status", "status", "s"),
)

#: The columns of the terminal table, which fits :data:`WIDTH` characters (the status is cut
#: to what is left; the JSON and Markdown outputs keep it whole), with shorter headers.
_SHORT_HEADS = {"family": "family", "n_nodes": "nodes", "system": "system", "code": "code",
                "value_ns": "value ns", "vg_ns": "v+g ns", "vs_fasttape": "vs ft",
                "status": "status"}
SHORT_COLUMNS = tuple((k, _SHORT_HEADS[k], kind) for k, _, kind in COLUMNS if k in _SHORT_HEADS)

#: Width of the terminal output in characters.
WIDTH = 100

#: Row statuses the terminal table leaves out, summarised in a line below it instead.
_QUIET = ("not installed", "skipped", "n/a (array code only")


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "s":
        return str(value)
    if kind == "n":
        return f"{int(value):,}"
    v = float(value)
    if math.isinf(v):
        return "inf"
    if kind == "t":
        return f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}"
    if kind == "f":
        return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
    if kind == "r":
        return f"{v:,.2f}x" if v < 100 else f"{v:,.0f}x"
    if kind == "b":
        return f"{v:,.0f}"
    return f"{v:.1e}"  # "e"


def render_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The rows as an aligned text table (at most :data:`WIDTH` wide), or a Markdown table.

    The text table has the :data:`SHORT_COLUMNS` and leaves out the rows of peers that are not
    installed or were skipped (see :func:`render_quiet`); the Markdown table has every row and
    every column.
    """
    columns = COLUMNS if markdown else SHORT_COLUMNS
    if not markdown:
        rows = [r for r in rows if not str(r["status"]).startswith(_QUIET)]
    heads = [h for _, h, _ in columns]
    cells = [[_fmt(r.get(k), kind) for k, _, kind in columns] for r in rows]
    right = [kind not in ("s",) for _, _, kind in columns]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |",
                 "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(heads)]
    # the status comes last and takes what the other columns leave of the line
    widths[-1] = max(len(heads[-1]), WIDTH - sum(w + 2 for w in widths[:-1]))
    for c in cells:
        if len(c[-1]) > widths[-1]:
            c[-1] = c[-1][: widths[-1] - 3] + "..."

    def line(items: list[str]) -> str:
        return "  ".join(s.rjust(w) if r else s.ljust(w)
                         for s, w, r in zip(items, widths, right, strict=True)).rstrip()

    out = [line(heads), line(["-" * w for w in widths[:-1]] + ["-" * len(heads[-1])])]
    prev = None
    for r, c in zip(rows, cells, strict=True):
        group = (r["family"], r["n_nodes"])
        if prev is not None and group != prev:
            out.append("")
        prev = group
        out.append(line(c))
    return "\n".join(out)


#: The extra that installs each peer (``pip install "fasttape[<extra>]"``).
PEER_EXTRAS = {"torch": "peers-torch", "torch-compile": "peers-torch"}


def render_quiet(result: dict[str, Any]) -> str:
    """The lines that replace the rows the terminal table leaves out.

    Peers that are not installed are named once, with the extra that installs them; peers
    skipped at some sizes (size caps, time limits, an earlier failure) are counted.
    """
    wanted = result["settings"]["peers"]
    missing = [k for k, v in result["peers"].items()
               if not v["installed"] and (wanted is None or k in wanted)]
    lines = []
    if missing:
        extras: dict[str, list[str]] = {}
        for k in missing:
            extras.setdefault(PEER_EXTRAS.get(k, "peers"), []).append(k)
        lines += [f'not installed (pip install "fasttape[{extra}]"): {", ".join(names)}'
                  for extra, names in extras.items()]
    skipped: dict[str, int] = {}
    for r in result["rows"]:
        if str(r["status"]).startswith("skipped"):
            skipped[r["system"]] = skipped.get(r["system"], 0) + 1
    if skipped:
        counts = ", ".join(f"{k} {n}" for k, n in skipped.items())
        lines.append(f"skipped (size cap or time limit; see --markdown/--json): {counts} cases")
    scalar_only = {r["system"]: None for r in result["rows"]
                   if str(r["status"]).startswith("n/a (array code only")}
    if scalar_only:
        lines.append(f"not run on the -vec families (scalar code only, the same as on the "
                     f"scalar family): {', '.join(scalar_only)}")
    return "\n".join(lines)


def render_west(west: dict[str, Any] | None, markdown: bool = False) -> str:
    """The autograd-west workload section."""
    if west is None:
        return ""
    from fasttape.bench.west import PUBLISHED, TARGET_S

    b = "- " if markdown else "  "
    extra = (f" (extrapolated from {west['measured_calls']:,} calls)"
             if west["extrapolated"] else "")
    lines = [
        f"autograd-west workload: {west['n_ops']:,} ops ({west['n_nodes']:,} instructions), "
        f"{west['n_calls']:,} value+gradient evaluations at distinct points{extra}",
        f"{b}trace {west['trace_s']:.3f} s, compile {west['compile_s']:.3f} s, "
        f"first call {west['first_call_s']:.4f} s",
        f"{b}sequential single calls: {west['sequential_s']:.2f} s evaluating, "
        f"{west['sequential_total_s']:.2f} s total with trace and compile",
    ]
    if west["batch"]:
        ok = "met" if west["batch_total_s"] <= TARGET_S else "NOT met"
        lines.append(
            f"{b}one batch of {west['n_calls']:,} points (median of {west['repeat']}): "
            f"{west['batch_s']:.2f} s evaluating, "
            f"{west['batch_total_s']:.2f} s total with trace and compile (target "
            f"<= {TARGET_S} s: {ok}); batch == sequential bitwise: "
            f"{'yes' if west['batch_matches_sequential'] else 'NO'}"
        )
        if west.get("batch_flush_s") is not None:
            ok = "met" if west["batch_flush_total_s"] <= TARGET_S else "NOT met"
            lines.append(
                f"{b}the same batch with subnormals flushed (flush_subnormals=True, not IEEE): "
                f"{west['batch_flush_s']:.2f} s evaluating, {west['batch_flush_total_s']:.2f} s "
                f"total ({ok}); largest difference from the IEEE batch "
                f"{west['batch_flush_max_abs_diff']:.1e}"
            )
    else:
        lines.append(f"{b}batch: not available")
    pub = ", ".join(f"{k} {v:g} s" for k, v in PUBLISHED.items())
    lines.append(f"{b}published totals (M1 laptop, other machine): {pub}")
    return "\n".join(lines)


#: fasttape's value+gradient time may be at most this multiple of the baseline kernel's.
BASELINE_TARGET = 1.25

#: One line under the targets: what a missed verdict means.
VERDICT_LEGEND = ("MISSED, NOT met, BEHIND: slower than the target named beside it "
                  "(--check exits 1 on any)")


def _largest(rows: list[dict[str, Any]], fam: str, system: str) -> tuple[int, float] | None:
    """(nodes, v+g vs fasttape) of ``system`` at the largest size it ran ok, or None."""
    pts = [(r["n_nodes"], r["vs_fasttape"]) for r in rows
           if r["family"] == fam and r["system"] == system and r.get("vs_fasttape")
           and r["status"] == "ok"]
    return max(pts) if pts else None


def verdicts(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """Every target the result can judge: (what, met).

    fasttape within :data:`BASELINE_TARGET` of the baseline and ahead of CasADi SX per family
    (at the largest size both ran), and the autograd-west batch within its time target.
    """
    from fasttape.bench.west import TARGET_S

    rows = result["rows"]
    out = []
    for fam in dict.fromkeys(r["family"] for r in rows):
        base = _largest(rows, fam, "baseline")
        if base:
            out.append((f"{fam}: fasttape/baseline <= {BASELINE_TARGET}x",
                        1.0 / base[1] <= BASELINE_TARGET))
        cas = _largest(rows, fam, "casadi-sx")
        if cas:
            out.append((f"{fam}: fasttape ahead of casadi-sx", cas[1] > 1))
    west = result.get("west")
    if west and west["batch"]:
        out.append((f"autograd-west batch <= {TARGET_S} s", west["batch_total_s"] <= TARGET_S))
    return out


def render_targets(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """Per family: fasttape vs the baseline (target <= 1.25x) and vs CasADi SX (target > 1).

    Each comparison is made at the largest size where both systems have a value+gradient
    figure.
    """
    b = "- " if markdown else "  "
    lines = ["targets (value+gradient time ratios, at the largest size both systems ran):"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        parts = []
        if fam.endswith("-vec"):  # tensor tapes: figures, no verdict (see bench_tensor.py)
            for system in ("fasttape-scalar", "jax", "torch", "torch-compile"):
                got = _largest(rows, fam, system)
                if got:
                    parts.append(f"{system}/fasttape {got[1]:.2f}x at {got[0]:,}")
            lines.append(f"{b}{fam}: " + ("; ".join(parts) or "no peer ran"))
            continue
        base = _largest(rows, fam, "baseline")
        if base:
            ratio = 1.0 / base[1]
            verdict = "ok" if ratio <= BASELINE_TARGET else "MISSED"
            parts.append(f"fasttape/baseline {ratio:.2f}x at {base[0]:,} "
                         f"({verdict}, <= {BASELINE_TARGET}x)")
        cas = _largest(rows, fam, "casadi-sx")
        if cas:
            verdict = "fasttape ahead" if cas[1] > 1 else "fasttape BEHIND"
            parts.append(f"casadi-sx/fasttape {cas[1]:.2f}x at {cas[0]:,} ({verdict})")
        else:
            status = [r["status"] for r in rows if r["family"] == fam
                      and r["system"] == "casadi-sx"]
            last = status[-1] if status else "not run"
            parts.append(f"casadi-sx: {last.split(' (')[0] if 'installed' in last else last}")
        lines.append(f"{b}{fam}: " + "; ".join(parts))
    lines.append(f"{b}{VERDICT_LEGEND}")
    return "\n".join(lines)


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` with every line longer than ``width`` wrapped (continuations indented)."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out += textwrap.wrap(line, width, subsequent_indent=indent + "    ",
                             break_on_hyphens=False)
    return "\n".join(out)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write the whole result (rows, west, machine, settings) as JSON."""

    def clean(v: Any) -> Any:  # JSON has no inf/NaN
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    atomic_write_text(path, json.dumps(clean(result), indent=2) + "\n")


def write_plot(path: Path, rows: list[dict[str, Any]], title: str = "") -> None:
    """PNG: value+gradient ns/node against size, one line per system, one panel per family.

    Needs matplotlib (``pip install fasttape[plot]``); raises ImportError otherwise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(dict.fromkeys(r["family"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    ncol = min(4, len(fams))
    nrow = math.ceil(len(fams) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, fam in zip(axes.flat, fams, strict=False):
        for k, system in enumerate(systems):
            pts = sorted((r["n_nodes"], r["vg_ns"]) for r in rows
                         if r["family"] == fam and r["system"] == system
                         and r.get("vg_ns") and r["status"] == "ok")
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=system, color=colors[k % len(colors)],
                        linewidth=2.2 if system == "fasttape" else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(fam)
        ax.set_xlabel("instructions")
        ax.set_ylabel("value+gradient ns/node")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=110, format=Path(path).suffix[1:] or "png"))
    plt.close(fig)
