"""Tape construction and validation: from_arrays, immutability, x/out checks, pickling, sizes."""

from __future__ import annotations

import math
import pickle
import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fasttape as ft
from fasttape.bench.families import random_local
from fasttape.ops import N_OPS, OP_BY_NAME, OPS

C = {op.name: op.code for op in OPS}


def same_bits(a, b) -> bool:
    """Bitwise equality of two float64 arrays (or scalars), any NaN equal to any NaN.

    NaN sign and payload bits are not part of the contract: LLVM may compile ``g * -1.0`` as a
    negation, which flips a NaN's sign bit.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = ~np.isnan(a)
    return np.array_equal(a[ok].view(np.uint64), b[ok].view(np.uint64))


def base_arrays() -> dict:
    """A small valid tape: 2 inputs (slots 0, 1), consts 2.0 and 2.5 (slots 2, 3),
    %4 = sin(%0), %5 = add(%4, %1), %6 = mul(%5, %2); output %6."""
    return {
        "ops": np.array([C["sin"], C["add"], C["mul"]], dtype=np.uint8),
        "args": np.array([0, 4, 1, 5, 2], dtype=np.int32),
        "consts": np.array([2.0, 2.5]),
        "outputs": np.array([6], dtype=np.int64),
        "n_inputs": 2,
    }


def pow_arrays(op: str, exponent_slot: int, consts=(2.0, 2.5)) -> dict:
    """%4 = sin(%0), %5 = <op>(%4, exponent_slot); inputs 0, 1; consts at slots 2, 3."""
    return {
        "ops": np.array([C["sin"], C[op]], dtype=np.uint8),
        "args": np.array([0, 4, exponent_slot], dtype=np.int64),
        "consts": np.array(consts, dtype=np.float64),
        "outputs": np.array([5]),
        "n_inputs": 2,
    }


def compiled_tapes() -> list[ft.Tape]:
    out = []
    g = ft.Graph()
    x, y, z = g.inputs(3)
    g.output(ft.sin(x) * y**3 + z**0.5 + ft.where(x > y, x, 2.0), ft.hypot(x, z) - 1.5, y)
    out.append(ft.compile(g))
    out.append(ft.compile(ft.trace(lambda v: ft.sum(v[i] * v[i + 1] for i in range(4)), 5)))
    out.append(ft.compile(ft.trace(lambda v: 3.0, 2)))
    out.append(random_local(500, n_inputs=10, seed=3))
    return out


# ---------------------------------------------------------------------- accepting
@pytest.mark.parametrize("idx", range(4))
def test_round_trip_through_to_arrays(idx):
    tape = compiled_tapes()[idx]
    arrays = tape.to_arrays()
    again = ft.Tape.from_arrays(**arrays, grad_mode=tape.grad_mode)
    for name in ("ops", "args", "consts", "outputs"):
        a, b = getattr(tape, name), getattr(again, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert again.n_inputs == tape.n_inputs
    x = np.linspace(0.2, 0.8, tape.n_inputs)
    assert same_bits(again.value(x), tape.value(x))
    v1, g1 = tape.value_and_grad(x, output=0)
    v2, g2 = again.value_and_grad(x, output=0)
    assert same_bits(v1, v2) and same_bits(g1, g2)


def test_from_arrays_accepts_lists_and_other_int_dtypes():
    a = base_arrays()
    ref = ft.Tape.from_arrays(**a)
    variants = [
        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items()},
        {**a, "ops": a["ops"].astype(np.int64), "args": a["args"].astype(np.uint16)},
        {**a, "outputs": a["outputs"].astype(np.int32), "n_inputs": np.int64(2)},
        {**a, "consts": np.array([2, 3], dtype=np.int32), "ops": a["ops"].astype(np.int16)},
        {**a, "consts": a["consts"].astype(np.float32)},
    ]
    for v in variants:
        t = ft.Tape.from_arrays(**v)
        assert t.ops.dtype == np.uint8
        assert t.args.dtype == np.int32
        assert t.consts.dtype == np.float64
        assert t.outputs.dtype == np.int64
        assert isinstance(t.n_inputs, int)
        assert np.array_equal(t.ops, ref.ops) and np.array_equal(t.args, ref.args)


def test_from_arrays_values():
    t = ft.Tape.from_arrays(**base_arrays())
    v, grad = t.value_and_grad([0.5, 1.0])
    assert v == (math.sin(0.5) + 1.0) * 2.0
    assert list(grad) == [2.0 * math.cos(0.5), 2.0]


def test_from_arrays_accepts_a_tape_without_instructions():
    t = ft.Tape.from_arrays([], [], [4.0], [1], 1)
    assert t.n_instructions == 0
    assert t.value([7.0]) == 4.0
    t = ft.Tape.from_arrays(np.zeros(0, np.uint8), np.zeros(0, np.int32), [], [0], 1)
    assert t.value_and_grad([7.0]) == (7.0, pytest.approx([1.0]))


@pytest.mark.parametrize("exponent", [0.0, -3.0, 2.0**31 - 1, -(2.0**31 - 1)])
def test_valid_powi_exponents_are_accepted(exponent):
    t = ft.Tape.from_arrays(**pow_arrays("powi", 3, consts=(2.0, exponent)))
    t.value([0.5, 0.5])


# ---------------------------------------------------------------------- rejecting
def _mod(**changes):
    def make():
        a = base_arrays()
        a.update({k: (v() if callable(v) else v) for k, v in changes.items()})
        return a

    return make


REJECT = [
    ("unknown-op", _mod(ops=np.array([C["sin"], 200, C["mul"]], np.uint8)),
     r"ops\[1\] = 200"),
    ("unknown-op-255", _mod(ops=np.array([C["sin"], C["add"], 255], np.uint8)),
     r"ops\[2\] = 255"),
    ("op-equal-n-ops", _mod(ops=np.array([C["sin"], C["add"], N_OPS], np.int64)),
     rf"ops\[2\] = {N_OPS}"),
    ("negative-op", _mod(ops=np.array([C["sin"], -3, C["mul"]], np.int64)), r"ops\[1\] = -3"),
    ("negative-op-int8", _mod(ops=np.array([C["sin"], C["add"], -1], np.int8)),
     r"ops\[2\] = -1"),
    ("args-too-short", _mod(args=np.array([0, 4, 1, 5])), r"args has 4 entries.* 5"),
    ("args-too-long", _mod(args=np.array([0, 4, 1, 5, 2, 0])), r"args has 6 entries.* 5"),
    ("args-empty", _mod(args=np.zeros(0, np.int64)), r"args has 0 entries.* 5"),
    ("negative-arg", _mod(args=np.array([0, 4, -1, 5, 2])), r"args\[2\] = -1.*instruction 1"),
    ("arg-own-slot", _mod(args=np.array([0, 4, 5, 5, 2])),
     r"instruction 1 \(add\): argument 1 refers to slot 5"),
    ("arg-own-slot-first", _mod(args=np.array([4, 4, 1, 5, 2])),
     r"instruction 0 \(sin\): argument 0 refers to slot 4"),
    ("arg-later-slot", _mod(args=np.array([0, 4, 6, 5, 2])),
     r"instruction 1 \(add\): argument 1 refers to slot 6"),
    ("arg-past-end", _mod(args=np.array([0, 4, 1, 5, 99])), r"args\[4\] = 99.*instruction 2"),
    ("arg-huge", _mod(args=np.array([0, 4, 1, 2**40, 2])), r"args\[3\] = 1099511627776"),
    ("powi-exponent-input", lambda: pow_arrays("powi", 1),
     r"instruction 1 \(powi\): argument 1 .*slot 1.*not a constant slot"),
    ("powc-exponent-input", lambda: pow_arrays("powc", 0),
     r"instruction 1 \(powc\): argument 1 .*slot 0.*not a constant slot"),
    ("powi-exponent-2.5", lambda: pow_arrays("powi", 3),
     r"instruction 1 \(powi\).*2\.5"),
    ("powi-exponent-2**31", lambda: pow_arrays("powi", 3, consts=(2.0, 2.0**31)),
     r"instruction 1 \(powi\).*2147483648"),
    ("powi-exponent-1e300", lambda: pow_arrays("powi", 2, consts=(1e300, 2.0)),
     r"instruction 1 \(powi\)"),
    ("powi-exponent-nan", lambda: pow_arrays("powi", 3, consts=(2.0, math.nan)),
     r"instruction 1 \(powi\).*nan"),
    ("powi-exponent-inf", lambda: pow_arrays("powi", 3, consts=(2.0, -math.inf)),
     r"instruction 1 \(powi\).*inf"),
    ("output-too-big", _mod(outputs=np.array([6, 7])), r"outputs\[1\] = 7"),
    ("output-negative", _mod(outputs=np.array([-1])), r"outputs\[0\] = -1"),
    ("outputs-empty", _mod(outputs=np.zeros(0, np.int64)), r"no outputs"),
    ("ops-2d", _mod(ops=np.array([[C["sin"], C["add"], C["mul"]]], np.uint8)), r"ops.*1-D"),
    ("args-2d", _mod(args=np.array([[0, 4, 1, 5, 2]])), r"args.*1-D"),
    ("consts-2d", _mod(consts=np.array([[2.0, 2.5]])), r"consts.*1-D"),
    ("outputs-2d", _mod(outputs=np.array([[6]])), r"outputs.*1-D"),
    ("ops-0d", _mod(ops=np.uint8(C["sin"])), r"ops.*1-D"),
    ("ops-float", _mod(ops=np.array([C["sin"], C["add"], C["mul"]], np.float64)),
     r"ops.*integers"),
    ("args-float", _mod(args=np.array([0.0, 4, 1, 5, 2])), r"args.*integers"),
    ("outputs-float", _mod(outputs=np.array([6.0])), r"outputs.*integers"),
    ("args-bool", _mod(args=np.array([0, 1, 1, 1, 0], dtype=bool)), r"args.*integers"),
    ("consts-str", _mod(consts=np.array(["a", "b"])), r"consts.*real numbers"),
    ("consts-str-list", _mod(consts=["2.0", "2.5"]), r"consts.*real numbers"),
    ("consts-object", _mod(consts=np.array([2.0, 2.5], dtype=object)), r"consts.*real numbers"),
    ("consts-complex", _mod(consts=np.array([2.0, 2.5j])), r"consts.*real numbers"),
    ("consts-bool", _mod(consts=np.array([True, False])), r"consts.*real numbers"),
    ("n_inputs-negative", _mod(n_inputs=-1), r"n_inputs"),
    ("n_inputs-float", _mod(n_inputs=2.0), r"n_inputs"),
    ("n_inputs-np-float", _mod(n_inputs=np.float64(2.0)), r"n_inputs"),
    ("n_inputs-str", _mod(n_inputs="2"), r"n_inputs"),
    ("n_inputs-none", _mod(n_inputs=None), r"n_inputs"),
    ("n_inputs-bool", _mod(n_inputs=True), r"n_inputs"),
    ("n_inputs-too-small", _mod(n_inputs=1),
     r"instruction 1 \(add\): argument 0 refers to slot 4"),
]


@pytest.mark.parametrize(("make", "pattern"), [r[1:] for r in REJECT], ids=[r[0] for r in REJECT])
def test_from_arrays_rejects(make, pattern):
    with pytest.raises(ValueError) as info:
        ft.Tape.from_arrays(**make())
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} !~ {pattern!r}"


def test_from_arrays_rejects_bad_grad_mode():
    with pytest.raises(ValueError, match="grad_mode"):
        ft.Tape.from_arrays(**base_arrays(), grad_mode="fast")


@pytest.mark.parametrize("op", ["powi", "powc"])
def test_from_arrays_rejects_exponent_in_instruction_slot(op):
    # %3 = sin(%0), %4 = op(%0, %3): the exponent is the instruction slot 3, not the const slot 2.
    arrays = {
        "ops": np.array([C["sin"], C[op]], dtype=np.uint8),
        "args": np.array([0, 0, 3]),
        "consts": np.array([2.0]),
        "outputs": np.array([4]),
        "n_inputs": 2,
    }
    with pytest.raises(ValueError, match=r"instruction 1 .*not a constant slot"):
        ft.Tape.from_arrays(**arrays)


def test_from_arrays_rejects_huge_n_inputs():
    with pytest.raises(ValueError, match="n_inputs"):
        ft.Tape.from_arrays([], [], [], [0], 2**70)


def test_from_arrays_does_not_alias_the_callers_arrays():
    a = base_arrays()
    buf = a["args"].copy()
    a["args"] = buf[:]  # a view: the caller still holds the writeable base
    tape = ft.Tape.from_arrays(**a)
    before = tape.value([0.5, 1.0])
    assert a["ops"].flags.writeable, "from_arrays made the caller's ops array read-only"
    assert not np.shares_memory(tape.args, buf), "the tape shares memory with the caller"
    buf[4] = 5  # would make instruction 2 read its own slot
    assert tape.value([0.5, 1.0]) == before
    assert list(tape.args) == [0, 4, 1, 5, 2]


# ---------------------------------------------------------------------- hypothesis fuzzing
_FLOATS = [2.0, -1.0, 0.5, 3.0, 0.0, 1.5, -2.0, 7.0]


@st.composite
def valid_tapes(draw):
    """Small random valid tapes as plain Python lists."""
    n_in = draw(st.integers(0, 3), label="n_inputs")
    consts = draw(st.lists(st.sampled_from(_FLOATS), max_size=3), label="consts")
    n_pre = n_in + len(consts)
    const_slots = list(range(n_in, n_pre))
    int_slots = [n_in + j for j, c in enumerate(consts) if c == int(c)]
    ops: list[int] = []
    args: list[int] = []
    for _ in range(draw(st.integers(0, 8), label="n_ops")):
        slot = n_pre + len(ops)
        if slot == 0:
            break
        spec = draw(st.sampled_from(OPS), label="op")
        if spec.param == "const":
            pool = int_slots if spec.name == "powi" else const_slots
            if not pool:
                continue
            params = [draw(st.sampled_from(pool)) for _ in range(spec.arity - spec.ndiff)]
            plain = [draw(st.integers(0, slot - 1)) for _ in range(spec.ndiff)]
            a = plain + params
        else:
            a = [draw(st.integers(0, slot - 1)) for _ in range(spec.arity)]
        ops.append(spec.code)
        args.extend(a)
    n_slots = n_pre + len(ops)
    assume(n_slots > 0)
    outputs = draw(st.lists(st.integers(0, n_slots - 1), min_size=1, max_size=3), label="outputs")
    return ops, args, consts, outputs, n_in


def _evaluate_everything(tape: ft.Tape, seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-2.0, 2.0, tape.n_inputs)
    v = tape.value(x)
    assert np.shape(v) == (() if tape.n_outputs == 1 else (tape.n_outputs,))
    lean = tape.with_grad_mode("lean")
    for k in range(tape.n_outputs):
        v1, g1 = tape.value_and_grad(x, output=k)
        v2, g2 = lean.value_and_grad(x, output=k)
        assert g1.shape == (tape.n_inputs,)
        assert same_bits(v1, v2), (k, v1, v2)
        assert same_bits(g1, g2), (k, g1, g2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tape=valid_tapes(), seed=st.integers(0, 2**16))
def test_fuzz_valid_tapes_are_accepted(tape, seed):
    ops, args, consts, outputs, n_in = tape
    t = ft.Tape.from_arrays(ops, args, consts, outputs, n_in)
    assert t.n_instructions == len(ops) and t.n_edges == len(args)
    _evaluate_everything(t, seed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tape=valid_tapes(), data=st.data())
def test_fuzz_corrupted_tapes_raise_value_error_or_evaluate(tape, data):
    ops, args, consts, outputs, n_in = tape
    n_slots = n_in + len(consts) + len(ops)
    ops = np.array(ops, dtype=np.int64)
    args = np.array(args, dtype=np.int64)
    kind = data.draw(st.sampled_from(["arg", "op", "valid-op"]), label="kind")
    if kind == "arg":
        assume(len(args) > 0)
        e = data.draw(st.integers(0, len(args) - 1), label="edge")
        args[e] = data.draw(
            st.integers(-3, n_slots + 3) | st.integers(-(2**40), 2**40), label="slot"
        )
    else:
        assume(len(ops) > 0)
        i = data.draw(st.integers(0, len(ops) - 1), label="instruction")
        if kind == "op":
            ops[i] = data.draw(st.integers(0, 255) | st.integers(-300, 300), label="code")
        else:  # another known op: same or different arity, parameters or not
            ops[i] = data.draw(st.integers(0, N_OPS - 1), label="code")
    try:
        t = ft.Tape.from_arrays(ops, args, consts, outputs, n_in)
    except ValueError as exc:
        assert str(exc), "the ValueError must say what is wrong"
        return
    _evaluate_everything(t, data.draw(st.integers(0, 2**16), label="seed"))


# ---------------------------------------------------------------------- immutability
def test_tape_cannot_be_constructed_directly():
    with pytest.raises(TypeError, match="compile"):
        ft.Tape()
    with pytest.raises(TypeError):
        ft.Tape(np.zeros(0, np.uint8), np.zeros(0, np.int32), np.zeros(0), np.zeros(1), 1)


@pytest.fixture(scope="module")
def small_tape() -> ft.Tape:
    g = ft.Graph()
    x, y, z = g.inputs(3)
    g.output(ft.sin(x) * y + z * 2.0)
    return ft.compile(g)


@pytest.mark.parametrize(
    ("name", "value"),
    [("ops", np.zeros(3, np.uint8)), ("n_inputs", 5), ("grad_mode", "lean"),
     ("consts", np.zeros(1)), ("something_new", 1), ("_local", None)],
)
def test_tape_attributes_cannot_be_set(small_tape, name, value):
    before = small_tape.to_arrays()
    with pytest.raises(AttributeError):
        setattr(small_tape, name, value)
    after = small_tape.to_arrays()
    assert after["n_inputs"] == before["n_inputs"]
    assert small_tape.grad_mode == "stored"


@pytest.mark.parametrize("name", ["ops", "n_inputs"])
def test_tape_attributes_cannot_be_deleted(name):
    tape = ft.compile(ft.trace(lambda v: v[0] * 2.0, 1))
    with pytest.raises(AttributeError):
        delattr(tape, name)
    assert tape.value([1.0]) == 2.0


@pytest.mark.parametrize("name", ["ops", "args", "consts", "outputs"])
def test_tape_arrays_are_read_only(small_tape, name):
    arr = getattr(small_tape, name)
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1
    assert not small_tape.to_arrays()[name].flags.writeable


@pytest.mark.parametrize("name", ["ops", "args", "consts", "outputs"])
@pytest.mark.parametrize("source", ["compile", "from_arrays", "with_grad_mode", "pickle"])
def test_tape_arrays_cannot_be_made_writeable_again(small_tape, name, source):
    """An array that owns its data can have ``writeable`` set back to True; after that a write
    to ``args`` made the next evaluation read out of bounds."""
    tape = {
        "compile": lambda: small_tape,
        "from_arrays": lambda: ft.Tape.from_arrays(**small_tape.to_arrays()),
        "with_grad_mode": lambda: small_tape.with_grad_mode("lean"),
        "pickle": lambda: pickle.loads(pickle.dumps(small_tape)),
    }[source]()
    x = [0.3, 0.7, 1.1]
    before = tape.value(x)
    for arr in (getattr(tape, name), tape.to_arrays()[name]):
        base = arr
        while isinstance(base, np.ndarray):  # the array, and every array it is a view of
            with pytest.raises(ValueError):
                base.flags.writeable = True
            with pytest.raises(ValueError):
                base[0] = 2**30
            base = base.base
    assert tape.value(x) == before


def test_with_grad_mode_shares_the_frozen_arrays(small_tape):
    lean = small_tape.with_grad_mode("lean")
    for name in ("ops", "args", "consts", "outputs"):
        assert getattr(lean, name) is getattr(small_tape, name)


# ---------------------------------------------------------------------- x validation
@pytest.mark.parametrize("n", [0, 2, 4, 10])
def test_x_of_wrong_length(small_tape, n):
    for call in (small_tape.value, small_tape.value_and_grad, small_tape.grad):
        with pytest.raises(ValueError) as info:
            call(np.ones(n))
        msg = str(info.value)
        assert re.search(rf"\b{n}\b", msg) and re.search(r"\b3\b", msg), msg


@pytest.mark.parametrize(
    "x",
    # (1, 3) is a valid batch of one point since batching (docs/batch.md); (3, 1) is a batch
    # of the wrong width, and 0-d / 3-d inputs are neither a point nor a batch.
    [np.ones((3, 1)), np.ones((1, 1, 3)), np.float64(1.0), [[[1.0, 2.0, 3.0]]]],
    ids=["3x1", "1x1x3", "0d", "nested-3d"],
)
def test_x_must_be_one_dimensional(small_tape, x):
    with pytest.raises(ValueError, match="1-D"):
        small_tape.value(x)
    with pytest.raises(ValueError, match="1-D"):
        small_tape.value_and_grad(x)


@pytest.mark.parametrize(
    "x",
    [
        [0.5, 2.0, 3.0],
        (0.5, 2.0, 3.0),
        np.array([0.5, 2.0, 3.0], dtype=np.float32),
        np.array([0.5, 2.0, 3.0, 9.0, 9.0, 9.0])[:3],
        np.array([0.5, 9.0, 2.0, 9.0, 3.0, 9.0])[::2],
    ],
    ids=["list", "tuple", "float32", "slice", "strided"],
)
def test_x_array_likes_work(small_tape, x):
    want = small_tape.value(np.array([0.5, 2.0, 3.0]))
    assert small_tape.value(x) == want
    v, grad = small_tape.value_and_grad(x)
    assert v == want
    assert list(grad) == [2.0 * math.cos(0.5), math.sin(0.5), 2.0]


def test_x_int_arrays_work(small_tape):
    for x in ([1, 2, 3], np.array([1, 2, 3], dtype=np.int32), np.array([1, 2, 3], np.uint8),
              [True, False, True]):
        xf = np.asarray(x, dtype=np.float64)
        assert small_tape.value(x) == small_tape.value(xf)
        assert list(small_tape.grad(x)) == list(small_tape.grad(xf))


@pytest.mark.parametrize(
    "x",
    [
        np.array([1.0, 2.0, 3.0]) + 0j,
        [1.0, 2.0, 1j],
        np.array([1.0, 2.0, 3.0], dtype=object),
        ["1", "2", "3"],
    ],
    ids=["complex", "complex-list", "object", "str"],
)
def test_x_non_real_raises_type_error(small_tape, x):
    with pytest.raises(TypeError):
        small_tape.value(x)
    with pytest.raises(TypeError):
        small_tape.value_and_grad(x)


def test_x_of_vars_raises_type_error(small_tape):
    g = ft.Graph()
    xs = g.inputs(3)
    with pytest.raises(TypeError, match="Var"):
        small_tape.value(xs)


# ---------------------------------------------------------------------- out=
@pytest.fixture(scope="module")
def multi_tape() -> ft.Tape:
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(x + y, x * y, ft.exp(x))
    return ft.compile(g)


@pytest.mark.parametrize(
    "out",
    [
        np.empty(2), np.empty(4), np.empty(3, np.float32), np.empty(3, np.int64),
        np.empty((3, 1)), np.empty((1, 3)), [0.0, 0.0, 0.0], np.empty(6)[::2], None,
    ],
    ids=["short", "long", "float32", "int64", "3x1", "1x3", "list", "strided", "read-only"],
)
def test_value_out_of_wrong_kind_raises(multi_tape, out):
    if out is None:  # the "read-only" case: an array that cannot be written in place
        out = np.empty(3)
        out.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        multi_tape.value([1.0, 2.0], out=out)


def test_value_and_grad_out_of_wrong_kind_raises(multi_tape):
    for out in (np.empty(3), np.empty(1), np.empty(2, np.float32), np.empty((2, 1)), [0.0, 0.0]):
        with pytest.raises(ValueError, match="out"):
            multi_tape.value_and_grad([1.0, 2.0], output=0, out=out)


def test_value_out_is_filled_and_returned(multi_tape):
    out = np.full(3, np.nan)
    r = multi_tape.value([1.0, 2.0], out=out)
    assert r is out
    assert list(out) == [3.0, 2.0, math.exp(1.0)]
    r2 = multi_tape.value([2.0, 2.0], out=out)
    assert r2 is out and list(out) == [4.0, 4.0, math.exp(2.0)]


def test_single_output_value_out_is_returned(small_tape):
    out = np.empty(1)
    r = small_tape.value([0.5, 2.0, 3.0], out=out)
    assert r is out
    assert out[0] == small_tape.value([0.5, 2.0, 3.0])


def test_value_and_grad_out_is_filled_and_returned(multi_tape):
    out = np.full(2, np.nan)
    for mode in ft.GRAD_MODES:
        v, grad = multi_tape.with_grad_mode(mode).value_and_grad([3.0, 5.0], output=1, out=out)
        assert grad is out
        assert v == 15.0 and list(out) == [5.0, 3.0]
        assert multi_tape.grad([3.0, 5.0], output=0, out=out) is out
        assert list(out) == [1.0, 1.0]


@pytest.mark.parametrize("mode", ft.GRAD_MODES)
def test_out_allocates_nothing_proportional_to_the_size(mode):
    n = 50_000
    g = ft.Graph()
    xs = g.inputs(n)
    g.output(ft.sum(v * v for v in xs), ft.sum(xs))
    tape = ft.compile(g, grad_mode=mode)
    x = np.linspace(0.0, 1.0, n)
    grad_out = np.empty(n)
    val_out = np.empty(2)
    tape.value_and_grad(x, output=0, out=grad_out)  # first calls allocate the work buffers
    tape.value(x, out=val_out)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(3):
            tape.value_and_grad(x, output=0, out=grad_out)
            tape.value(x, out=val_out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * n // 4, f"calls with out= allocated {peak} bytes (gradient is {8 * n} B)"
    assert np.allclose(grad_out, 2 * x)


# ---------------------------------------------------------------------- pickle, sizes, modes
@pytest.mark.parametrize("idx", range(4))
@pytest.mark.parametrize("mode", ft.GRAD_MODES)
def test_pickle_round_trip(idx, mode):
    tape = compiled_tapes()[idx].with_grad_mode(mode)
    again = pickle.loads(pickle.dumps(tape))
    assert isinstance(again, ft.Tape)
    for name, arr in tape.to_arrays().items():
        other = again.to_arrays()[name]
        if isinstance(arr, np.ndarray):
            assert other.dtype == arr.dtype and np.array_equal(other, arr), name
            assert not other.flags.writeable
        else:
            assert other == arr, name
    assert again.grad_mode == mode
    x = np.linspace(0.2, 0.9, tape.n_inputs)
    assert same_bits(again.value(x), tape.value(x))
    assert same_bits(again.grad(x, output=0), tape.grad(x, output=0))


def test_n_instructions_counts_instructions_only():
    g = ft.Graph()
    x, y = g.inputs(2)
    a = x * y
    b = a + 3.0
    c = ft.sin(b)
    _ = ft.exp(x) - 7.0  # dead: two nodes and a constant that are not compiled
    g.output(c, b)
    assert g.n_nodes == 2 + 1 + 3 + 1 + 2  # inputs, const 3.0, live ops, const 7.0, dead ops
    tape = ft.compile(g)
    assert tape.n_inputs == 2
    assert tape.n_consts == 1
    assert tape.n_instructions == 3
    assert tape.n_edges == 5
    assert tape.n_slots == 6
    assert tape.n_outputs == 2
    s = tape.stats()
    assert (s["n_instructions"], s["n_consts"], s["n_inputs"], s["n_slots"]) == (3, 1, 2, 6)


def test_n_instructions_of_from_arrays():
    t = ft.Tape.from_arrays(**base_arrays())
    assert t.n_instructions == 3 and t.n_inputs == 2 and t.n_consts == 2 and t.n_slots == 7


@pytest.mark.parametrize("idx", range(4))
def test_nbytes_is_the_sum_of_the_arrays(idx):
    tape = compiled_tapes()[idx]
    want = tape.ops.nbytes + tape.args.nbytes + tape.consts.nbytes + tape.outputs.nbytes
    assert tape.nbytes == want
    assert tape.stats()["tape_nbytes"] == want


@pytest.fixture(scope="module")
def local2000() -> ft.Tape:
    return random_local(2000)


def test_lean_mode_is_bitwise_identical(local2000):
    lean = local2000.with_grad_mode("lean")
    assert lean.grad_mode == "lean" and local2000.grad_mode == "stored"
    for name in ("ops", "args", "consts", "outputs"):
        assert np.shares_memory(getattr(lean, name), getattr(local2000, name)) or not getattr(
            lean, name
        ).size
    rng = np.random.default_rng(7)
    for _ in range(5):
        x = rng.uniform(0.1, 0.9, local2000.n_inputs)
        v1, g1 = local2000.value_and_grad(x)
        v2, g2 = lean.value_and_grad(x)
        assert same_bits(v1, v2), (v1, v2)
        assert same_bits(g1, g2), np.flatnonzero(g1 != g2)
        assert np.count_nonzero(g1) > 0, "the gradient should not be identically zero"
        assert same_bits(lean.value(x), local2000.value(x))
    back = lean.with_grad_mode("stored")
    assert back.grad_mode == "stored"


def test_random_local_with_lean_grad_mode_matches(local2000):
    lean = random_local(2000, grad_mode="lean")
    x = np.full(local2000.n_inputs, 0.5)
    assert same_bits(lean.grad(x), local2000.grad(x))


@pytest.mark.parametrize("mode", ["fast", "", "STORED", None, 1])
def test_invalid_grad_mode_raises(local2000, mode):
    with pytest.raises(ValueError, match="grad_mode"):
        local2000.with_grad_mode(mode)


def test_work_nbytes_depends_on_grad_mode(local2000):
    lean = local2000.with_grad_mode("lean")
    assert lean.work_nbytes(grad=True) < local2000.work_nbytes(grad=True)
    assert lean.work_nbytes(grad=False) == local2000.work_nbytes(grad=False)


# ---------------------------------------------------------------------- display
def test_repr_shows_op_names_and_sizes(capsys):
    g = ft.Graph()
    x, y = g.inputs(2)
    g.output(ft.sin(x) * y + 2.5)
    tape = ft.compile(g)
    print(tape)
    text = capsys.readouterr().out
    for word in ("sin", "mul", "add", "2.5", r"2 inputs", r"1 constants?", r"3 instructions"):
        assert re.search(word, text), (word, text)
    assert repr(tape) in text


def test_repr_of_a_large_tape_is_short():
    tape = random_local(100_000)
    text = repr(tape)
    lines = text.splitlines()
    assert len(lines) < 60, f"{len(lines)} lines"
    assert len(text) < 5000
    assert "100000" in text.replace(",", "") and "100 inputs" in text
    assert any(name in text for name in ("add", "sub", "sin", "tanh", "mul"))
    assert "more" in text  # says that instructions were left out
    listing = tape.listing(max_lines=5)
    assert len(listing.splitlines()) < 10


def test_repr_of_many_outputs_is_short():
    g = ft.Graph()
    xs = g.inputs(1000)
    g.output(xs)
    tape = ft.compile(g)
    assert len(repr(tape).splitlines()) < 60
    assert len(repr(tape)) < 5000


def test_op_table_is_consistent():
    assert len(OPS) == N_OPS
    assert all(OP_BY_NAME[op.name] is op for op in OPS)


def test_slot_reuse_plan_arrays_cannot_be_made_writeable():
    """The plan's arrays index the work vector inside kernels without bounds checks."""
    from fasttape.passes.reuse import plan_slots

    tape = random_local(2000, n_inputs=10, seed=4)
    plan = plan_slots(tape.ops, tape.args, tape.outputs, tape.n_inputs + tape.n_consts)
    for arr in (plan.dest, plan.args, plan.outputs):
        with pytest.raises(ValueError):
            arr.flags.writeable = True


def test_non_numeric_arrays_are_refused_with_messages_that_name_the_argument():
    """Points and directions share one real-number check; each message names its argument."""
    tape = ft.compile(ft.trace(lambda x: x[0] * x[1], 2))
    objects = np.array([object(), object()])
    with pytest.raises(TypeError, match=re.escape(
        "x must be a 1-D array of real numbers; got an array of dtype object (traced Vars "
        "cannot be evaluated; pass numbers)"
    )):
        tape.value(objects)
    with pytest.raises(TypeError, match=r"^x must be a 1-D array of real numbers; got list$"):
        tape.value([[1.0], [1.0, 2.0]])
    with pytest.raises(TypeError, match=(
        r"^jvp: v must be a 1-D array of real numbers; got an array of dtype object$"
    )):
        tape.jvp([0.1, 0.2], objects)
