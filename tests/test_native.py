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
from fasttape.native import NativeTape, cache, emit, native
from fasttape.native import tape as native_tape
from fasttape.ops import OPS
from tests.test_random_graphs import EXPONENTS, FLOATS, random_tapes

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
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="loops must be True or False"):
            native(tape, loops=bad)
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
    assert not native(a, opt=0).from_cache  # another level: another entry
    # Options that leave the code as it is share its entry: one instruction is one piece
    # whatever the piece size.
    assert native(a, piece_size=1).from_cache
    assert native(a).from_cache
    # The cut is in the key: the same tape as loops or as straight-line code.
    c = periodic_tape(period=2, reps=40)
    assert native(c).n_loops == 1
    assert not native(c, loops=False).from_cache
    assert native(c).from_cache


# ---------------------------------------------------------------------- levels
def _mixed_tape(n_sin: int, n_mul: int) -> ft.Tape:
    """``n_sin`` chained sines, then ``n_mul`` chained products: two kinds of pieces."""
    ops = [OPS_BY["sin"]] * n_sin + [OPS_BY["mul"]] * n_mul
    args = [0] + [1 + i for i in range(n_sin - 1)]
    for i in range(n_mul):
        args += [n_sin + i, 0]  # slot of the previous result, times the input
    return ft.Tape.from_arrays(ops=ops, args=args, consts=[], n_inputs=1,
                               outputs=[n_sin + n_mul])


def test_piece_levels_follow_the_tape_size():
    piece_levels, loop = native_tape.piece_levels, native_tape.LOOP_LEVEL
    tape = _mixed_tape(300, 700)
    assert piece_levels(tape.ops, 100) == (1,) * 10
    # Above opt_level's size limit (straight-line instructions only), every straight-line
    # piece is at level 0; a loop piece always at LOOP_LEVEL; an empty tape has no piece.
    big = np.full(40_001, OPS_BY["mul"])
    assert piece_levels(big[:20_000], 2000) == (1,) * 10
    assert set(piece_levels(big[:20_001], 2000)) == {0} and len(piece_levels(big, 2000)) == 21
    pieces = (emit.Piece(0, 20_001), emit.Piece(20_001, 40_001, 4))
    assert piece_levels(big, 2000, pieces) == (0, loop)
    pieces = (emit.Piece(0, 10), emit.Piece(10, 40_000, 4), emit.Piece(40_000, 40_001))
    assert piece_levels(big, 2000, pieces) == (1, loop, 1)
    assert piece_levels(np.zeros(0, np.int64)) == ()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="piece_size must be a positive int"):
            piece_levels(tape.ops, bad)


def test_native_compiles_each_piece_at_its_level(monkeypatch):
    from fasttape.native import machine

    tape = _mixed_tape(30, 70)
    levels = (0, 1, 0, 2, 1, 0, 0, 1, 3, 0)
    seen = []
    compile_module = machine.compile_module

    def spy(text, level, with_library=True):
        if with_library:
            seen.append((text.split('define void @"ft.')[1].split('"')[0], level))
        return compile_module(text, level, with_library)

    with monkeypatch.context() as m:
        m.setattr(native_tape, "piece_levels", lambda *a, **k: levels)
        m.setattr(machine, "compile_module", spy)
        nt = native(tape, piece_size=10, loops=False, cache_entries=False, processes=1)
    assert nt.levels == levels
    tag = seen[0][0].split(".")[1]
    assert sorted(seen) == sorted([(f"{kind}.{tag}.{k}", v) for kind in ("fwd", "rev")
                                   for k, v in enumerate(levels)])
    assert_same(tape, nt, np.array([0.7]))
    # An explicit opt applies to every piece, and is another cache entry than the default.
    zero = native(tape, piece_size=10, loops=False, opt=0)
    assert zero.levels == (0,) * 10 and not zero.from_cache
    assert not native(tape, piece_size=10, loops=False).from_cache
    assert native(tape, piece_size=10, loops=False).from_cache
    assert native(tape, piece_size=10, loops=False).levels == (1,) * 10
    assert_same(tape, zero, np.array([-0.3]))
    # With loops, the 70 products are one loop piece, at LOOP_LEVEL; the 30 sines (too few
    # for a loop) stay straight-line pieces.
    looped = native(tape, piece_size=10, cache_entries=False)
    assert looped.pieces[-1] == emit.Piece(30, 100, 1)
    assert looped.levels == (1, 1, 1, native_tape.LOOP_LEVEL)
    assert_same(tape, looped, np.array([0.7]))


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
    with pytest.raises(TypeError, match="loops must be True or False"):
        _small().native(tier_after=1, loops="no")


def test_tiering_passes_the_options_on():
    # The background compile gets native()'s options: loops=False, straight-line code only.
    tape = periodic_tape(period=2, reps=40)
    hot = tape.native(tier_after=0, loops=False, check=False)
    assert hot.wait(60) and hot.native.n_loops == 0 and hot.native.n_pieces == 1
    looped = tape.native(tier_after=0, check=False)
    assert looped.wait(60) and looped.native.n_loops == 1


