"""The one JIT wrapper of the package, and the on-disk cache it compiles into.

Every Numba function of fasttape is made here (:func:`kernel`, :func:`cfunc`), with one set of
options: ``nogil=True`` (Python threads run kernels in parallel), ``error_model="numpy"``
(``x / 0`` gives inf or NaN, as IEEE says, instead of raising) and never fastmath (it breaks
NaN and inf handling and the bitwise results the tests check).

The cache.  Numba keys its on-disk cache on the source file of the function alone, so a
kernel that calls (and inlines) code from another file would keep running stale machine code
after that file changed; and it writes the cache next to the sources, inside the installed
package, where a reinstall leaves it behind.  So fasttape's functions get their own cache
locator (the mechanism Numba offers for this; PyTensor's Numba backend does the same):

* its *source stamp* is a digest of the op table (``fasttape/ops.py``), of every module of
  ``fasttape/kernels/`` and of every fasttape module the function's module reaches through
  its globals (the modules and jitted functions it uses, transitively).  Numba discards an
  index whose stamp differs, so a cached kernel can never outlive a change to anything it
  inlines: no digest lines in hand-written files, no list of dependents to maintain;
* its folder is a per-user cache folder, :func:`cache_dir`, never the package.  If that
  folder cannot be written, kernels are compiled without a cache (one warning), never a crash.

Nothing here changes Numba's process-wide configuration (tools that embed fasttape keep
theirs), and nothing compiles before a kernel's first call.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numba
from numba.core import caching
from numba.core import types as types_
from numba.core.ccallback import CFunc
from numba.core.registry import CPUDispatcher

__all__ = ["CACHE_ENV", "cache_dir", "cfunc", "kernel", "source_stamp"]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "FASTTAPE_CACHE_DIR"

_PACKAGE = Path(__file__).resolve().parent.parent  # the fasttape package folder

# The options of every kernel (module docstring).  Never fastmath.
_OPTIONS: dict[str, Any] = {"nopython": True, "nogil": True, "error_model": "numpy"}


def _platform_cache_root() -> Path:
    """The platform's per-user cache folder for fasttape (before the version subfolder)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "fasttape" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "fasttape"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fasttape"


def cache_dir() -> Path:
    """The folder that holds fasttape's compiled kernels (created on the first save).

    ``$FASTTAPE_CACHE_DIR`` if set, else the platform's per-user cache folder
    (``$XDG_CACHE_HOME/fasttape`` or ``~/.cache/fasttape`` on Linux,
    ``~/Library/Caches/fasttape`` on macOS, ``%LOCALAPPDATA%\\fasttape\\Cache`` on Windows),
    then one subfolder per fasttape, Numba and Python version, and one per installed copy of
    the package (two checkouts never overwrite each other's entries).  Read at each call, so
    a test can point it elsewhere.
    """
    env = os.environ.get(CACHE_ENV)
    root = Path(env) if env else _platform_cache_root()
    version = getattr(importlib.import_module("fasttape"), "__version__", "unknown")
    versions = (f"fasttape-{version}_numba-{numba.__version__}"
                f"_py{sys.version_info[0]}.{sys.version_info[1]}")
    where = hashlib.sha256(str(_PACKAGE).encode()).hexdigest()[:12]
    return root / versions / f"{_PACKAGE.parent.name}_{where}"


@cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _py_func(obj: object) -> Any:
    """The Python function behind a Numba dispatcher or cfunc, else None."""
    if isinstance(obj, (numba.core.dispatcher.Dispatcher, CFunc)):
        return getattr(obj, "py_func", None) or obj._pyfunc
    return None


def _own_file(obj: object) -> str | None:
    """The source file of a fasttape module or function, else None."""
    if isinstance(obj, types.ModuleType):
        name, path = obj.__name__, getattr(obj, "__file__", None)
    else:
        name, path = getattr(obj, "__module__", "") or "", inspect.getsourcefile(obj)
    if not (name == "fasttape" or name.startswith("fasttape.")) or not path:
        return None
    return str(Path(path).resolve())


