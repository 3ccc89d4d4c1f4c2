"""LLVM for the native tier: one target machine, modules to object code, object code to calls.

Each module (a piece or the driver) is parsed, optimized at its own level and compiled to an
object file on its own; the object files are then loaded together into one MCJIT engine,
which links the driver's calls to the pieces.  Object files are also what the disk cache
stores (:mod:`fasttape.native.cache`), so a cached tape skips everything but the loading.

The target machine is the host's CPU and features, never fast-math, and LLVM's default
floating-point contraction (``Standard``: only explicit ``fmuladd`` intrinsics, which the
emitters never write), so no ``a * b + c`` is fused into an FMA.
"""

from __future__ import annotations

import functools
import re
import threading

import llvmlite
import llvmlite.binding as llvm

from fasttape.native.translate import libm_symbols, op_library

__all__ = ["SCHEDULING_CPU", "Engine", "compile_module", "header", "library", "machine_key"]

# Every module of the native tier lives in one private LLVM context, used under this lock:
# never Numba's global context, which Numba's compiles use (under Numba's own lock) from any
# thread, so a tape compiling in the background (tiering) cannot race with them.
_lock = threading.Lock()


@functools.cache
def _context() -> llvm.ContextRef:
    return llvm.create_context()


#: The CPU whose scheduling model levels 1 to 3 use, with the host's instruction set
#: (its features).  The host's own model (Zen 4 here) adds LLVM's post-register-allocation
#: scheduler, which took half of a reverse piece's compile time: at 10,000 instructions, all
#: straight-line pieces at level 1 compiled random_uniform in 1.20 s with it against 0.62 s
#: with this one, and ran random_uniform, random_local, Rosenbrock, Lennard-Jones and a
#: chain of ``sin`` as fast (within 1%).  The instruction set, not the model, decides the
#: results' bits (no contraction either way).
SCHEDULING_CPU = "generic"


@functools.cache
def _target_machine() -> llvm.TargetMachine:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for name, address in libm_symbols().items():
        llvm.add_symbol(name, address)
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=SCHEDULING_CPU, features=llvm.get_host_cpu_features().flatten(),
        opt=2, codemodel="jitdefault",
    )


@functools.cache
def _fast_target_machine() -> llvm.TargetMachine:
    _target_machine()  # initializes LLVM
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=0, codemodel="jitdefault",
    )


@functools.cache
def header() -> str:
    """The triple and data layout lines every module starts with."""
    tm = _target_machine()
    return f'target triple = "{llvm.get_process_triple()}"\n' \
           f'target datalayout = "{tm.target_data}"\n'


@functools.cache
def library(inline_loops: bool = True) -> str:
    """The op library (:func:`fasttape.native.translate.op_library`) optimized once, at level 2,
    with every function made internal: what each piece module includes.

    Its functions are already clean SSA, so a piece needs only inlining, not the full
    pipeline (:func:`compile_module`).  With ``inline_loops`` false, the functions that loop
    (``powi``'s, its partial's) are ``noinline``: a piece calls them, and the loop runs as the
    interpreter's does.  Inlined, their loops would split a piece into thousands of basic
    blocks, which LLVM's optimizing instruction selector handles in quadratic time (50 s for
    10,000 Lennard-Jones instructions), and without the full pipeline nothing unrolls them.
    """
    tm = _target_machine()
    with _lock:
        mod = llvm.parse_assembly(header() + op_library()[0], _context())
        _run(mod, tm, 2)
        text = str(mod)
    loops = op_library()[1]
    lines = []
    for line in text.splitlines():
        if line.startswith(("target ", "; ModuleID", "source_filename")):
            continue
        if line.startswith("define "):
            line = "define internal " + line[len("define "):]
            name = re.search(r"@\"?([^\s(\"]+)", line)
            if not inline_loops and name is not None and name.group(1) in loops:
                # Its own attributes instead of the (shared, alwaysinline) attribute group.
                line = re.sub(r" #\d+ \{$", " noinline nounwind memory(none) {", line)
        lines.append(line)
    return "\n".join(lines)


def _run(mod: llvm.ModuleRef, tm: llvm.TargetMachine, level: int) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=level)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


@functools.cache
def machine_key() -> str:
    """What object code depends on besides the IR: CPU, features, LLVM and llvmlite."""
    return ";".join([llvm.get_process_triple(), llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten(),
                     ".".join(map(str, llvm.llvm_version_info)), llvmlite.__version__])


def compile_module(text: str, level: int, with_library: bool = True) -> bytes:
    """Object code of one IR module.

    ``level`` 0 and 1 only inline the (already optimized) op library: the pieces are
    straight-line code the emitter wrote with nothing left to simplify, and every pass
    costs compile time in proportion to the tape.  Code generation uses LLVM's fast instruction
    selector and register allocator at 0, its optimizing ones at 1.  2 and 3 run LLVM's
    standard pipeline of that level, which unrolls ``powi``'s loop for its constant
    exponent (levels 0 and 1 call it: :func:`library`); they merge the emitter's basic blocks
    and compile far slower.  Every level computes bitwise the same results.  ``with_library``:
    append the op library (:func:`library`) to ``text`` (the pieces call its functions).
    """
    tm = _target_machine() if level >= 1 else _fast_target_machine()
    if with_library:
        text = f"{text}\n{library(inline_loops=level >= 2)}\n"
    with _lock:
        mod = llvm.parse_assembly(text, _context())
        mod.verify()  # malformed IR raises here; LLVM's passes would abort the process
        if level >= 2:
            _run(mod, tm, level)
        else:
            pto = llvm.create_pipeline_tuning_options(speed_level=1)
            pb = llvm.create_pass_builder(tm, pto)
            pm = llvm.create_new_module_pass_manager()
            pm.add_always_inliner_pass()
            pm.add_global_dead_code_eliminate_pass()
            pm.run(mod, pb)
        return bytes(tm.emit_object(mod))


class Engine:
    """Object files loaded and linked into one MCJIT engine; addresses of its functions."""

    def __init__(self, objects: list[bytes]) -> None:
        _target_machine()  # initializes LLVM and binds the libm symbols
        # The engine takes ownership of (and deletes) its target machine: a new one each.
        target = llvm.Target.from_triple(llvm.get_process_triple())
        tm = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            codemodel="jitdefault",
        )
        with _lock:
            self._engine = llvm.create_mcjit_compiler(
                llvm.parse_assembly(header(), _context()), tm)
            for obj in objects:
                self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()

    def address(self, name: str) -> int:
        """The entry address of the function ``name`` (``0`` if there is none)."""
        return int(self._engine.get_function_address(name))