@pytest.mark.parametrize("opt", [0, 1, 2])
def test_powi_written_out_is_bitwise_the_interpreters(opt):
    # The pieces write a constant powi (and its partial) out as its loop's multiplications up
    # to |n| = POWI_UNROLL_MAX, and call the library above: both bitwise the interpreter's.
    # irtext.powi restates the loop of kernels/scalar.powi (the library gets it by translation),
    # so every exponent it writes is checked, and the first ones past it.
    from fasttape.native.irtext import POWI_UNROLL_MAX

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


# ---------------------------------------------------------------------- loops
# Periodic runs of a tape compile to loops (fasttape/native/loops.py): one body of
# ``period`` instructions whose argument slots move by a fixed step at each repetition.  The
# tapes below are built to hit every way a loop's adjoints can meet: arguments shared by
# every repetition (step 0: sums), the previous repetition's results (a recurrence), steps
# that differ from the period (an argument that is another instruction's result at one
# repetition only), results read in the same repetition, moving inputs and parameters,
# constants, outputs inside the loop, and instructions no output reaches.

_ARG_KINDS = ["input", "input_moving", "param", "prefix", "own", "previous", "odd", "const"]


@st.composite
def periodic_tapes(draw, max_period: int = 4):
    """``(tape, x, p)``: a random prefix, one periodic run (long enough to be a loop), a
    random suffix; ``x`` and ``p`` a point."""
    period = draw(st.integers(1, max_period))
    reps = -(-32 // period) + draw(st.integers(0, 6))
    n_in = reps + draw(st.integers(1, 4))
    n_par = draw(st.integers(0, 2))
    n_lead = n_in + n_par
    consts = EXPONENTS + draw(st.lists(FLOATS, min_size=1, max_size=3))
    n_pre = n_lead + len(consts)
    ops: list[int] = []
    args: list[int] = []

    def const_arg(spec):
        if spec.name == "powi":
            return n_lead + draw(st.integers(0, len(EXPONENTS) - 1))
        return draw(st.integers(n_lead, n_pre - 1))

    n_prefix = draw(st.integers(period, period + 4))
    for i in range(n_prefix):
        spec = draw(st.sampled_from(OPS))
        for j in range(spec.arity):
            if spec.param == "const" and j >= spec.ndiff:
                args.append(const_arg(spec))
            else:
                args.append(draw(st.integers(0, n_pre + i - 1)))
        ops.append(spec.code)
    s0 = n_pre + n_prefix
    body = []  # per body instruction: (code, [(base, step)])
    for q in range(period):
        spec = draw(st.sampled_from(OPS))
        operands = []
        for j in range(spec.arity):
            if spec.param == "const" and j >= spec.ndiff:
                operands.append((const_arg(spec), 0))
                continue
            kind = draw(st.sampled_from(_ARG_KINDS))
            if kind == "input":
                operands.append((draw(st.integers(0, n_in - 1)), 0))
            elif kind == "input_moving":
                step = draw(st.sampled_from([1, -1]))
                base = draw(st.integers(0, n_in - reps)) if step > 0 else \
                    draw(st.integers(reps - 1, n_in - 1))
                operands.append((base, step))
            elif kind == "param" and n_par:
                operands.append((draw(st.integers(n_in, n_lead - 1)), 0))
            elif kind == "prefix":
                operands.append((draw(st.integers(n_pre, s0 - 1)), 0))
            elif kind == "own" and q:
                operands.append((s0 + draw(st.integers(0, q - 1)), period))
            elif kind == "previous":
                operands.append((s0 + draw(st.integers(0, period - 1)) - period, period))
            elif kind == "odd":
                step = draw(st.integers(0, period))
                operands.append((draw(st.integers(n_pre, s0 + q - 1)), step))
            else:
                operands.append((draw(st.integers(n_lead, n_pre - 1)), 0))
        body.append((spec.code, operands))
    for r in range(reps):
        for code, operands in body:
            ops.append(code)
            args += [b + r * d for b, d in operands]
    # A consumer: a sum of one body instruction's results over all repetitions or a random
    # subset (so that the loop's adjoints are written by a later piece for some repetitions
    # or all of them).
    q_sum = draw(st.integers(0, period - 1))
    picked = draw(st.sampled_from(["none", "all", "some"]))
    for r in range(reps):
        if picked == "all" or (picked == "some" and draw(st.booleans())):
            ops.append(OPS_BY["add"])
            args += [n_pre + len(ops) - 2, s0 + r * period + q_sum]
    if draw(st.booleans()):  # every input's adjoint written before the loop's sweep
        for i in range(n_in):
            ops.append(OPS_BY["add"])
            args += [n_pre + len(ops) - 2, i]
    for _ in range(draw(st.integers(0, 3))):
        slot = n_pre + len(ops)
        ops.append(OPS_BY["add"])
        args += [slot - 1, draw(st.integers(0, slot - 1))]
    n_slots = n_pre + len(ops)
    outputs = [n_slots - 1, *draw(st.lists(st.integers(0, n_slots - 1), max_size=3))]
    # Every instruction reaches an output: the native tier drops dead code before it looks
    # for loops (emit.without_dead_code), so a dead run would not be one.  What nothing
    # reads is added to the first output.
    reached = set(outputs)
    at = len(args)
    for i in range(len(ops) - 1, -1, -1):
        at -= OPS[ops[i]].arity
        if n_pre + i in reached:
            reached.update(args[at: at + OPS[ops[i]].arity])
    for i in range(len(ops)):
        if n_pre + i not in reached:
            ops.append(OPS_BY["add"])
            args += [n_pre + len(ops) - 2, n_pre + i]
    outputs[0] = n_pre + len(ops) - 1
    x = np.array(draw(st.lists(FLOATS, min_size=n_in, max_size=n_in)))
    p = np.array(draw(st.lists(FLOATS, min_size=n_par, max_size=n_par))) if n_par else None
    tape = ft.Tape.from_arrays(ops, args, consts, outputs, n_in, n_params=n_par)
    return tape, x, p


def periodic_tape(period: int, reps: int) -> ft.Tape:
    """``period`` instructions repeated ``reps`` times over moving inputs, each repetition's
    first one reading the previous repetition's last (the input before the first), so that
    every instruction reaches the output."""
    n_in = reps + 1
    ops, args = [], []
    for r in range(reps):
        ops += [OPS_BY["mul"], OPS_BY["sin"]][:period] + [OPS_BY["add"]] * (period - 2)
        slot = n_in + len(ops) - period
        body = [[r, slot - 1], [slot]] + [[slot + 1, slot]] * (period - 2)
        for a in body[:period]:
            args += a
    return ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)