def _reached_files(module: str) -> set[str]:
    """Files of ``module`` and of the fasttape modules and jitted functions it reaches through
    module globals, transitively (what a kernel of ``module`` can call or inline)."""
    seen: set[str] = set()
    start = sys.modules[module]
    todo = [start]
    # The function's own file always counts, even outside the package (benchmarks, scripts).
    if getattr(start, "__file__", None):
        seen.add(str(Path(start.__file__).resolve()))
        todo = [v for v in vars(start).values() if isinstance(v, types.ModuleType)]
        todo += [sys.modules[f.__module__] for f in map(_py_func, vars(start).values())
                 if f is not None and _own_file(f) is not None]
    while todo:
        mod = todo.pop()
        path = _own_file(mod)
        if path is None or path in seen:
            continue
        seen.add(path)
        for value in vars(mod).values():
            if isinstance(value, types.ModuleType):
                todo.append(value)
            else:
                fn = _py_func(value)
                if fn is not None and _own_file(fn) is not None:
                    todo.append(sys.modules[fn.__module__])
    return seen


@cache
def source_stamp(module: str) -> str:
    """The cache stamp of the kernels defined in ``module``: a digest of the op table, every
    module of ``fasttape/kernels/`` and every file :func:`_reached_files` finds."""
    files = {str(p.resolve()) for p in (_PACKAGE / "kernels").glob("*.py")}
    files.add(str((_PACKAGE / "ops.py").resolve()))
    files |= _reached_files(module)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(os.path.relpath(path, _PACKAGE).encode())
        h.update(_file_digest(path).encode())
    return h.hexdigest()


class _Locator(caching._CacheLocator):
    """Where and under which stamp one function's cache lives (module docstring)."""

    def __init__(self, py_func: Callable[..., Any]) -> None:
        self._path = cache_dir()
        self._stamp = source_stamp(py_func.__module__)
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self) -> str:
        return str(self._path)

    def get_source_stamp(self) -> str:
        return self._stamp

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
        return cls(py_func)


class _Impl(caching.CompileResultCacheImpl):
    # Our locator only: Numba's list (and its NUMBA_CACHE_LOCATOR_CLASSES override) is for
    # everyone else's functions.
    def __init__(self, py_func: Callable[..., Any]) -> None:
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = _Locator(py_func)
        # The full module name (not the file's base name, as Numba does): unique in the package.
        fullname = f"{py_func.__module__}.{py_func.__qualname__}"
        self._filename_base = self.get_filename_base(fullname, getattr(sys, "abiflags", ""))


class _FunctionCache(caching.FunctionCache):
    _impl_class = _Impl


_warned = False


def _warn_unwritable(err: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"fasttape cannot use its kernel cache folder ({err}); kernels are compiled "
            f"without a cache in this process.  Set {CACHE_ENV} to a writable folder to keep "
            "compiled kernels between runs.",
            RuntimeWarning,
            stacklevel=3,
        )


class _LazyCache(caching.NullCache):
    """The cache of one function, made on its first compile and never raising an OSError.

    Made lazily because the stamp needs the function's module fully imported (its globals),
    and so that importing fasttape opens no cache index (it writes one file there at most:
    the op dispatch module, fasttape/kernels/dispatch.py).
    """

    def __init__(self, py_func: Callable[..., Any]) -> None:
        self._py_func = py_func
        self._cache: _FunctionCache | None = None
        self._off = False

    def _get(self) -> _FunctionCache | None:
        if self._cache is None and not self._off:
            self._cache = _FunctionCache(self._py_func)
        return None if self._off else self._cache

    @property
    def cache_path(self) -> str:
        c = self._get()
        return c.cache_path if c is not None else ""

    def load_overload(self, sig, target_context):  # type: ignore[no-untyped-def]
        c = self._get()
        if c is None:
            return None
        try:
            return c.load_overload(sig, target_context)
        except OSError as err:  # unreadable folder: compile instead
            self._off = True
            _warn_unwritable(err)
            return None
        except Exception:  # any unreadable entry is a miss, never a crash
            # A stale index (it pickles references to functions that a later version renamed,
            # which an embedding function's stamp may not cover: it reaches fasttape through
            # an argument) or a damaged one: drop it, so that the save after this compile
            # writes a fresh one.
            with contextlib.suppress(OSError, AttributeError):  # (Numba's own attribute)
                os.remove(c._cache_file._index_path)
            return None

    def save_overload(self, sig, data):  # type: ignore[no-untyped-def]
        c = self._get()
        if c is None:
            return
        try:
            c.save_overload(sig, data)
        except OSError as err:  # unwritable folder: keep the compiled code in memory only
            self._off = True
            _warn_unwritable(err)
        except Exception:  # an index that still cannot be read: keep the code in memory
            self._off = True

    def flush(self) -> None:
        if self._cache is not None:
            self._cache.flush()


