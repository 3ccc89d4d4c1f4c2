"""Regression tests: one per bug found, named after what went wrong."""

from __future__ import annotations

import pytest

import fasttape as ft
from fasttape.ops import OP_BY_NAME, OPS

NEG, POWI, POWC = (OP_BY_NAME[k].code for k in ("neg", "powi", "powc"))


@pytest.mark.parametrize("code", [POWI, POWC])
def test_exponent_pointing_at_an_instruction_slot_is_rejected(code):
    # Used to pass validation (powc: silently dropped d/dexponent) or read consts out of bounds
    # inside check_tape (powi: IndexError instead of ValueError).
    with pytest.raises(ValueError, match=r"instruction 1 .* not a constant slot"):
        ft.Tape.from_arrays([NEG, code], [0, 0, 1], [], [2], 1)


def test_ft_pow_dispatches_like_the_operator():
    # ft.pow used to be the raw two-variable `pow` op (OP_FUNCTIONS shadowed trace.pow).
    g = ft.Graph()
    (x,) = g.inputs(1)
    g.output(ft.pow(x, 3), x**3, ft.pow(x, 0.5), ft.pow(2.0, x))
    # optimize=False: the ops the frontend records (CSE would merge the two powi).
    names = [OPS[int(c)].name for c in ft.compile(g, optimize=False).ops]
    assert names == ["powi", "powi", "powc", "pow"]
    assert ft.__all__.count("pow") == 1


def test_args_length_error_is_worded_once():
    msg = r"^invalid tape: args has 2 entries but the arities of the 1 ops need 1 "
    with pytest.raises(ValueError, match=msg):
        ft.Tape.from_arrays([NEG], [0, 0], [], [1], 1)


@pytest.mark.parametrize("pause", [True, False])
def test_trace_restores_the_garbage_collector(pause):
    import gc

    assert gc.isenabled()
    seen = []
    ft.trace(lambda x: seen.append(gc.isenabled()) or x[0] * 2, 1, pause_gc=pause)
    assert seen == [not pause]
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        ft.trace(lambda x: 1 / 0, 1)
    assert gc.isenabled(), "restored even when the traced function raises"