@settings(max_examples=80, deadline=None)
@given(periodic_tapes(), st.sampled_from([0, 1, 2]))
def test_loops_are_bitwise_the_interpreter(case, opt):
    tape, x, p = case
    nt = native(tape, opt=opt, cache_entries=False)
    assert nt.n_loops >= 1, nt.pieces
    assert_same(tape, nt, x, p)
    # Twice: the work array is not cleared between calls, so stale adjoints would show.
    assert_same(tape, nt, x[::-1].copy(), p)
    # A batch runs the same entry points row by row (in parallel where it pays).
    xs = np.stack([x, x[::-1], np.roll(x, 1)])
    v0, g0 = tape.value_and_grad(xs, p, output=0)
    v1, g1 = nt.value_and_grad(xs, p, output=0)
    assert np.array_equal(bits(v0), bits(v1)) and np.array_equal(bits(g0), bits(g1))


@settings(max_examples=20, deadline=None)
@given(periodic_tapes(), st.sampled_from([1, 5]))
def test_loops_between_small_straight_pieces(case, piece_size):
    tape, x, p = case
    nt = native(tape, piece_size=piece_size, opt=0, cache_entries=False)
    assert_same(tape, nt, x, p)
    assert_same(tape, native(tape, loops=False, opt=0, cache_entries=False), x, p)


@pytest.mark.parametrize("moving_first", [True, False])
@pytest.mark.parametrize("inputs_summed", [True, False])
def test_a_moving_and_a_shared_argument_meet_in_one_repetition(moving_first, inputs_summed):
    # mul(x[r], x[3]): at r = 3 both arguments are x[3], whose adjoint then gets both
    # contributions in the interpreter's order.  With every input summed after the loop,
    # each x[r]'s adjoint is written before the loop's sweep, so a register holding it
    # across the repetition would lose the other argument's update (a mutation that
    # allowed that passed every hypothesis example).
    reps, n_in = 40, 41
    ops, args = [], []
    for r in range(reps):
        ops.append(OPS_BY["mul"])
        args += [r, 3] if moving_first else [3, r]
    ops.append(OPS_BY["add"])
    args += [n_in, n_in + 1]
    for r in range(2, reps):
        ops.append(OPS_BY["add"])
        args += [n_in + len(ops) - 2, n_in + r]
    if inputs_summed:
        for i in range(n_in):
            ops.append(OPS_BY["add"])
            args += [n_in + len(ops) - 2, i]
    tape = ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)
    nt = native(tape, cache_entries=False)
    assert nt.pieces[0].period == 1 and nt.pieces[0].hi == reps
    assert_same(tape, nt, np.linspace(0.5, 1.5, n_in))


