"""``fasttape bench``: cases, baseline, agreement check, peers, output and the CLI."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench import baseline as bl
from fasttape.bench import families as fam
from fasttape.bench.cases import (
    FAMILIES,
    SCALAR_FAMILIES,
    TENSOR_FAMILIES,
    VECTORIZED,
    build_case,
    replay_fn,
    tensor_case,
)
from fasttape.bench.cli import main as run_bench_cli
from fasttape.bench.families import random_local, random_uniform
from fasttape.bench.peers import PEERS, Built, Peer
from fasttape.bench.peers.base import OpNamespace
from fasttape.bench.prune import prune
from fasttape.bench.pyops import FLOATS
from fasttape.bench.runner import (
    FTZ_SYSTEM,
    GRAD_RTOL,
    NATIVE_SYSTEM,
    SCALAR_SYSTEM,
    Settings,
    agreement,
    measure_case,
    run_peer,
)
from fasttape.kernels import fpenv
from fasttape.ops import OP_BY_NAME, OPS
from tests import reference

SMALL = 300


@pytest.fixture(scope="module")
def cases():
    return {f: build_case(f, SMALL) for f in FAMILIES}


# ---------------------------------------------------------------------------- cases
@pytest.mark.parametrize("family", FAMILIES)
def test_case_function_replays_the_tape(cases, family):
    """fn(x, floats) -- what every peer builds from -- gives fasttape's value."""
    case = cases[family]
    # random graphs: the live fraction is below its large-size value on tiny graphs
    low = 0.15 if family.startswith("random") else 0.5
    if family == "mlp-vec":  # one sample of the 16-32-32-1 network is already ~3,000
        assert case.size == 1
    else:
        assert low * SMALL <= case.n_nodes <= 1.6 * SMALL
    if family in TENSOR_FAMILIES:
        assert case.built == "tensor" and case.n_nodes == case.scalar_tape.n_instructions
    else:
        assert case.built == ("arrays" if family.startswith("random") else "traced")
    v = case.tape.value(case.x)
    assert math.isfinite(v)
    assert case.fn(list(case.x), FLOATS) == pytest.approx(v, rel=1e-12)


@pytest.mark.parametrize("gen", [random_local, random_uniform])
def test_prune_keeps_value_and_gradient_and_drops_dead_code(gen):
    tape = gen(4_000, seed=3)
    small = prune(tape)
    assert small.n_instructions < tape.n_instructions
    x = np.linspace(0.1, 0.9, tape.n_inputs)
    v, g = tape.value_and_grad(x)
    v2, g2 = small.value_and_grad(x)
    assert v == v2
    np.testing.assert_array_equal(g, g2)
    assert prune(small) is small  # nothing left to remove


def test_replay_fn_covers_operators_and_named_ops():
    import fasttape as ft

    g = ft.Graph()
    a, b = g.inputs(2)
    g.output(ft.maximum(-(a * a) / b - a ** 3, ft.tanh(b) + ft.softplus(a)))
    tape = ft.compile(g)
    x = np.array([0.7, 1.3])
    assert replay_fn(tape)(list(x), FLOATS) == pytest.approx(tape.value(x))
    g2 = ft.Graph()
    a, b = g2.inputs(2)
    g2.output(ft.stop_gradient(a) * 2.5 + (a - b) ** 2)  # fmac, sqdiff after the passes
    fused = ft.compile(g2)
    names = {OPS[int(o)].name for o in fused.ops}
    assert {"fmac", "sqdiff"} <= names
    assert replay_fn(fused)(list(x), FLOATS) == pytest.approx(fused.value(x))


def test_replay_fn_asks_the_namespace_for_every_op_by_name():
    g = ft.Graph()
    a, b = g.inputs(2)
    g.output(ft.sin(a) * b + ft.sigmoid(a - b))
    tape = ft.compile(g, optimize=False)
    ns = OpNamespace("toy", __import__("math"), {})
    with pytest.raises(Exception, match="toy has no sigmoid") as info:
        replay_fn(tape)([0.7, 1.3], ns)
    assert type(info.value).__name__ == "Unsupported" and info.value.op == "sigmoid"
    ns = OpNamespace("toy", __import__("math"), {"sigmoid": FLOATS.sigmoid})
    assert replay_fn(tape)([0.7, 1.3], ns) == pytest.approx(tape.value(np.array([0.7, 1.3])))
    with pytest.raises(Exception, match="toy has no where"):  # np.where's order differs
        _ = OpNamespace("toy", np, {}).where
    with pytest.raises(Exception, match="toy has no sin"):
        _ = OpNamespace("toy", __import__("math"), {"sin": None}).sin


