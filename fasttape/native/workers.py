"""Compiling a tape's pieces in worker processes: llvmlite runs one LLVM call at a time per
process (a global lock around its C API), so only processes compile side by side.

Each worker is a Python running :func:`main`, started with :mod:`subprocess` (never
:mod:`multiprocessing`, whose ``spawn`` re-imports the caller's main module, and whose
``fork`` would copy Numba's threads): it reads requests from stdin and answers on stdout,
one at a time.  Request: little-endian ``uint64`` length, ``uint8`` optimization level, the
module's IR text (UTF-8).  Answer: ``uint64`` length, ``uint8`` status (0: object code
follows; 1: an error message follows).  Every process compiles the same IR to the same
object code (:func:`fasttape.native.machine.compile_module`).
"""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

__all__ = ["compile_in_workers", "main"]

_HEAD = struct.Struct("<QB")
# ``-c``, not ``-m``: this module is imported with the package, and runpy would run it twice.
_START = "from fasttape.native.workers import main; main()"


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the stream ended in the middle of a message")
    return data


def main() -> None:
    """The worker's loop: requests from stdin, answers to stdout, until stdin closes."""
    from fasttape.native.machine import compile_module

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return  # the parent closed the pipe: done
        n, level = _HEAD.unpack(head)
        text = _read_exact(stdin, n).decode()
        try:
            out, status = compile_module(text, level), 0
        except Exception as exc:  # reported to the parent, which raises it
            out, status = f"{type(exc).__name__}: {exc}".encode(), 1
        stdout.write(_HEAD.pack(len(out), status) + out)
        stdout.flush()


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        # The worker imports this very copy of fasttape (a checkout run from its folder, too).
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", _START],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def compile(self, text: str, level: int) -> bytes:
        data = text.encode()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(_HEAD.pack(len(data), level) + data)
            self.proc.stdin.flush()
            n, status = _HEAD.unpack(_read_exact(self.proc.stdout, _HEAD.size))
            out = _read_exact(self.proc.stdout, n)
        except (OSError, EOFError) as exc:
            raise RuntimeError(f"a native compile worker stopped (exit code "
                               f"{self.proc.poll()}): {exc}") from exc
        if status:
            raise RuntimeError(f"a native compile worker failed: {out.decode()}")
        return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def compile_in_workers(jobs: Iterator[tuple[str, int]], processes: int) -> Iterator[bytes]:
    """Object code of each ``(module text, level)``, in order, compiled by ``processes``
    workers; at most two texts per worker in flight, so a large tape's texts are never all
    in memory."""
    idle: queue.Queue[_Worker] = queue.Queue()
    workers = [_Worker() for _ in range(processes)]
    for w in workers:
        idle.put(w)

    def run(text: str, level: int) -> bytes:
        w = idle.get()
        try:
            return w.compile(text, level)
        finally:
            idle.put(w)

    try:
        with ThreadPoolExecutor(processes) as pool:
            window: deque[Future[bytes]] = deque()
            for text, level in jobs:
                window.append(pool.submit(run, text, level))
                if len(window) >= 2 * processes:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
    finally:
        for w in workers:
            w.close()