@pytest.mark.parametrize("step", [1, -1])
def test_a_run_whose_argument_crosses_from_the_point_to_the_work_array(step):
    # No constants, so slot n_in follows slot n_in - 1: an argument moving by +1 from the
    # inputs into the instructions' slots (or by -1 back from them into the inputs) is one
    # affine sequence in the tape but two arrays in native code (x and w); a loop must end
    # where the sequence changes arrays (it would read x past its end otherwise).
    n_in = 12
    ops, args = [], []
    for i in range(50):  # a prefix, so that the downward run starts inside w
        ops.append(OPS_BY["neg"])
        args.append(i % n_in)
    for r in range(80):  # sin(slot r), or sin(slot n_in + 49 - r) down to slot 0
        ops.append(OPS_BY["sin"])
        args.append(r if step > 0 else max(n_in + 49 - r, 0))
    ops.append(OPS_BY["add"])
    args += [n_in + 50, n_in + 129]
    tape = ft.Tape.from_arrays(ops, args, [], list(range(n_in, n_in + 131)), n_in)
    nt = native(tape, cache_entries=False)
    assert nt.n_loops
    for piece in nt.pieces:
        if piece.period:  # instruction i < 130 has one argument, args[i]
            assert (args[piece.lo] < n_in) == (args[piece.hi - 1] < n_in), nt.pieces
    assert_same(tape, nt, np.linspace(0.1, 1.2, n_in))


@pytest.mark.parametrize("shared", ["first", "none", "middle"])
def test_a_recurrence_carried_in_a_register(shared):
    # y[r] = sin(y[r - 1]) * s: the adjoint of y[r - 1] (the argument) becomes the adjoint of
    # the next repetition's result, carried in a register from one repetition to the next
    # when nothing else in the loop can name those slots.  With s = y[-1] (the slot before
    # the loop, which the recurrence's last update writes after the loop) or s = y[20] (a
    # slot inside the recurrence), another argument meets it and the loop must keep those
    # adjoints in the work array (a mutation that carried them anyway passed the hypothesis
    # examples).
    n_in, reps = 2, 60
    ops, args = [OPS_BY["sin"]], [0]
    y0 = n_in  # the slot of y[-1]
    for r in range(reps):
        ops += [OPS_BY["sin"], OPS_BY["mul"]]
        prev = y0 + 2 * r  # y[r - 1]
        s = {"first": y0, "none": 1, "middle": y0 + 2 * 20}[shared]
        if shared == "middle" and r <= 20:
            s = 1  # y[20] does not exist yet
        args += [prev, prev + 1, s]
    tape = ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)
    nt = native(tape, cache_entries=False)
    assert any(p.period == 2 for p in nt.pieces), nt.pieces
    for x in ([0.3, 0.9], [1.1, -0.7], [0.0, 2.0]):
        assert_same(tape, nt, np.array(x))


def test_points_of_every_kind_take_the_same_path_to_the_same_bits():
    # value_and_grad hands a C-contiguous float64 vector to the machine code as it is;
    # every other point is converted first, to the same bits.
    tape = ft.compile(ft.trace(lambda v: ft.sin(v[0]) * v[1] + v[2] ** 2, 3))
    nt = native(tape, cache_entries=False)
    base = np.array([0.5, -1.25, 2.0])
    v0, g0 = tape.value_and_grad(base)
    strided = np.zeros(6)
    strided[::2] = base
    for x in (base, strided[::2], base.astype(np.float32), base.tolist(),
              np.asfortranarray(base), base.reshape(1, 3)[0]):
        v1, g1 = nt.value_and_grad(x)
        assert np.array_equal(bits(v0), bits(v1)) and np.array_equal(bits(g0), bits(g1)), x
    with pytest.raises(ValueError, match="3 inputs"):
        nt.value_and_grad(np.zeros(4))
    out = np.empty(3)
    assert nt.value_and_grad(base, out=out)[1] is out


def test_dead_code_is_not_compiled():
    # %4 = sin(x0) reaches no output: the forward piece computes neither it nor %5 = exp(%4)
    # (whose only reader is dead too); the output %6 = x0 * x1 and its gradient are the
    # interpreter's.
    from fasttape.native import machine

    tape = ft.Tape.from_arrays([OPS_BY["sin"], OPS_BY["exp"], OPS_BY["mul"]],
                               [0, 2, 0, 1], [], [4], 2)
    a = tape.to_arrays()
    pieces = emit.cut(a["ops"], a["args"], 2, 2, 100)
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], 2, 2, pieces, "dead")
    assert lay.needed.tolist() == [False, False, True]
    forward = next(iter(emit.piece_modules(lay, machine.header(), (0,))))[0]
    assert "ft.f.mul" in forward and "ft.f.sin" not in forward and "ft.f.exp" not in forward
    assert_same(tape, native(tape, cache_entries=False), np.array([0.3, -2.0]))


# ---------------------------------------------------------------------- stored partials
# sin and cos compute their partial with the value, in one sincos call, and store it for the
# reverse sweep (fasttape/native/translate.py: stored_partials; emit.py's work array layout).