# ---------------------------------------------------------------------------- baseline
@pytest.mark.parametrize("op", [op.name for op in OPS])
def test_baseline_covers_exactly_its_ops_and_matches_the_reference(op):
    """Every op of the table: the baseline implements it and agrees, or says it does not."""
    import fasttape as ft

    spec = OP_BY_NAME[op]
    codes = np.array([spec.code], dtype=np.uint8)
    assert bl.supports(codes) == (op in bl.BASELINE_OPS)
    if op not in bl.BASELINE_OPS:
        return
    # x0 op x1 (or op x0), then a multiply so the output is the last slot of a non-trivial tape
    n_in = 2
    consts = np.array([3.0]) if spec.param == "const" else np.zeros(0)
    if spec.param == "const":  # differentiable args on the inputs, parameters on the constant
        op_args = list(range(spec.ndiff)) + [n_in] * (spec.arity - spec.ndiff)
    else:
        op_args = [0, 1][: spec.arity]
    args = [*op_args, n_in + len(consts), 1]
    tape = ft.Tape.from_arrays(
        [spec.code, OP_BY_NAME["mul"].code], args, consts, [n_in + len(consts) + 1], n_in
    )
    for x in ([0.3, 0.8], [1.7, 0.4], [0.5, 0.5]):
        x = np.array(x)
        v, g = bl.run_baseline(tape, x)
        rv, rg = reference.value_and_grad(tape, x)
        assert v == pytest.approx(rv, rel=1e-14)
        np.testing.assert_allclose(g, rg, rtol=1e-13)


@pytest.mark.parametrize("family", SCALAR_FAMILIES)
def test_baseline_agrees_with_fasttape_on_every_family(cases, family):
    case = cases[family]
    v, g = case.tape.value_and_grad(case.x)
    bv, bg = bl.run_baseline(case.tape, case.x)
    assert agreement(v, g, bv, bg)[2] is None


@pytest.mark.parametrize("family", TENSOR_FAMILIES)
def test_tensor_families_agree_with_their_scalar_twin(cases, family):
    """The tensor tape (array code) and the scalar tape (element by element) of a -vec case
    are the same function: values to rounding, gradients to 1e-12 of the largest entry."""
    case = cases[family]
    assert isinstance(case.tape, ft.TensorTape)
    assert case.tape.n_instructions < 30  # one instruction per array op, not per element
    v, g = case.tape.value_and_grad(case.x)
    sv, sg = case.scalar_tape.value_and_grad(case.x)
    assert v == pytest.approx(sv, rel=1e-12)
    assert g.shape == case.x.shape
    np.testing.assert_allclose(g, sg, rtol=0, atol=1e-12 * np.abs(sg).max())


def test_tensor_case_sizes_and_the_mnist_sized_mlp():
    big = tensor_case("rosenbrock-vec", 2_000, scalar=False)
    small = tensor_case("rosenbrock-vec", 20)
    assert big.scalar_tape is None and big.n_nodes == 6 * 2_000  # an estimate, not built
    assert big.tape.n_instructions == small.tape.n_instructions  # size-independent tape
    mnist = tensor_case("mlp-vec", 4, widths=fam.MNIST_WIDTHS)
    assert mnist.scalar_tape is None and mnist.fn is None
    assert mnist.x.size == 784 * 256 + 256 + 256 * 10 + 10
    v, g = mnist.tape.value_and_grad(mnist.x)
    # the same loss in plain NumPy: tanh layer, then mean cross-entropy over the 10 classes
    w1 = mnist.x[:784 * 256].reshape(784, 256)
    b1 = mnist.x[784 * 256:784 * 256 + 256]
    w2 = mnist.x[784 * 256 + 256:-10].reshape(256, 10)
    logits = np.tanh(mnist.data["feats"] @ w1 + b1) @ w2 + mnist.x[-10:]
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    assert v == pytest.approx(np.mean(lse - logits[np.arange(4), mnist.data["targets"]]),
                              rel=1e-12)
    assert g.shape == mnist.x.shape and np.all(np.isfinite(g)) and np.abs(g).max() > 0
    with pytest.raises(ValueError, match="not a tensor family"):
        tensor_case("rosenbrock", 10)
    with pytest.raises(ValueError, match="one output"):
        fam.mlp_vec_fn(list(mnist.x), FLOATS, mnist.data["feats"], mnist.data["targets"],
                       fam.MNIST_WIDTHS)


