"""Scalar helpers used by the op table's formulas, and the adjoint update of the sweeps.

Ordinary jitted functions: the generated dispatch module (:mod:`fasttape.kernels.dispatch`)
imports them, and the kernel cache's stamp (:mod:`fasttape.kernels.jit`) covers this file, so
an edit here recompiles every kernel that calls them.  Each formula helper exists because a
one-line expression would get IEEE special values wrong.
"""

import math

from fasttape.kernels.jit import kernel

#: The smallest positive normal float64.  Below it a number is subnormal: a product with it
#: costs an x86 microcode assist, and one that lands there has lost precision.
SMALLEST_NORMAL = 2.2250738585072014e-308

# What the generated dispatch module imports (codegen reads this list).
__all__ = ["accumulate", "add_product", "dmin", "dpow_exp", "dpowc", "dpowi", "fmax", "fmin",
           "powi", "safe_div", "sigmoid", "sign", "softplus"]


@kernel
def sign(x):
    # Not np.sign: NumPy maps -0.0 to 0.0 but Numba's np.sign keeps -0.0; fix one rule here.
    if x > 0.0:
        return 1.0
    if x < 0.0:
        return -1.0
    return x  # +-0 and NaN pass through


@kernel
def fmin(x, y):
    # NaN-propagating minimum (np.minimum semantics); on ties returns x.
    if x <= y or x != x:
        return x
    return y


@kernel
def fmax(x, y):
    # NaN-propagating maximum (np.maximum semantics); on ties returns x.
    if x >= y or x != x:
        return x
    return y


@kernel
def dmin(x, y):
    # Partial of minimum(x, y) wrt x (and of maximum(y, x) wrt x): ties split evenly, as JAX.
    if x < y:
        return 1.0
    if x == y:
        return 0.5
    return 0.0


@kernel
def safe_div(a, b):
    # a / b, but 0 where b == 0 (hypot at the origin).
    if b == 0.0:
        return 0.0
    return a / b


@kernel
def sigmoid(x):
    # Two branches so exp never overflows: exact 0/1 limits instead of NaN.  exp(-|x|) is
    # exp(-x) on the first branch and exp(x) on the second, and is computed first, as in
    # softplus: where a kernel inlines both (softplus and its partial, the sigmoid), LLVM
    # computes the exp once (autograd-west's batch: one libm call of seven fewer).
    e = math.exp(-abs(x))
    if x >= 0.0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


@kernel
def softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|.
    e = math.exp(-abs(x))
    if x != x:
        return x
    return max(x, 0.0) + math.log1p(e)


@kernel
def powi(x, y):
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


@kernel
def dpowi(x, y):
    # d/dx x ** n = n * x ** (n - 1); exactly 0 when n == 0 (so 0 ** -1 never appears).
    if y == 0.0:
        return 0.0
    return y * powi(x, y - 1.0)


@kernel
def dpowc(x, y):
    # d/dx x ** c = c * x ** (c - 1); exactly 0 when c == 0.
    if y == 0.0:
        return 0.0
    return y * x ** (y - 1.0)


@kernel
def dpow_exp(x, y, f):
    # d/dy x ** y = f * log(x); 0 where x == 0 so 0 ** y has no NaN exponent derivative (JAX).
    if x == 0.0:
        return 0.0
    return f * math.log(x)


@kernel
def accumulate(adj, p, g, d):
    # adj[p] += g * d, the update of every reverse sweep.  An exactly-zero partial is a
    # structural zero: never form 0 * inf = NaN.  A unit partial (add, sub, a selected max)
    # adds g itself: g * 1.0 and g * -1.0 are exact, and skipping the product avoids the x86
    # microcode assist that multiplying a subnormal adjoint costs (about 150 cycles;
    # additions have no such penalty).
    if d == 1.0:
        adj[p] += g
    elif d == -1.0:
        adj[p] -= g
    elif d != 0.0:
        adj[p] += g * d


@kernel(inline=True)
def add_product(t, g, d):
    # t + g * d, or t itself where the adjoint g or the partial d is exactly zero: the rules of
    # accumulate (and of the scalar sweeps' skip of a zero adjoint) as one select, which the
    # vector sweeps (batch rows, tensor elements) vectorize.  Keeps a signed zero and keeps
    # 0 * inf out of the sum exactly as the branches do.  With a literal d of 1.0 or -1.0, LLVM
    # folds the product away (t + g, t - g: bitwise the same).
    return t + g * d if g != 0.0 and d != 0.0 else t