def test_the_paired_call_is_bitwise_the_separate_calls():
    # glibc's sin, cos and sincos share one implementation: the fused functions rely on it,
    # so it is checked here on this machine's libm, over every range reduction path.
    import ctypes
    import ctypes.util

    from fasttape.native.translate import libm_symbols

    addr = libm_symbols()
    one = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)
    sin, cos = one(addr["ft.libm.sin"]), one(addr["ft.libm.cos"])
    pair = ctypes.CFUNCTYPE(None, ctypes.c_double, ctypes.POINTER(ctypes.c_double),
                            ctypes.POINTER(ctypes.c_double))(addr["ft.libm.sincos"])
    rng = np.random.default_rng(7)
    xs = [*SPECIAL, 5e-324, -1e-310, 1e22, -1e22, 2.0 ** 1000, 1e308, math.pi / 2,
          math.pi, 3 * math.pi / 2, 1e5 * math.pi, *rng.uniform(-10, 10, 300),
          *(np.sign(rng.uniform(-1, 1, 300)) * 10.0 ** rng.uniform(-320, 308, 300))]
    s, c = ctypes.c_double(), ctypes.c_double()
    for x in xs:
        pair(float(x), ctypes.byref(s), ctypes.byref(c))
        assert np.array_equal(bits([s.value, c.value]), bits([sin(x), cos(x)])), x


def test_sin_and_cos_store_their_partial_in_the_forward_sweep():
    from fasttape.native import machine
    from fasttape.native.translate import stored_partials

    assert {op.name for op in OPS if stored_partials(op)} == {"sin", "cos"}
    # %5 = sin(x0), %6 = cos(x1), %7 = %5 * %6 (the output), %8 = sin(x2) (dead)
    tape = ft.Tape.from_arrays([OPS_BY["sin"], OPS_BY["cos"], OPS_BY["mul"], OPS_BY["sin"]],
                               [0, 1, 3, 4, 2], [], [5], 3)
    a = tape.to_arrays()
    pieces = emit.cut(a["ops"], a["args"], 3, 3, 100)
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], 3, 3, pieces, "sp")
    assert lay.part_at.tolist() == [2 * 7 + 1, 2 * 7 + 3, -1, -1]
    assert emit.work_size(lay) == 2 * 7 + 1 + 4 + 1  # and the check (emit.driver_module)
    texts = {}
    for text, _ in emit.piece_modules(lay, machine.header(), (0,)):
        texts[text.split('define void @"ft.')[1].split(".")[0]] = text
    assert "ft.fp.sin" in texts["fwd"] and "ft.fp.cos" in texts["fwd"]
    assert "ft.d0.sin" not in texts["rev"] and "ft.d0.cos" not in texts["rev"]
    assert set(texts) == {"fwd", "rev"}  # value runs fwd (Layout.separate_value)
    nt = native(tape, cache_entries=False)
    # [1e-310, 1e-310, ...]: x1's adjoint 0.0 + sin(x0) * -sin(x1) underflows to -0 in the
    # product, +0 after the sum (an FMA of the two would keep -0).
    for x in [np.array([0.3, -2.0, 1.0]), np.array([1e-310, 1e-310, 1.0]),
              *(np.array(v) for v in
                                          np.random.default_rng(3).choice(SPECIAL, (40, 3)))]:
        assert_same(tape, nt, x)


@pytest.mark.parametrize("opt", [0, 1])
def test_sin_and_cos_in_a_loop_store_their_partial(opt):
    # A loop whose body is sin(x_r), cos(x_r) * previous and a sum: the stored partials of
    # repetition r at part_at[lo + q] + 2 r.
    n_in, reps = 40, 38
    ops, args = [], []
    for r in range(reps):
        s0 = n_in + len(ops)
        ops += [OPS_BY["sin"], OPS_BY["cos"], OPS_BY["mul"], OPS_BY["add"]]
        args += [r, r + 1, s0, s0 + 1, s0 + 2, s0 - 1 if r else 0]
    tape = ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)
    nt = native(tape, opt=opt, cache_entries=False)
    assert nt.n_loops == 1
    a = tape.to_arrays()
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], n_in, n_in, nt.pieces,
                      "lp")
    k = next(k for k, piece in enumerate(nt.pieces) if piece.period)
    assert lay.separate_value(k) and lay.val_name(k) != lay.fwd_name(k)
    rng = np.random.default_rng(5)
    for x in [rng.uniform(-3, 3, n_in), rng.choice(SPECIAL, n_in), np.zeros(n_in)]:
        assert_same(tape, nt, x)


# ---------------------------------------------------------------------- the NaN check
# The reverse pieces run without the zero rules; where a gradient entry comes out NaN (as a
# 0 * inf makes it), every route evaluates that point on the interpreter instead
# (fasttape/native/irtext.py: accumulate).

#: %4 = sqrt(x0) (partial inf at 0), %5 = %4 * x1, %6 = %5 + x2 * p0: at x0 = x1 = 0 the
#: sweep meets 0 * inf, where the interpreter's rule moves nothing.  (point, check fails)
_CHECKED = [((0.0, 0.0, 1.0), True), ((4.0, 0.0, 1.0), False), ((0.0, 2.0, 1.0), False),
            ((math.inf, 0.0, 1.0), False), ((math.nan, 1.0, 1.0), True),
            ((2.0, 3.0, 1.0), False), ((0.0, -0.0, -2.0), True)]