class _Dispatcher(CPUDispatcher):
    """Numba's CPU dispatcher, caching with :class:`_LazyCache`."""

    def enable_caching(self) -> None:
        self._cache = _LazyCache(self.py_func)


class _InlineDispatcher(_Dispatcher):
    """A dispatcher whose machine code LLVM always inlines into its callers.

    Numba's own ``inline="always"`` inlines at the level of its IR, by deep-copying the
    callee's IR at every call site: seconds per site for a function with one branch per op.
    Marking the compiled function ``alwaysinline`` instead lets LLVM do it while linking the
    caller, which costs next to nothing and gives the same loop (one switch, no call).
    """

    def get_call_template(self, args, kws):  # type: ignore[no-untyped-def]
        # One compile per plain signature: a sweep's ``k = 0`` would otherwise type the first
        # call with a literal 0 and compile the whole dispatch a second time for it.
        return super().get_call_template(tuple(types_.unliteral(a) for a in args), kws)

    def add_overload(self, cres) -> None:  # type: ignore[no-untyped-def]
        # A fresh compile holds the function in the library's final module, and the cache
        # saves the attribute with it; a library loaded from the cache holds it (attribute
        # included) only in the module its callers link, which is made from the final module.
        # Both are Numba's private attributes: numba 0.68's CPUCodeLibrary.
        lib, name = cres.library, cres.fndesc.llvm_func_name
        for module in (lib._final_module, lib._shared_module):
            if module is not None:
                with contextlib.suppress(NameError):  # not defined in this module
                    module.get_function(name).add_function_attribute("alwaysinline")
        super().add_overload(cres)


class _CFunc(CFunc):
    def enable_caching(self) -> None:
        self._cache = _LazyCache(self._pyfunc)


def kernel(fn: Callable[..., Any] | None = None, *, parallel: bool = False,
           inline: bool = False) -> Any:
    """Compile ``fn`` with fasttape's options, cached in :func:`cache_dir`.

    Use as ``@kernel``, ``@kernel(parallel=True)`` (``numba.prange`` loops on Numba's
    threads) or ``@kernel(inline=True)`` (always inlined into each caller, see
    :class:`_InlineDispatcher`; for the op dispatch functions, where a call per instruction
    would cost more than the op; callable from kernels only).  Compiles on the first call,
    like ``numba.njit``; with ``NUMBA_DISABLE_JIT=1`` returns ``fn``.
    """
    options = dict(_OPTIONS)
    if parallel:
        options["parallel"] = True
    cls = _Dispatcher
    if inline:
        cls = _InlineDispatcher
        # Only ever called from kernels: no Python entry point to compile.  And no reference
        # counting of the arrays it is handed (it only indexes them): the counts would be
        # an atomic increment and decrement per call, per instruction once inlined, which
        # Numba's pruning pass does not remove across the branches of a dispatch.
        options.update(no_cpython_wrapper=True, no_cfunc_wrapper=True, _nrt=False)

    def wrap(f: Callable[..., Any]) -> Any:
        if numba.config.DISABLE_JIT:
            return f
        disp = cls(py_func=f, locals={}, targetoptions=options)
        disp.enable_caching()
        return disp

    return wrap if fn is None else wrap(fn)


def cfunc(sig: Any, *, cache: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """Compile a C callback with signature ``sig`` (``numba.cfunc``), cached as :func:`kernel`.

    Compiles when applied: call it from code that needs the pointer, never at import.
    ``cache=False`` for a function that cannot be cached (a closure over an address).
    """

    def wrap(f: Callable[..., Any]) -> Any:
        res = _CFunc(f, numba.core.sigutils.normalize_signature(sig), locals={},
                     options={k: v for k, v in _OPTIONS.items() if k != "nopython"})
        if cache:
            res.enable_caching()
        res.compile()
        return res

    return wrap