def test_baseline_refuses_tapes_it_cannot_run():
    import fasttape as ft

    tape = ft.compile(ft.trace(lambda x: ft.log(x[0]), 1))
    with pytest.raises(ValueError, match="does not implement"):
        bl.run_baseline(tape, np.array([2.0]))


# ---------------------------------------------------------------------------- agreement
def test_agreement_accepts_rounding_and_flags_real_differences():
    g = np.array([1.0, -2.0, 1e-3])
    assert agreement(1.5, g, 1.5, g * (1 + 1e-13))[2] is None
    rel, _, problem = agreement(1.5, g, 1.5, g + np.array([0.0, 0.0, 1e-3]))
    assert problem is not None and "gradient" in problem and rel > GRAD_RTOL
    assert "value" in agreement(1.5, g, 1.6, g)[2]
    assert "entries" in agreement(1.5, g, 1.5, g[:2])[2]
    assert agreement(1.5, g, 1.5, np.array([1.0, np.nan, 1e-3]))[2] is not None
    both = np.array([np.nan, 1.0])
    assert agreement(1.0, both, 1.0, both)[2] is None


class _FakePeer(Peer, module="numpy", scalar_cap=None):

    def __init__(self, name, behaviour):
        self.name = name
        self.behaviour = behaviour

    def build(self, case):
        tape, behaviour = case.tape, self.behaviour

        def vg(x):
            v, g = tape.value_and_grad(x)
            if behaviour == "wrong-gradient":
                g = g.copy()
                g[0] += 0.1 * max(1.0, np.abs(g).max())
            if behaviour == "slow":
                time.sleep(1.5)
            if behaviour == "raises":
                raise RuntimeError("boom\nsecond line")
            return v, g

        return Built(lambda x: tape.value(x), vg, 0.0, 0.0, "scalar")


def _peer_row(case, peer, **kw):
    v, g = case.tape.value_and_grad(case.x)
    settings = Settings(families=[case.family], nodes=[SMALL], repeat=2, **kw)
    return run_peer(peer, case, v, g, 10.0, settings), settings


def test_a_peer_with_a_wrong_gradient_is_flagged_and_not_timed(cases):
    row, _ = _peer_row(cases["rosenbrock"], _FakePeer("liar", "wrong-gradient"))
    assert row["status"].startswith("DISAGREES: gradient differs")
    assert row["grad_rel_diff"] > GRAD_RTOL
    assert row["vg_ns"] is None and row["value_ns"] is None


def test_an_honest_peer_is_timed(cases):
    row, _ = _peer_row(cases["chain"], _FakePeer("honest", "ok"))
    assert row["status"] == "ok"
    assert row["vg_ns"] > 0 and row["value_ns"] > 0 and row["vs_fasttape"] > 0
    assert row["grad_rel_diff"] == 0.0
    # The ratio comes from fasttape sampled in turn inside the peer's run, not from the
    # fasttape figure handed in (10 ns/node in _peer_row, far from this tape's real time).
    assert row["vs_fasttape"] != pytest.approx(row["vg_ns"] / 10.0, rel=1e-3)


def test_a_peer_header_sets_its_fields_and_refuses_unknown_ones():
    class Capped(Peer, name="capped", module="math", scalar_cap=5):
        pass

    assert (Capped.name, Capped.module, Capped.scalar_cap, Peer.scalar_cap) == (
        "capped", "math", 5, None)
    with pytest.raises(TypeError, match=r"unknown peer field\(s\) \['scalar_caps'\]"):
        class Typo(Peer, name="typo", scalar_caps=5):
            pass