def _checked_tape():
    return ft.Tape.from_arrays([OPS_BY["sqrt"], OPS_BY["mul"], OPS_BY["mul"], OPS_BY["add"]],
                               [0, 4, 1, 2, 3, 5, 6], [], [7], 3, n_params=1)


def test_a_failed_check_falls_back_to_the_interpreter():
    from fasttape.native import machine

    tape = _checked_tape()
    p = np.array([1.5])
    # piece_size 1: one piece per instruction, so the check adds up over functions.
    nt = native(tape, piece_size=1, cache_entries=False)
    fn, arrays = nt.numba_kernel(p=p)
    a = tape.to_arrays()
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], 3, 4, nt.pieces, "c")
    code = nt.machine_code
    assert code.check_at == lay.check_at and code.n_work == emit.work_size(lay)
    w = arrays[2]  # numba_kernel's arrays: (entry point, meta, work array, ...)
    assert w.shape == (code.n_work,)
    cf = nt.cfunc(p=p)
    cfr = nt.cfunc(p=p, reentrant=True)
    grad = np.empty(3)
    for x, failed in _CHECKED:
        x = np.array(x)
        assert_same(tape, nt, x, p)
        v0, g0 = tape.value_and_grad(x, p)
        ref = bits([v0, *g0])
        v = fn(*arrays, x, grad)
        assert np.array_equal(bits([v, *grad]), ref), x
        assert np.isnan(w[code.check_at]) == failed, (x, w[code.check_at])
        # a strided x and grad (copied to and from consecutive buffers)
        xs, gs = np.repeat(x, 2)[::2], np.empty(6)[::2]
        assert np.array_equal(bits([fn(*arrays, xs, gs), *gs]), ref), x
        for c in (cf, cfr):
            f, g = np.empty(1), np.empty(3)
            assert c.value_and_grad_ctypes(x.ctypes.data, f.ctypes.data, g.ctypes.data) == 0
            assert np.array_equal(bits([f[0], *g]), ref), x
    # Batches: failing rows first, last, in a run and alone, over one and two threads.
    rows = np.array([x for x, _ in _CHECKED] * 3)
    vals0 = [tape.value_and_grad(r, p) for r in rows]
    for threads in (1, 2):
        vals, g = nt.value_and_grad(rows, p, threads=threads)
        assert np.array_equal(bits(vals), bits([v for v, _ in vals0]))
        assert np.array_equal(bits(g), bits(np.array([g for _, g in vals0])))
    # No rules (selects) in any piece, and no second reverse sweep.
    for level in (0, 1):
        kinds = []
        for text, _ in emit.piece_modules(lay, machine.header(), (level,) * lay.n_pieces):
            kinds.append(text.split('define void @"ft.')[1].split(".")[0])
            assert "select" not in text
        assert sorted(set(kinds)) == ["fwd", "rev"]


def test_a_nan_that_reaches_no_gradient_entry_passes_the_check():
    # %2 = stop_gradient(x0), %3 = sqrt(%2), %4 = %3 * x1: at x0 = x1 = 0 the sweep's
    # adjoint of %2 is 0 * inf = NaN, but stop_gradient moves it nowhere, so the gradient is
    # the interpreter's (rules or not) and the machine code's result stands: the check looks
    # at the gradient (irtext.accumulate), not at every product.
    tape = ft.Tape.from_arrays(
        [OPS_BY["stop_gradient"], OPS_BY["sqrt"], OPS_BY["mul"]], [0, 2, 3, 1], [], [4], 2)
    for piece_size in (1, 100):
        nt = native(tape, piece_size=piece_size, cache_entries=False)
        fn, arrays = nt.numba_kernel()
        for x in [(0.0, 0.0), (4.0, 0.0), (0.0, 2.0), (math.nan, 1.0)]:
            x = np.array(x)
            assert_same(tape, nt, x)
            grad = np.empty(2)
            v = fn(*arrays, x, grad)
            v0, g0 = tape.value_and_grad(x)
            assert np.array_equal(bits([v, *grad]), bits([v0, *g0]))
            # NaN only where a gradient entry is: x1's, sqrt(NaN) at x0 = NaN
            assert np.isnan(arrays[2][nt.machine_code.check_at]) == math.isnan(x[0])


