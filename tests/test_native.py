"""The native tier (fasttape/native/): bitwise the interpreter, on every op and on random
tapes, across piece boundaries; the disk cache, corrupted entries included; big tapes."""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.bench import families
from fasttape.native import NativeTape, cache, native
from fasttape.native import tape as native_tape
from fasttape.ops import OPS
from tests.test_random_graphs import random_tapes

OPS_BY = {op.name: op.code for op in OPS}
SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, math.inf, -math.inf, math.nan, 1e-310, 1e300]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Every test gets its own cache folder: no test sees another's entries.
    monkeypatch.setenv("FASTTAPE_CACHE_DIR", str(tmp_path / "cache"))


def bits(a) -> np.ndarray:
    """Float64 values as their bit patterns (so signed zeros compare), every NaN as one
    pattern: IEEE 754 leaves to the hardware which NaN operand propagates, and LLVM commutes
    the operands of a sum or product freely, in the interpreter's kernels as in native code."""
    v = np.array(np.atleast_1d(np.asarray(a, dtype=np.float64)))
    v[np.isnan(v)] = np.nan
    return v.view(np.int64)


def assert_same(tape, nt, x, p=None):
    """value (every output) and value_and_grad (each output) bitwise the interpreter's."""
    ref = tape.value(x, p)
    got = nt.value(x, p)
    assert np.array_equal(bits(ref), bits(got)), (x, ref, got)
    for k in range(tape.n_outputs):
        v0, g0 = tape.value_and_grad(x, p, output=k)
        v1, g1 = nt.value_and_grad(x, p, output=k)
        assert np.array_equal(bits(v0), bits(v1)), (x, k, v0, v1)
        assert np.array_equal(bits(g0), bits(g1)), (x, k, g0, g1)


def every_op_tape() -> ft.Tape:
    """Each op twice: on the inputs, and with its first argument a constant (immediates);
    the constant-argument ops with several constants, powi with several exponents."""
    consts = [-3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.5, -1.5, math.inf, math.nan, -0.0, 1e-310]
    n_in = 3
    exps = [n_in + consts.index(e) for e in (-3.0, -1.0, 0.0, 1.0, 2.0, 3.0)]
    others = list(range(n_in, n_in + len(consts)))
    ops, args = [], []
    for spec in OPS:
        variants = []
        if spec.param == "const":
            params = exps if spec.name == "powi" else others
            for c in params:
                head = [0, 1][: spec.ndiff]
                variants.append(head + [c] * (spec.arity - spec.ndiff))
        else:
            variants.append([0, 1, 2][: spec.arity])
            for c in (n_in + 6, n_in + 8, n_in + 9):  # 0.5, inf, nan as the first argument
                variants.append([c, 1, 2][: spec.arity])
        for a in variants:
            ops.append(spec.code)
            args += a
    n_pre = n_in + len(consts)
    outputs = list(range(n_pre, n_pre + len(ops)))
    return ft.Tape.from_arrays(ops, args, consts, outputs, n_in)


@pytest.fixture(scope="module")
def op_tapes():
    tape = every_op_tape()
    return tape, native(tape, cache_entries=False), native(tape, piece_size=7, opt=0,
                                                           cache_entries=False)


def test_every_op_is_bitwise_the_interpreter(op_tapes):
    tape, nt, small = op_tapes
    rng = np.random.default_rng(0)
    points = [rng.uniform(-3, 3, 3) for _ in range(30)]
    points += [rng.choice(SPECIAL, 3) for _ in range(60)]
    points += [np.array([a, a, a]) for a in SPECIAL]  # ties of minimum, maximum, ...
    for x in points:
        assert_same(tape, nt, x)
        assert_same(tape, small, x)


def test_every_op_in_its_domain(op_tapes):
    # Where each op is smooth, so gradients are ordinary numbers rather than inf or NaN.
    tape, nt, _ = op_tapes
    rng = np.random.default_rng(1)
    for spec in OPS:
        lo, hi = np.array(spec.domain[: min(spec.arity, 3)]).T
        for _ in range(5):
            x = np.zeros(3)
            x[: len(lo)] = rng.uniform(lo, hi)
            assert_same(tape, nt, x)


