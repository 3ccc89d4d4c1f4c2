"""Scalar helpers used by the op table's formulas.

These are plain Python functions that Numba can compile.  :mod:`fasttape.kernels.codegen`
copies their source verbatim into the generated kernel module, so that a change here changes
that file and invalidates Numba's on-disk cache (Numba does not notice edits in other modules).
Each helper exists because a one-line expression would get IEEE special values wrong.
"""

import math


def _sign(x):
    # Not np.sign: NumPy maps -0.0 to 0.0 but Numba's np.sign keeps -0.0; fix one rule here.
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x  # +-0 and NaN pass through


def _fmin(x, y):
    # NaN-propagating minimum (np.minimum semantics); on ties returns x.
    if x <= y or x != x:
        return x
    return y


def _fmax(x, y):
    # NaN-propagating maximum (np.maximum semantics); on ties returns x.
    if x >= y or x != x:
        return x
    return y


def _dmin(x, y):
    # Partial of minimum(x, y) wrt x (and of maximum(y, x) wrt x): ties split evenly, as JAX.
    if x < y:
        return 1.0
    if x == y:
        return 0.5
    return 0.0


def _safe_div(a, b):
    # a / b, but 0 where b == 0 (hypot at the origin).
    if b == 0.0:
        return 0.0
    return a / b


def _sigmoid(x):
    # Two branches so exp never overflows: exact 0/1 limits instead of NaN.  exp(-|x|) is
    # exp(-x) on the first branch and exp(x) on the second, and is computed first, as in
    # _softplus: where a kernel inlines both (softplus and its partial, the sigmoid), LLVM
    # computes the exp once (autograd-west's batch: one libm call of seven fewer).
    e = math.exp(-abs(x))
    if x >= 0.0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|.
    e = math.exp(-abs(x))
    if x != x:
        return x
    return max(x, 0.0) + math.log1p(e)


def _powi(x, y):
    # x ** n for integral n by binary exponentiation (JAX's integer_pow).  Numba's own
    # float ** int raises ZeroDivisionError for 0 ** -n, which a kernel must never do.
    n = int(y)
    m = -n if n < 0 else n
    acc = 1.0
    base = x
    while m > 0:
        if m & 1:
            acc *= base
        base *= base
        m >>= 1
    if n < 0:
        return 1.0 / acc
    return acc


def _dpowi(x, y):
    # d/dx x ** n = n * x ** (n - 1); exactly 0 when n == 0 (so 0 ** -1 never appears).
    if y == 0.0:
        return 0.0
    return y * _powi(x, y - 1.0)


def _dpowc(x, y):
    # d/dx x ** c = c * x ** (c - 1); exactly 0 when c == 0.
    if y == 0.0:
        return 0.0
    return y * x ** (y - 1.0)


def _dpow_exp(x, y, f):
    # d/dy x ** y = f * log(x); 0 where x == 0 so 0 ** y has no NaN exponent derivative (JAX).
    if x == 0.0:
        return 0.0
    return f * math.log(x)
