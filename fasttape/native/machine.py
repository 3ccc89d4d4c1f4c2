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
import threading
from collections.abc import Callable

import llvmlite
import llvmlite.binding as llvm

from fasttape.native.translate import libm_symbols

__all__ = ["Engine", "compile_module", "header", "machine_key"]

_lock = threading.Lock()


@functools.cache
def _target_machine() -> llvm.TargetMachine:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for name, address in libm_symbols().items():
        llvm.add_symbol(name, address)
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=2, codemodel="jitdefault",
    )


@functools.cache
def header() -> str:
    """The triple and data layout lines every module starts with."""
    tm = _target_machine()
    return f'target triple = "{llvm.get_process_triple()}"\n' \
           f'target datalayout = "{tm.target_data}"\n'


@functools.cache
def machine_key() -> str:
    """What object code depends on besides the IR: CPU, features, LLVM and llvmlite."""
    return ";".join([llvm.get_process_triple(), llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten(),
                     ".".join(map(str, llvm.llvm_version_info)), llvmlite.__version__])


def compile_module(text: str, level: int) -> bytes:
    """Object code of one IR module, optimized at ``level`` (0-3)."""
    tm = _target_machine()
    # The global context is shared: parse and optimize one module at a time.
    with _lock:
        mod = llvm.parse_assembly(text)
        pto = llvm.create_pipeline_tuning_options(speed_level=level)
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
        return bytes(tm.emit_object(mod))


class Engine:
    """Object files loaded and linked into one MCJIT engine; addresses of its functions."""

    def __init__(self, objects: list[bytes]) -> None:
        tm = _target_machine()
        with _lock:
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(header()), tm)
            for obj in objects:
                self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()

    def address(self, name: str) -> int:
        """The entry address of the function ``name`` (``0`` if there is none)."""
        return int(self._engine.get_function_address(name))


def as_callable(address: int, proto: Callable[..., object]) -> Callable[..., object]:
    """``address`` as a ctypes function of prototype ``proto``."""
    return proto(address)