@settings(max_examples=40, deadline=None)
@given(random_tapes(), st.sampled_from([1, 3, 1000]))
def test_random_tapes_are_bitwise_the_interpreter(case, piece_size):
    tape, x = case
    nt = native(tape, piece_size=piece_size, opt=piece_size % 3, cache_entries=False)
    assert_same(tape, nt, np.array(x))


def test_an_unreached_instruction_leaves_no_stale_adjoint():
    # Regression (found by hypothesis): %11 = sqrt(x0) reaches no output, so its reverse
    # piece skips it and stores nothing; the piece below used to load x0's adjoint from the
    # work array anyway, where the previous call (output 0's) had left inf.
    tape = ft.Tape.from_arrays([OPS_BY["sqrt"], OPS_BY["sqrt"], OPS_BY["add"]],
                               [0, 0, 1, 10], [-3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0],
                               [12, 1], 1)
    for opt in (0, 1):
        assert_same(tape, native(tape, piece_size=1, opt=opt, cache_entries=False),
                    np.array([0.0]))


def test_batches_row_by_row_and_parameters():
    tape = ft.compile(ft.trace(lambda v, p: [ft.sin(v[0]) * p[0] + v[1] ** 2, v[0] * v[1]],
                               2, n_params=1))
    nt = tape.native()
    x, p = np.array([0.3, -1.2]), np.array([2.5])
    assert_same(tape, nt, x, p)
    xs = np.array([[0.3, -1.2], [1.0, 2.0], [-0.5, 0.25]])
    v0, g0 = tape.value_and_grad(xs, p, output=1)
    v1, g1 = nt.value_and_grad(xs, p, output=1)
    assert np.array_equal(bits(v0), bits(v1)) and np.array_equal(bits(g0), bits(g1))
    assert np.array_equal(bits(tape.value(xs, p)), bits(nt.value(xs, p)))


@pytest.mark.parametrize("threads", [1, min(2, numba.config.NUMBA_NUM_THREADS), None])
def test_parallel_batches_are_bitwise_single_calls(threads, monkeypatch):
    # Every batch is split over the threads (no work threshold), with more threads than some
    # batches have rows; each row must give the bits of a single call.  (threads=2 needs a
    # machine with 2 cores or more; NUMBA_NUM_THREADS caps it.)
    monkeypatch.setattr(native_tape, "PARALLEL_MIN_WORK", 1)
    tape = families.random_local(300, seed=3)
    nt = native(tape)
    rng = np.random.default_rng(1)
    for rows in (0, 1, 2, 7):
        xs = rng.uniform(0.1, 0.9, (rows, tape.n_inputs))
        vals, grads = nt.value_and_grad(xs, threads=threads)
        values = nt.value(xs, threads=threads)
        assert vals.shape == (rows,) and grads.shape == (rows, tape.n_inputs)
        for b in range(rows):
            v, g = tape.value_and_grad(xs[b])
            assert bits(vals[b]) == bits(v) and bits(values[b]) == bits(v)
            assert np.array_equal(bits(grads[b]), bits(g))
    out = np.empty((7, tape.n_inputs))
    assert nt.grad(xs, out=out, threads=threads) is out
    assert np.array_equal(bits(out), bits(grads))
    with pytest.raises(ValueError, match="threads"):
        nt.value(xs, threads=0)
    with pytest.raises(ValueError, match="threads"):
        nt.value(xs[0], threads=10_000)


def test_outputs_on_inputs_and_constants():
    # Outputs that are an input slot or a constant slot, repeated outputs, an empty tape.
    tape = ft.Tape.from_arrays([OPS[0].code], [0, 2], [4.0], [0, 2, 3, 0, 3], 2)
    nt = native(tape)
    for x in ([1.0, 2.0], [0.0, -0.0], [math.nan, 1.0]):
        assert_same(tape, nt, np.array(x))
    empty = ft.Tape.from_arrays([], [], [1.5], [0, 1], 1)
    assert_same(empty, native(empty), np.array([3.0]))