def test_a_failed_check_in_a_loop_falls_back_to_the_interpreter():
    # Repetition r: sqrt(x_r) * x_{r+1}, summed: a zero x_{r+1} after a zero x_r is 0 * inf.
    n_in, reps = 40, 38
    ops, args = [], []
    for r in range(reps):
        s0 = n_in + len(ops)
        ops += [OPS_BY["sqrt"], OPS_BY["mul"], OPS_BY["add"]]
        args += [r, s0, r + 1, s0 + 1, s0 - 1 if r else 0]
    tape = ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)
    nt = native(tape, cache_entries=False)
    assert nt.n_loops == 1
    x = np.random.default_rng(2).uniform(0.5, 2.0, n_in)
    fn, arrays = nt.numba_kernel()
    assert_same(tape, nt, x)
    x[17:19] = 0.0
    grad = np.empty(n_in)
    v0, g0 = tape.value_and_grad(x)
    assert np.array_equal(bits([fn(*arrays, x, grad), *grad]), bits([v0, *g0]))
    assert np.isnan(arrays[2][nt.machine_code.check_at])
    # Strided views of x and grad, a negative stride too (regression: the machine code read
    # and wrote consecutive doubles from their first entry's address).
    for xs in (np.repeat(x, 2)[::2], x[::-1].copy()[::-1]):
        gs = np.zeros(2 * n_in)
        assert np.array_equal(bits([fn(*arrays, xs, gs[::-2]), *gs[::-2]]), bits([v0, *g0]))
        assert not gs[0::2].any()  # nothing written between the entries
    assert_same(tape, nt, x)
    x[17:19] = [math.inf, 0.0]
    assert_same(tape, nt, x)


def test_the_sweeps_negative_zeros_become_the_interpreters_positive_ones():
    # %3 = sin(x0), %4 = %3 * x1, %5 = -x2, %6 = %4 + %5: at x1 = -0 the sweep's
    # adjoint of %3 is 1 * -0 = -0 and x0's -0 * cos(x0) = -0, and -(+0) for x2 at a zero
    # seed; the interpreter's rules leave +0 (no adjoint of theirs is ever -0).
    tape = ft.Tape.from_arrays([OPS_BY["sin"], OPS_BY["mul"], OPS_BY["neg"], OPS_BY["add"]],
                               [0, 3, 1, 2, 4, 5], [], [6, 3], 3)
    for piece_size in (1, 100):
        nt = native(tape, piece_size=piece_size, cache_entries=False)
        for x in [(0.5, -0.0, 1.0), (-0.0, -0.0, -0.0), (0.5, 2.0, 0.0)]:
            assert_same(tape, nt, np.array(x))
        g = nt.value_and_grad(np.array([0.5, -0.0, 1.0]), output=0)[1]
        assert np.signbit(g).tolist() == [False, False, True]  # +0, sin(0.5), -1
        g = nt.value_and_grad(np.array([0.5, -0.0, 1.0]), output=1)[1]
        assert np.signbit(g).tolist() == [False, False, False]


# ---------------------------------------------------------------------- shared values
# An instruction that repeats an earlier one (same op, arguments of the same values) reads
# that one's value instead of computing it again (emit.Layout.value_at); its adjoint still
# moves along its own edges.


def _rows_tape(rows, outputs, n_inputs):
    """A tape from ``(op name, argument slots)`` rows, without constants."""
    ops = [OPS_BY[name] for name, _ in rows]
    args = [a for _, row in rows for a in row]
    return ft.Tape.from_arrays(ops, args, [], outputs, n_inputs)


def _repeating_tape():
    x0, x1, x2 = 0, 1, 2
    rows = [
        ("sin", [x0]),  # 3
        ("sin", [x0]),  # 4: repeats 3 (stored partials: sincos)
        ("mul", [3, 4]),  # 5
        ("mul", [4, 3]),  # 6: repeats 5 (its arguments' values are 5's)
        ("tanh", [x1]),  # 7: reaches the output through lt only (no adjoint)
        ("lt", [7, x2]),  # 8
        ("tanh", [x1]),  # 9: repeats 7, and has an adjoint
        ("cos", [x2]),  # 10: no adjoint (stop_gradient), so partials stored for 12
        ("stop_gradient", [10]),  # 11
        ("cos", [x2]),  # 12: repeats 10, reads the partial stored there
        ("mul", [4, 3]),  # 13: repeats 5 too
        ("add", [5, 6]),  # 14
        ("mul", [14, 8]),  # 15
        ("add", [15, 9]),  # 16
        ("add", [16, 11]),  # 17
        ("add", [17, 12]),  # 18
        ("add", [18, 13]),  # 19
    ]
    return _rows_tape(rows, [19, 4, 12], 3)


def test_repeated_instructions_share_one_value():
    tape = _repeating_tape()
    a = tape.to_arrays()
    pieces = emit.cut(a["ops"], a["args"], 3, 3, 100)
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], 3, 3, pieces, "r")
    shared = {s: int(v) for s, v in enumerate(lay.value_at) if v != s}
    assert shared == {4: 3, 6: 5, 9: 7, 12: 10, 13: 5}
    assert lay.part_at[12 - 3] == lay.part_at[10 - 3] >= 0  # stored by 10, read by 12
    assert int(lay.computed.sum()) == int(lay.needed.sum()) - 5
    text = "".join(t for t, _ in emit.piece_modules(lay, "", (0,) * lay.n_pieces))
    assert text.count("@\"ft.fp.sin\"(") == 1 and text.count("@\"ft.fp.cos\"(") == 1
    rng = np.random.default_rng(4)
    for piece_size in (1, 3, 100):  # the repeats in the first one's piece, or in later ones
        nt = native(tape, piece_size=piece_size, cache_entries=False)
        for x in [rng.uniform(-2, 2, 3), rng.choice(SPECIAL, 3), np.zeros(3), [0.5, 0.7, 0.7]]:
            assert_same(tape, nt, np.array(x, dtype=float))