def test_failing_slow_and_missing_peers_get_rows(cases):
    case = cases["chain"]
    row, settings = _peer_row(case, _FakePeer("broken", "raises"))
    assert row["status"].startswith("failed (RuntimeError: boom second line")
    assert ("broken", "chain") in settings.stopped
    row, settings = _peer_row(case, _FakePeer("slow", "slow"), peer_timeout=0.3)
    assert row["status"].startswith("timeout (> 0.3 s in first call")
    again = run_peer(_FakePeer("slow", "slow"), case, 0.0, np.zeros(1), 1.0, settings)
    assert again["status"].startswith("skipped (timed out")
    missing = _FakePeer("ghost", "ok")
    missing.module = "fasttape_no_such_module"
    row, _ = _peer_row(case, missing)
    assert row["status"].startswith("not installed")
    capped = _FakePeer("capped", "ok")
    capped.scalar_cap_quick = 10
    row, _ = _peer_row(case, capped, quick=True)
    assert row["status"] == "skipped (> 10 nodes in --quick)"


class _NoTanhPeer(Peer, name="no-tanh", module="math", scalar_cap=None):
    """A peer whose math module has no tanh: the mlp family needs one."""

    def build(self, case):
        ns = OpNamespace(self.name, __import__("math"), {"tanh": None})
        case.fn(list(case.x), ns)
        raise AssertionError("unreachable: the family calls m.tanh")


def test_a_peer_without_an_op_is_unsupported_for_the_family_not_a_crash(cases):
    case = cases["mlp"]
    row, settings = _peer_row(case, _NoTanhPeer())
    assert row["status"] == "unsupported (no-tanh has no tanh)"
    assert row["vg_ns"] is None
    again = run_peer(_NoTanhPeer(), case, 0.0, np.zeros(1), 1.0, settings)
    assert again["status"] == row["status"]


def _peer_family_pairs() -> list:
    """Every peer with every family it runs (a combination it sits out is no test: under CI
    a skipped oracle test fails); torch.compile on one family only (tens of seconds each)."""
    pairs = []
    for peer in PEERS:
        for family in ["random-uniform", "autograd-west", *VECTORIZED]:
            if peer.applies(family, quick=False) is not None:
                continue
            if peer.name == "torch-compile" and family != "rosenbrock-vec":
                continue
            pairs.append(pytest.param(peer, family, id=f"{family}-{peer.name}"))
    return pairs


@pytest.mark.oracle  # CI installs every peer (the peers extra): a skip there is a failure
@pytest.mark.parametrize(("peer", "family"), _peer_family_pairs())
def test_installed_peers_agree_with_fasttape(peer, family):
    if peer.available() is not None:
        pytest.skip(f"{peer.name} not installed")
    if peer.name == "jax" and peer.style(family) == "scalar":
        family_size = 60  # XLA compile time grows fast on scalar graphs
    else:
        family_size = 200
    case = build_case(family, family_size)
    v, g = case.tape.value_and_grad(case.x)
    built = peer.build(case)
    pv, pg = built.value_and_grad(case.x)
    assert agreement(v, g, pv, pg)[2] is None
    assert built.value(case.x) == pytest.approx(v, rel=1e-9)
    assert built.style == peer.style(family)


