"""Matrix exponentials for the transport operators (docs/method.md §2, §9).

Two ways to get exp(A) for a batch of small matrices A (..., n, n):

* `expm(a, method="taylor")` (default): a degree-16 Taylor polynomial evaluated with
  Paterson–Stockmeyer (7 matrix products), with scaling and squaring. The number of squarings s is
  chosen once for the whole batch from the largest 1-norm and the squarings run in a loop with that
  traced trip count, so only the squarings actually needed run (a vmapped `lax.cond`, as in
  `jax.scipy.linalg.expm`, pays for every branch).
  Reverse mode uses a custom VJP: grad_A = L(Aᵀ, G), the Fréchet derivative of the same
  approximant, computed with dual-matrix products (3 matmuls per product). We first tried a
  `lax.switch` over branches with a static number of squarings each (reverse-differentiable by
  plain AD), but 41 branches cost ~10 s of CPU compile time per shape and the linearised switch
  carries the union of all branches' residuals; the custom VJP compiles in about a second and keeps
  only A as residual. Forward-mode (jvp) is not supported by a custom VJP.
* `expm(a, method="pade")`: `jax.scipy.linalg.expm` (Padé + LU solve). Kept as a reference; it
  returns NaN when more than 16 squarings are needed (‖A‖₁ > 5.4·2^17, docs/method.md §9.4), and in
  float32 it is less accurate on rotation-like generators (measured relative error 1.6e-3 at ‖A‖₁ = 100
  against 2e-6 for "taylor"; see tests/manifold/test_operators.py).

`expm_action(a, v)` computes exp(A) v without forming exp(A) (truncated Taylor on A/num_steps,
applied num_steps times): it is what best-of-J selection needs, where J·B·K exponentials would
otherwise be formed only to be multiplied by one vector each.

All products use `Precision.HIGHEST`: on GPUs XLA's default float32 matmul may use TF32 (10-bit
mantissa), which would make a float32 exponential lose about three digits.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

# Degree of the Taylor polynomial and the largest ‖A/2^s‖₁ it is used on. The truncation error of
# the degree-16 series is at most θ^17/17!·1/(1−θ/18) ≈ 4e-10 for θ = 2, i.e. below float32
# roundoff (6e-8) even relative to ‖exp(A)‖ ≥ e^{−θ}.
TAYLOR_DEGREE = 16
TAYLOR_THETA = 2.0
# Cap on the number of squarings (the loop runs only the needed ones, so a high cap is free).
# Beyond θ·2^64 ≈ 4e19 float32 cannot represent exp(A) meaningfully anyway (the rounding error of
# A's entries alone, eps·‖A‖₁, exceeds 1e12 radians); such inputs are not guaranteed finite.
MAX_SQUARINGS = 64
# ‖A/num_steps‖₁ bound for `expm_action`; with 16 terms the truncation error is as above.
ACTION_THETA = 2.0

_HIGHEST = lax.Precision.HIGHEST
_matmul = functools.partial(jnp.matmul, precision=_HIGHEST)


def one_norm(a):
  """Matrix 1-norm (max column abs sum). a: (..., n, n) -> (...)."""
  return jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)


def _taylor_coefficients(degree):
  return [1.0 / math.factorial(k) for k in range(degree + 1)]


def _taylor_polynomial(a):
  """Σ_{k≤16} A^k/k! by Paterson–Stockmeyer with blocks of 4: 3 + 4 matrix products.

  p(A) = B_0 + A⁴(B_1 + A⁴(B_2 + A⁴(B_3 + A⁴ c_16 I))), B_j = Σ_{i<4} c_{4j+i} A^i.
  """
  c = _taylor_coefficients(TAYLOR_DEGREE)
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)
  a2 = _matmul(a, a)
  a3 = _matmul(a2, a)
  a4 = _matmul(a2, a2)

  def block(j):
    return c[4 * j] * eye + c[4 * j + 1] * a + c[4 * j + 2] * a2 + c[4 * j + 3] * a3

  p = block(3) + c[16] * a4
  for j in (2, 1, 0):
    p = block(j) + _matmul(a4, p)
  return p


def _dual_matmul(x, y):
  """Product of dual matrices (X, dX)(Y, dY) = (XY, X dY + dX Y): the Fréchet derivative rule."""
  return _matmul(x[0], y[0]), _matmul(x[0], y[1]) + _matmul(x[1], y[0])


def _taylor_expm_with_s(a, s, e=None):
  """r(A/2^s)^(2^s) with r the degree-16 Taylor polynomial; with `e`, also its derivative along E.

  The s squarings run in a `lax.fori_loop` with a traced trip count, so only the needed squarings
  execute. Such a loop is not reverse-differentiable, which is why `_expm_taylor` has a custom VJP
  that calls this function again with `e` (the Fréchet derivative, computed alongside).
  """
  scale = jnp.ldexp(jnp.ones((), a.dtype), -s)  # exact power of two: no rounding in the scaling
  if e is None:
    x = _taylor_polynomial(a * scale)
    return lax.fori_loop(0, s, lambda _, y: _matmul(y, y), x)
  x = _taylor_polynomial_dual(a * scale, e * scale)
  return lax.fori_loop(0, s, lambda _, y: _dual_matmul(y, y), x)


def _taylor_polynomial_dual(a, e):
  """(p(A), L_p(A, E)) for the Paterson–Stockmeyer polynomial of `_taylor_polynomial`."""
  c = _taylor_coefficients(TAYLOR_DEGREE)
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)
  zero = jnp.zeros_like(a)
  a1 = (a, e)
  a2 = _dual_matmul(a1, a1)
  a3 = _dual_matmul(a2, a1)
  a4 = _dual_matmul(a2, a2)

  def block(j):
    return tuple(c[4 * j] * i + c[4 * j + 1] * x + c[4 * j + 2] * y + c[4 * j + 3] * w
                 for i, x, y, w in zip((eye, zero), a1, a2, a3))

  p = tuple(bi + c[16] * pi for bi, pi in zip(block(3), a4))
  for j in (2, 1, 0):
    p = tuple(bi + qi for bi, qi in zip(block(j), _dual_matmul(a4, p)))
  return p


def num_squarings(a, theta=TAYLOR_THETA, max_squarings=MAX_SQUARINGS):
  """s = clip(ceil(log2(max ‖A‖₁ / θ)), 0, max_squarings), one value for the whole batch.

  a: (..., n, n) -> int32 scalar. NaN/Inf norms map to 0 (the result is NaN anyway, see expm).
  """
  norm = lax.stop_gradient(jnp.max(one_norm(a)))
  s = jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / theta))
  s = jnp.where(jnp.isfinite(s), s, 0)
  return jnp.clip(s, 0, max_squarings).astype(jnp.int32)


@jax.custom_vjp
def _expm_taylor(a):
  out, _ = _expm_taylor_fwd(a)
  return out


def _expm_taylor_fwd(a):
  s = num_squarings(a)
  out = _taylor_expm_with_s(a, s)
  # NaN guard (docs/method.md §9.2): a non-finite A must give NaN, not a plausible-looking finite
  # matrix (the training loop watches for NaN). The norm is over the whole batch, so one bad entry poisons all.
  out = jnp.where(jnp.isfinite(jnp.sum(a)), out, jnp.nan)
  return out, (a, s)


def _expm_taylor_bwd(residuals, g):
  # For a matrix function with real Taylor coefficients, the adjoint of its Fréchet derivative
  # under <X, Y> = tr(XᵀY) is L(Aᵀ, ·), so grad_A = L(Aᵀ, G). This holds for the approximant
  # r(A/2^s)^(2^s) itself (same s), so the gradient is exact for what the forward computed.
  a, s = residuals
  a_t = jnp.swapaxes(a, -1, -2)
  _, grad = _taylor_expm_with_s(a_t, s, g)
  return (grad,)


_expm_taylor.defvjp(_expm_taylor_fwd, _expm_taylor_bwd)


def expm(a, method="taylor"):
  """Matrix exponential of a batch of square matrices.

  Args:
    a: (..., n, n) float array.
    method: "taylor" (fixed-degree Taylor + scaling and squaring, see module docstring) or "pade"
      (`jax.scipy.linalg.expm`, NaN beyond 16 squarings).

  Returns:
    (..., n, n) exp(a), same dtype as a.
  """
  a = jnp.asarray(a)
  if method == "taylor":
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
      raise ValueError(f"expm needs square matrices (..., n, n); got shape {a.shape}.")
    return _expm_taylor(a)
  if method == "pade":
    return jax.scipy.linalg.expm(a)
  raise ValueError(f"expm method must be 'taylor' or 'pade'; got method={method!r}.")


def expm_action(a, v, num_terms=16, num_steps=None):
  """exp(A) v without forming exp(A): (Σ_{k≤num_terms} (A/s)^k/k!)^s v with s = num_steps.

  Memory-bound at best-of-J sizes: every Taylor term reads all of A once. So A is read as given
  (the 1/s scaling is applied to the vectors, never written out as a scaled copy of A), and A may be
  bfloat16 to halve that traffic: the vectors and the sums then stay float32 and each product
  accumulates in float32 (`preferred_element_type`), so the only bf16 rounding is A's entries and
  each term's input (relative error ~1e-2, enough to rank best-of-J candidates; see
  `select_best_of_j`'s `compute_dtype`).

  Not differentiable in reverse mode when `num_steps` is None: the step count then comes from the
  data (s = ceil(max ‖A‖₁ / θ) over the whole batch) and the loop is a `lax.while_loop` with a
  traced bound. Its only user, best-of-J selection, runs under stop-gradient.

  Args:
    a: (..., n, n) matrices (float32, float64, or bfloat16 as above).
    v: (..., n) vectors; leading axes broadcast against a's.
    num_terms: Taylor terms per step.
    num_steps: static number of steps, or None to choose from the norm.

  Returns:
    (..., n) exp(a) v, leading axes broadcast, in v's and a's promoted dtype and at least float32.
  """
  a = jnp.asarray(a)
  v = jnp.asarray(v)
  vec_dtype = jnp.promote_types(jnp.result_type(a, v), jnp.float32)
  mat_dtype = a.dtype if a.dtype == jnp.bfloat16 else vec_dtype
  a = a.astype(mat_dtype)
  batch = jnp.broadcast_shapes(a.shape[:-2], v.shape[:-1])
  v = jnp.broadcast_to(v, batch + v.shape[-1:]).astype(vec_dtype)
  if num_steps is None:
    norm = lax.stop_gradient(jnp.max(one_norm(a).astype(jnp.float32)))
    steps = jnp.ceil(norm / ACTION_THETA)
    # A non-finite norm would loop forever; one step propagates the NaN/Inf instead.
    steps = jnp.where(jnp.isfinite(steps), jnp.maximum(steps, 1.0), 1.0).astype(jnp.int32)
  else:
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1 or None; got num_steps={num_steps}.")
    steps = num_steps
  inv_steps = 1.0 / jnp.asarray(steps, vec_dtype)

  def matvec(w):
    return jnp.einsum("...ij,...j->...i", a, w.astype(mat_dtype), precision=_HIGHEST,
                      preferred_element_type=vec_dtype)

  def taylor_step(_, w):
    term = w
    out = w
    for k in range(1, num_terms + 1):
      term = matvec(term) * (inv_steps / k)
      out = out + term
    return out

  return lax.fori_loop(0, steps, taylor_step, v)