def test_a_value_a_loop_reads_is_not_shared():
    # %40 = tanh(x0), %41 = tanh(x0); then a loop whose first repetition reads %41 (the slot
    # before the loop, as every repetition reads the one before it): %41 keeps its value.
    n_in, reps = 40, 30
    ops, args = [OPS_BY["tanh"], OPS_BY["tanh"]], [0, 0]
    for r in range(reps):
        s0 = n_in + len(ops)
        ops += [OPS_BY["sqrt"], OPS_BY["mul"], OPS_BY["add"]]
        args += [r + 1, s0, r + 2, s0 + 1, s0 - 1]
    ops.append(OPS_BY["add"])  # and %40 to the output, so that it is computed
    args += [n_in + len(ops) - 2, n_in]
    tape = ft.Tape.from_arrays(ops, args, [], [n_in + len(ops) - 1], n_in)
    nt = native(tape, cache_entries=False)
    assert nt.n_loops == 1
    a = tape.to_arrays()
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], n_in, n_in, nt.pieces,
                      "q")
    assert lay.value_at[n_in + 1] == n_in + 1
    x = np.random.default_rng(3).uniform(0.5, 2.0, n_in)
    assert_same(tape, nt, x)


def test_dead_code_is_dropped_before_the_layout():
    # %2 = sin(x0) (dead), %3 = x0 * x1, %4 = exp(%2) (dead), %5 = cos(%3); outputs %5, %3
    ops = [OPS_BY["sin"], OPS_BY["mul"], OPS_BY["exp"], OPS_BY["cos"]]
    tape = ft.Tape.from_arrays(ops, [0, 0, 1, 2, 3], [], [5, 3], 2)
    a = emit.without_dead_code(tape.to_arrays())
    assert a["ops"].tolist() == [OPS_BY["mul"], OPS_BY["cos"]]
    assert a["args"].tolist() == [0, 1, 2] and a["outputs"].tolist() == [3, 2]
    assert a["args"].dtype == tape.to_arrays()["args"].dtype
    live = ft.Tape.from_arrays(a["ops"], a["args"], a["consts"], a["outputs"], 2)
    kept = live.to_arrays()
    assert emit.without_dead_code(kept) is kept  # nothing to drop: the arrays themselves
    nt = native(tape, cache_entries=False)
    assert nt.pieces == (emit.Piece(0, 2),)
    for x in [(0.3, -1.2), (0.0, math.inf), (math.nan, 1.0)]:
        assert_same(tape, nt, np.array(x))


def _paired_tape():
    x0, x1 = 0, 1
    rows = [
        ("cos", [x0]),  # 2: sincos(x0)
        ("sin", [x0]),  # 3: reads 2's results (sin(x0) left in 2's t[1])
        ("add", [x0, x1]),  # 4
        ("sin", [4]),  # 5: sincos(%4), no adjoint (stop_gradient): still keeps both
        ("stop_gradient", [5]),  # 6
        ("cos", [4]),  # 7: reads 5's results
        ("cos", [x1]),  # 8: sincos(x1)
        ("mul", [2, 3]),  # 9
        ("add", [9, 6]),  # 10
        ("add", [10, 7]),  # 11
        ("mul", [11, 8]),  # 12
        ("sin", [x1]),  # 13: reads 8's results, from a later piece at piece_size 4
        ("add", [12, 13]),  # 14
    ]
    return _rows_tape(rows, [14, 3, 7], 2)


def test_sin_and_cos_of_one_argument_share_one_sincos():
    from fasttape.native import machine

    tape = _paired_tape()
    a = tape.to_arrays()
    pieces = emit.cut(a["ops"], a["args"], 2, 2, 100)
    lay = emit.Layout(a["ops"], a["args"], a["consts"], a["outputs"], 2, 2, pieces, "s")
    assert {i + 2: int(j) + 2 for i, j in enumerate(lay.pair_from) if j >= 0} == \
        {3: 2, 7: 5, 13: 8}
    assert (lay.part_at[[0, 1, 3, 5, 6, 11]] >= 0).all()  # sources and readers keep theirs
    text = "".join(t for t, _ in emit.piece_modules(lay, machine.header(), (0,)))
    assert text.count('@"ft.fp.') == 3 and text.count('@"ft.fg.') == 3
    rng = np.random.default_rng(6)
    for piece_size in (1, 4, 100):
        nt = native(tape, piece_size=piece_size, cache_entries=False)
        for x in [rng.uniform(-4, 4, 2), rng.choice(SPECIAL, 2), np.zeros(2), [-0.0, 1e300]]:
            assert_same(tape, nt, np.array(x, dtype=float))
