"""Running one piece of work on several Python threads at once (the thread-safety tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(work: Callable[[int], None], n: int) -> None:
    """Call ``work(t)`` for ``t = 0 .. n - 1``, each on its own thread, and wait for all.

    The threads are all started before any is joined, so the calls overlap.  An exception in
    ``work`` does not propagate (``threading`` prints it): record results and check them
    after the call.
    """
    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
