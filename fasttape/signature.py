"""One signature for two functions: a function that passes its arguments on to another.

``Tape.grad`` is ``value_and_grad`` less the value, ``ft.scan`` builds a ``Scan`` from its
arguments, and the random bench families take the same options.  Writing the signature out
twice would let the copies drift apart; :func:`same_arguments` writes it once and shows it
on both (``help()``, :func:`inspect.signature`, docs/api.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["same_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def same_arguments(like: Callable[..., Any], *, skip: int = 0) -> Callable[[F], F]:
    """Show the decorated ``f(*args, **kwargs)`` with the parameters of ``like``.

    Parameters
    ----------
    like : callable
        The function (or class: its constructor's parameters) whose parameters ``f`` takes
        and passes on; ``f`` keeps its own return annotation.
    skip : int
        Leave out ``like``'s first ``skip`` parameters (those ``f`` fills in itself).

    Returns
    -------
    callable
        A decorator that sets ``f.__signature__`` and returns ``f`` itself: no wrapper, so
        nothing is added to a call.  ``like`` (or what ``f`` passes the arguments to) checks
        them.

    Examples
    --------
    >>> def area(width: float, height: float = 1.0) -> float:
    ...     return width * height
    >>> @same_arguments(area)
    ... def half_area(*args: Any, **kwargs: Any) -> float:
    ...     return area(*args, **kwargs) / 2
    >>> print(inspect.signature(half_area))
    (width: 'float', height: 'float' = 1.0) -> 'float'
    """

    def decorate(f: F) -> F:
        sig = inspect.signature(like)
        params = list(sig.parameters.values())[skip:]
        own = inspect.signature(f).return_annotation
        f.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=own)
        return f

    return decorate