def test_bad_arguments_are_refused():
    tape = ft.compile(ft.trace(lambda v: v[0] * v[1], 2))
    with pytest.raises(ValueError, match="piece_size"):
        native(tape, piece_size=0)
    with pytest.raises(ValueError, match="opt must be"):
        native(tape, opt=7)
    nt = tape.native()
    with pytest.raises(ValueError, match="2 inputs"):
        nt.value([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="no parameters"):
        nt.value([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="out must be"):
        nt.value_and_grad([1.0, 2.0], out=np.empty(3))


def test_native_tapes_called_in_turn_run_their_own_code():
    # Single calls go through one compiled trampoline that takes the entry point as an
    # argument: a tape must never run another's machine code.
    tapes = [ft.compile(ft.trace(lambda v, f=f: f(v[0]) * v[1], 2))
             for f in (ft.sin, ft.cos, ft.exp)]
    natives = [t.native() for t in tapes]
    x = np.array([0.3, 0.4])
    for _ in range(2):
        for tape, nt in zip(tapes, natives, strict=True):
            assert_same(tape, nt, x)


def test_threads_share_a_native_tape():
    tape = families.random_local(500)
    nt = native(tape)
    x = np.random.default_rng(0).uniform(0.1, 0.9, tape.n_inputs)
    want = tape.value_and_grad(x)
    errors = []

    def work():
        for _ in range(50):
            v, g = nt.value_and_grad(x)
            if v != want[0] or not np.array_equal(g, want[1]):
                errors.append((v, g))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------- the disk cache
def _small():
    return ft.compile(ft.trace(lambda v: ft.exp(v[0]) * ft.sin(v[1]) + v[0] ** 3, 2))


def test_a_second_build_loads_from_the_cache():
    tape = _small()
    first = native(tape)
    assert not first.from_cache
    second = native(tape)
    assert second.from_cache and second.compile_seconds == 0.0
    assert_same(tape, second, np.array([0.7, -0.2]))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_a_damaged_entry_is_rebuilt_never_run(damage):
    tape = _small()
    native(tape)
    (path,) = list((cache.entry_path("x").parent).glob("*.fto"))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40  # inside an object file: caught by the checksum only
    elif damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "garbage":
        data = bytearray(b"not a cache entry at all" * 10)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    key = path.stem
    assert cache.load(key) is None
    again = native(tape)
    assert not again.from_cache  # rebuilt ...
    assert cache.load(key) is not None  # ... and the entry rewritten whole
    assert_same(tape, again, np.array([0.7, -0.2]))


def test_the_key_covers_content_and_options():
    a = ft.compile(ft.trace(lambda v: v[0] * 2.0 + v[1], 2))
    b = ft.compile(ft.trace(lambda v: v[0] * 3.0 + v[1], 2))
    native(a)
    assert not native(b).from_cache  # another constant: another entry
    assert not native(a, piece_size=1).from_cache  # other options: another entry
    assert native(a).from_cache


# ---------------------------------------------------------------------- levels
def test_libm_ops_are_the_ops_whose_formulas_call_libm():
    from fasttape.native.translate import libm_ops

    names = {OPS[c].name for c in libm_ops()}
    # Directly (sin, exp, pow through **) and through helpers (sigmoid, softplus).
    assert {"sin", "cos", "exp", "log", "tanh", "atan2", "pow", "powc", "sigmoid",
            "softplus", "erf"} <= names
    # Arithmetic, intrinsics (sqrt, floor, abs) and powi's loop of multiplications.
    assert not names & {"add", "mul", "div", "square", "sqrt", "floor", "abs", "powi",
                        "fmac", "where", "maximum"}


def _mixed_tape(n_sin: int, n_mul: int) -> ft.Tape:
    """``n_sin`` chained sines, then ``n_mul`` chained products: two kinds of pieces."""
    ops = [OPS_BY["sin"]] * n_sin + [OPS_BY["mul"]] * n_mul
    args = [0] + [1 + i for i in range(n_sin - 1)]
    for i in range(n_mul):
        args += [n_sin + i, 0]  # slot of the previous result, times the input
    return ft.Tape.from_arrays(ops=ops, args=args, consts=[], n_inputs=1,
                               outputs=[n_sin + n_mul])


def test_piece_levels_follow_the_share_of_libm_calls():
    piece_levels = native_tape.piece_levels
    share = native_tape.LIBM_SHARE_LEVEL0
    tape = _mixed_tape(300, 700)
    assert piece_levels(tape.ops, 100) == (0, 0, 0) + (1,) * 7
    # A piece with a mixed share: level 0 from the threshold up.
    k = math.ceil(share * 100)
    assert piece_levels(_mixed_tape(k, 100 - k).ops, 100) == (0,)
    assert piece_levels(_mixed_tape(k - 1, 101 - k).ops, 100) == (1,)
    # Above opt_level's size limit, every piece is at level 0; an empty tape has no piece.
    big = np.full(20_001, OPS_BY["mul"])
    assert set(piece_levels(big, 2000)) == {0} and len(piece_levels(big, 2000)) == 11
    assert piece_levels(np.zeros(0, np.int64)) == ()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="piece_size must be a positive int"):
            piece_levels(tape.ops, bad)


def test_native_compiles_each_piece_at_its_level():
    tape = _mixed_tape(30, 70)
    nt = native(tape, piece_size=10, cache_entries=False)
    assert nt.levels == (0, 0, 0) + (1,) * 7
    assert_same(tape, nt, np.array([0.7]))
    # An explicit opt applies to every piece, and is another cache entry than the default.
    one = native(tape, piece_size=10, opt=1)
    assert one.levels == (1,) * 10 and not one.from_cache
    assert not native(tape, piece_size=10).from_cache
    assert native(tape, piece_size=10).from_cache
    assert_same(tape, one, np.array([-0.3]))


# ---------------------------------------------------------------------- big tapes
@pytest.mark.slow
def test_a_big_tape_runs_on_a_default_thread_stack():
    # 2e5 instructions in 100 pieces: no piece needs more than a small stack frame, so a
    # thread with the default stack size runs it.
    tape = families.random_local(200_000)
    x = np.random.default_rng(0).uniform(0.1, 0.9, tape.n_inputs)
    nt = native(tape, progress=True)
    result = {}
    t = threading.Thread(target=lambda: result.update(vg=nt.value_and_grad(x)))
    t.start()
    t.join()
    v0, g0 = tape.value_and_grad(x)
    v1, g1 = result["vg"]
    assert np.array_equal(bits(v0), bits(v1)) and np.array_equal(bits(g0), bits(g1))


@pytest.mark.slow
def test_rosenbrock_and_a_chain():
    for tape, x in [(families.rosenbrock(3000), families.rosenbrock_point(3000)),
                    (families.chain(5000), np.array([0.3]))]:
        assert_same(tape, native(tape), x)


# ---------------------------------------------------------------------- tiering
def test_tiering_switches_to_native_code_after_n_calls():
    tape = families.random_local(400, seed=5)
    tt = tape.native(tier_after=3, check=False)  # switch whatever the speed
    x = np.random.default_rng(2).uniform(0.1, 0.9, tape.n_inputs)
    want_v, want_g = tape.value_and_grad(x)
    for _ in range(2):  # below the threshold: interpreted, nothing compiling
        v, g = tt.value_and_grad(x)
        assert bits(v) == bits(want_v) and np.array_equal(bits(g), bits(want_g))
    assert not tt.compiling and tt.native is None and "interpreted (2 of 3" in repr(tt)
    v, g = tt.value_and_grad(x)  # the third call starts the compile and still interprets
    assert tt.compiling and np.array_equal(bits(g), bits(want_g))
    while not tt.wait(0.01):  # calls go on while it compiles, on the interpreter
        assert np.array_equal(bits(tt.grad(x)), bits(want_g))
    assert tt.error is None and isinstance(tt.native, NativeTape) and tt.switched
    assert "native" in repr(tt) and tt.timings is None
    calls = tt.calls
    assert np.array_equal(bits(tt.grad(x)), bits(want_g))
    assert bits(tt.value(x)) == bits(want_v) and bits(tt(x)) == bits(want_v)
    vals, grads = tt.value_and_grad(np.stack([x, x]))  # batches too
    assert np.array_equal(bits(grads[1]), bits(want_g)) and bits(vals[0]) == bits(want_v)
    assert tt.calls == calls + 4


def test_tiering_switches_only_to_faster_code():
    # check=True (the default) times both tiers at the last point seen and switches only if
    # the native tape is faster: either way the results are the interpreter's bits.
    tape = families.chain(300)
    tt = tape.native(tier_after=2)
    x = np.array([0.7])
    want = tape.value_and_grad(x)
    for _ in range(2):
        tt.value_and_grad(x)
    assert tt.wait(120) and tt.error is None and tt.native is not None
    t_interp, t_native = tt.timings
    assert tt.switched == (t_native < t_interp)
    assert ("slower" in repr(tt)) == (not tt.switched)
    v, g = tt.value_and_grad(x)
    assert bits(v) == bits(want[0]) and np.array_equal(bits(g), bits(want[1]))


def test_tiering_from_the_start_and_a_failed_compile(monkeypatch):
    tape = _small()
    tt = tape.native(tier_after=0, opt=0)  # compiles at once
    assert tt.compiling and tt.wait(120) and tt.native is not None
    assert tt.native.value_and_grad([0.5, 1.0])[1].tolist() == \
        tape.value_and_grad([0.5, 1.0])[1].tolist()

    def broken(*args, **kwargs):
        raise RuntimeError("no LLVM today")

    monkeypatch.setattr("fasttape.native.tier.native", broken)
    tt = tape.native(tier_after=1)
    want = tape.value([0.5, 1.0])
    assert tt.value([0.5, 1.0]) == want and tt.wait(60)
    assert isinstance(tt.error, RuntimeError) and tt.native is None
    assert tt.value([0.5, 1.0]) == want  # still the interpreter
    assert "compile failed" in repr(tt)


@pytest.mark.parametrize("bad, match", [
    ({"tier_after": -1}, "tier_after"), ({"tier_after": 2.5}, "tier_after"),
    ({"tier_after": True}, "tier_after"), ({"tier_after": 1, "opt": 7}, "opt"),
    ({"tier_after": 1, "piece_size": 0}, "piece_size"),
])
def test_tiering_refuses_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        _small().native(**bad)
    with pytest.raises(TypeError, match="progress"):
        _small().native(tier_after=1, progress=True)


@pytest.mark.parametrize("opt", [0, 1, 2])
def test_powi_written_out_is_bitwise_the_interpreters(opt):
    # The pieces write a constant powi (and its partial) out as its loop's multiplications up
    # to |n| = POWI_UNROLL_MAX, and call the library above: both bitwise the interpreter's.
    # emit._powi restates the loop of kernels/scalar.powi (the library gets it by translation),
    # so every exponent it writes is checked, and the first ones past it.
    from fasttape.native.emit import POWI_UNROLL_MAX

    powi = next(op.code for op in OPS if op.name == "powi")
    mul = next(op.code for op in OPS if op.name == "mul")
    exps = list(range(-POWI_UNROLL_MAX - 1, POWI_UNROLL_MAX + 2))
    n_in = 2
    ops, args = [], []
    for j in range(len(exps)):  # x0 ** e, then (x0 * x1) ** e: a computed base
        ops += [powi, mul, powi]
        args += [0, n_in + j, 0, 1, n_in + len(exps) + 3 * j + 1, n_in + j]
    n_pre = n_in + len(exps)
    outputs = list(range(n_pre, n_pre + len(ops)))
    tape = ft.Tape.from_arrays(ops, args, [float(e) for e in exps], outputs, n_in)
    nt = native(tape, opt=opt, cache_entries=False)
    for x in [(1.1, 0.7), (-0.9999, 1.0001), (1.5, -0.5), (-2.5, 3.0), (0.0, -1.0),
              (-0.0, 2.0), (math.inf, 0.5), (-math.inf, -0.5), (math.nan, 1.0), (1e-310, 1.0),
              (1e200, 1e-200), (-1.0, 1.0)]:
        assert_same(tape, nt, np.array(x))