def test_measure_case_native_row(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTTAPE_CACHE_DIR", str(tmp_path))
    settings = Settings(families=["rosenbrock"], nodes=[SMALL], repeat=2, peers=[],
                        min_sample=1e-4, native=True)
    rows = measure_case("rosenbrock", SMALL, settings)
    row = next(r for r in rows if r["system"] == NATIVE_SYSTEM)
    assert row["status"] == "ok (bitwise)" and row["code"].startswith("LLVM level")
    for key in ("compile_s", "first_call_s", "value_ns", "vg_ns", "vs_fasttape"):
        assert row[key] > 0, key
    settings.native_max = 1
    rows = measure_case("rosenbrock", SMALL, settings)
    row = next(r for r in rows if r["system"] == NATIVE_SYSTEM)
    assert row["status"].startswith("skipped") and row["vg_ns"] is None


def test_measure_case_rows(cases):
    settings = Settings(families=["lennard-jones"], nodes=[SMALL], repeat=2, peers=[],
                        min_sample=1e-4)
    rows = measure_case("lennard-jones", SMALL, settings)
    ftz = [FTZ_SYSTEM] if fpenv.SUPPORTED else []
    assert [r["system"] for r in rows] == ["fasttape", "baseline", *ftz]
    ft_row, base = rows[:2]
    assert ft_row["status"] == "ok" and base["status"] == "ok"
    for key in ("build_s", "compile_s", "first_call_s", "value_ns", "vg_ns", "grad_over_value"):
        assert ft_row[key] > 0, key
    assert base["vs_fasttape"] > 0
    if ftz:  # no subnormals in this case: the flushed sweep gives the same numbers
        assert rows[2]["status"].startswith("ok") and rows[2]["grad_rel_diff"] == 0.0


def test_measure_case_rows_of_a_tensor_family():
    settings = Settings(families=["lennard-jones-vec"], nodes=[SMALL], repeat=2,
                        peers=["casadi-sx", "torch-compile"], quick=True, min_sample=1e-4)
    rows = measure_case("lennard-jones-vec", SMALL, settings)
    assert [r["system"] for r in rows] == ["fasttape", SCALAR_SYSTEM, "casadi-sx",
                                           "torch-compile"]
    ft_row, scalar = rows[:2]
    assert ft_row["code"] == "tensor" and ft_row["status"] == "ok"
    assert scalar["code"] == "traced" and scalar["status"] == "ok"
    assert ft_row["n_nodes"] == scalar["n_nodes"] > 100  # the scalar twin's instructions
    for key in ("build_s", "compile_s", "first_call_s", "value_ns", "vg_ns"):
        assert ft_row[key] > 0, key
    assert scalar["vs_fasttape"] > 0 and scalar["grad_rel_diff"] <= 1e-12
    # scalar engines sit the tensor families out; torch.compile sits out --quick
    assert rows[2]["status"] == "n/a (array code only: see lennard-jones)"
    assert rows[3]["status"].startswith("skipped (--quick")


def test_peers_that_sit_a_family_out_say_why():
    from fasttape.bench.peers import peer_by_name

    tc, jax_peer = peer_by_name("torch-compile"), peer_by_name("jax")
    assert tc.applies("chain", quick=False) == "n/a (vectorized families only)"
    assert tc.applies("mlp-vec", quick=False) is None
    assert jax_peer.applies("mlp-vec", quick=True) is None
    assert peer_by_name("ddx").applies("mlp-vec", quick=False).startswith("n/a (array code")
    assert peer_by_name("ddx").applies("mlp", quick=False) is None


# ---------------------------------------------------------------------------- CLI
def _run_cli(capsys, *args):
    code = run_bench_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_quick_json_schema(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code, out, _ = _run_cli(
        capsys, "--quick", "--nodes", "200,400", "--families", "chain,rosenbrock",
        "--peers", "none", "--repeat", "2", "--no-west", "--json", str(path),
    )
    assert code == 0
    assert "fasttape" in out and "rosenbrock" in out and "targets" in out
    data = json.loads(path.read_text())
    assert data["schema"] == "fasttape-bench/1"
    assert {"machine", "settings", "rows", "west", "peers", "kernel_load_s"} <= set(data)
    assert data["machine"]["cpus_usable"] >= 1 and data["machine"]["numba"]
    assert data["settings"]["nodes"] == [200, 400]
    systems = {(r["family"], r["n_nodes"] // 100, r["system"]) for r in data["rows"]}
    per_case = 3 if fpenv.SUPPORTED else 2  # fasttape, baseline (and fasttape-ftz)
    assert len(data["rows"]) == 2 * 2 * per_case and len(systems) == 4 * per_case
    from fasttape.bench.runner import ROW_KEYS

    for row in data["rows"]:
        assert set(row) == set(ROW_KEYS)
        assert row["status"].startswith("ok")


def test_cli_markdown_and_west(tmp_path, capsys):
    path = tmp_path / "bench.md"
    code, out, _ = _run_cli(
        capsys, "--quick", "--nodes", "300", "--families", "autograd-west", "--peers", "none",
        "--repeat", "2", "--west-calls", "20", "--markdown", str(path),
    )
    assert code == 0
    md = path.read_text()
    assert "| family | nodes | system | code | build s |" in md
    assert "| autograd-west |" in md and "- command: `fasttape bench --quick" in md
    for text in (md, out):
        assert "autograd-west workload: 10,000 ops" in text
        assert "sequential single calls" in text
        assert "one batch of 20 points" in text
        if fpenv.SUPPORTED:
            assert "the same batch with subnormals flushed" in text
    assert max(len(line) for line in out.splitlines()) <= 100


def _fake_result(peers_installed=("numpy-python",), long_status=False, slow_batch=False):
    """A result of ``run`` without running anything: for the output tests."""
    from fasttape.bench.cli import build_parser, run

    ns = build_parser().parse_args(["--quick", "--nodes", "100", "--families", "chain",
                                    "--peers", "none", "--repeat", "1", "--no-west"])
    result = run(ns)
    rows = result["rows"]
    for r in rows:  # measured ratios are noise: fix them so that no target depends on them
        r["vs_fasttape"] = 1.0
    base = dict(rows[0])
    for p in PEERS:
        row = dict(base, system=p.name, code="scalar", value_ns=None, vg_ns=None,
                   vs_fasttape=None)
        if p.name in peers_installed:
            row["status"] = "ok" if not long_status else "failed (" + "x" * 200 + ")"
            row.update(vg_ns=12345.678, value_ns=1234.5, vs_fasttape=123.4)
        else:
            row["status"] = "not installed (ModuleNotFoundError)"
        rows.append(row)
        result["peers"][p.name] = {"installed": p.name in peers_installed,
                                   "version": "1.0", "status": "installed"}
    result["settings"]["peers"] = None
    if slow_batch:
        result["west"] = {
            "n_ops": 10_000, "n_nodes": 57_000, "n_calls": 10_000, "measured_calls": 100,
            "extrapolated": True, "trace_s": 0.1, "compile_s": 0.1, "first_call_s": 0.1,
            "sequential_s": 90.0, "sequential_total_s": 90.2, "batch": True, "batch_s": 98.8,
            "batch_total_s": 99.0, "repeat": 3, "batch_matches_sequential": True,
            "batch_flush_s": None,
        }
    return result


def test_default_report_fits_100_columns_and_names_missing_peers_once():
    from fasttape.bench.cli import render

    text = render(_fake_result(long_status=True))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "ModuleNotFoundError" not in text  # no row per missing peer and case...
    assert text.count('pip install "fasttape[peers]"') == 1  # ...one line for all of them
    assert 'pip install "fasttape[peers-torch]"' in text
    missing = [p.name for p in PEERS if p.name != "numpy-python"]
    lines = [t for t in text.splitlines() if t.startswith("not installed (pip install")]
    assert all(sum(name in t for t in lines) == 1 for name in missing)
    assert "failed (xxx" in text and "..." in text  # a long status is cut, not wrapped
    assert "MISSED, NOT met, BEHIND: slower than the target" in text
    md = render(_fake_result(long_status=True), markdown=True)
    assert "x" * 200 in md and md.count("not installed (ModuleNotFoundError)") == len(missing)


@pytest.mark.parametrize("check", [False, True])
def test_check_exits_1_when_a_target_is_missed(monkeypatch, capsys, check):
    from fasttape.bench import cli

    slow, fine = _fake_result(slow_batch=True), _fake_result()
    monkeypatch.setattr(cli, "run", lambda ns, say=None: slow)
    args = ["--quick", "--no-progress"] + (["--check"] if check else [])
    code, out, err = _run_cli(capsys, *args)
    assert "(target <= 1.5 s: NOT met)" in out
    assert code == (1 if check else 0)
    if check:
        assert "autograd-west batch <= 1.5 s" in err and "missed" in err
    monkeypatch.setattr(cli, "run", lambda ns, say=None: fine)
    assert _run_cli(capsys, *args)[0] == 0


def test_verdicts_judge_baseline_casadi_and_the_batch():
    from fasttape.bench.output import verdicts

    rows = [
        {"family": "f", "n_nodes": 10, "system": "baseline", "vs_fasttape": 0.5, "status": "ok"},
        {"family": "f", "n_nodes": 10, "system": "casadi-sx", "vs_fasttape": 2.0,
         "status": "ok"},
    ]
    got = dict(verdicts({"rows": rows, "west": {"batch": True, "batch_total_s": 1.0}}))
    assert got == {"f: fasttape/baseline <= 1.25x": False, "f: fasttape ahead of casadi-sx": True,
                   "autograd-west batch <= 1.5 s": True}


def test_compiling_step_is_announced_with_its_time():
    from fasttape.bench.cli import compiling

    said = []
    with compiling(said.append, "the toy kernels"):
        pass
    assert said[0] == ("compiling kernels for the toy kernels (first run only, cached "
                       "afterwards)...")
    assert said[1].startswith("kernels for the toy kernels ready in ")


def test_cli_all_peers_listed(capsys):
    """Every peer is accounted for: a row (figures, or why not), or the not-installed line."""
    code, out, _ = _run_cli(capsys, "--quick", "--nodes", "100", "--families", "chain",
                            "--repeat", "1", "--no-west", "--peer-timeout", "30")
    assert code == 0
    missing = "".join(t for t in out.splitlines() if t.startswith("not installed (pip"))
    for p in PEERS:
        assert f" {p.name} " in out or p.name in missing, p.name


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    code, _, _ = _run_cli(capsys, "--quick", "--nodes", "100,200", "--families", "chain",
                          "--peers", "none", "--repeat", "1", "--no-west", "--plot", str(path))
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--families", "nope"], "unknown family 'nope'"),
        (["--nodes", "-5"], "sizes must be whole numbers"),
        (["--nodes", "1e3,abc"], "not a number"),
        (["--repeat", "0"], "must be positive"),
        (["--peers", "matlab"], "unknown peer 'matlab'"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(capsys, args, message):
    from fasttape.__main__ import main

    code = main(["bench", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fasttape bench: error: ")
    assert message in err


def test_west_batch_is_warmed_up_on_the_timed_batch(monkeypatch):
    # Regression: the warm-up used a 2-point slice, which can take the serial path, so on a
    # cold Numba cache the parallel drivers compiled inside the timed call (156 s reported
    # for 4 s of work on a fresh install).  The warm-up must use the timed batch's shape.
    from fasttape.bench import west

    shapes = []
    original = ft.Tape.value_and_grad

    def recording(self, x, **kw):
        arr = np.asarray(x)
        if arr.ndim == 2:
            shapes.append(arr.shape)
        return original(self, x, **kw)

    monkeypatch.setattr(ft.Tape, "value_and_grad", recording)
    out = west.west_workload(n_ops=40, n_calls=12, measured_calls=6, repeat=3)
    # The reported batch time is the median of the timed calls, all of them kept.
    assert len(out["batch_samples_s"]) == 3
    assert out["batch_s"] == float(np.median(out["batch_samples_s"]))
    if fpenv.SUPPORTED:
        assert len(out["batch_flush_samples_s"]) == 3
        assert out["batch_flush_s"] == float(np.median(out["batch_flush_samples_s"]))
    batch_calls = [s for s in shapes if s[0] > 1]
    assert len(batch_calls) >= 2 and batch_calls[-1] == batch_calls[-2] == (6, 100)
    assert out["batch_matches_sequential"]


def test_help_texts_are_plain_text(capsys):
    from fasttape.__main__ import main

    for args in (["--help"], ["demo", "--help"], ["bench", "--help"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "``" not in out and ":mod:" not in out and ":func:" not in out
        assert len(out) > 300, args
    main(["demo", "--help"])
    assert "1,000,000-node" in capsys.readouterr().out  # the demo says what it does


def test_peers_not_asked_for_are_not_imported(monkeypatch, capsys):
    from fasttape.bench import cli

    imported = []

    class Spy(Peer):
        name = "spy"
        module = "numpy"

        def available(self):
            imported.append(self.name)
            return None

    monkeypatch.setattr(cli, "PEERS", (Spy(),))
    ns = cli.build_parser().parse_args(["--quick", "--nodes", "50", "--families", "chain",
                                        "--peers", "none", "--repeat", "1", "--no-west"])
    result = cli.run(ns)
    assert imported == []  # found by find_spec, not imported
    assert result["peers"]["spy"]["installed"]


def test_terminal_progress_stays_on_one_line(monkeypatch, capsys):
    import os

    from fasttape.bench import cli

    monkeypatch.setattr(cli.shutil, "get_terminal_size", lambda: os.terminal_size((60, 20)))
    say = cli.progress(tty=True)
    say("compiling kernels for batch evaluation with subnormals flushed (first run only, "
        "cached afterwards)...")
    err = capsys.readouterr().err
    assert err.startswith("\r\x1b[K[bench") and "\n" not in err
    assert len(err) - len("\r\x1b[K") <= 59 and err.endswith("...")
    plain = cli.progress(tty=False)
    plain("x" * 200)
    assert capsys.readouterr().err.endswith("x" * 200 + "\n")  # a log keeps the whole line
