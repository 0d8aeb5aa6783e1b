"""On the accelerator: the matrix exponential, its action, the transport with its gradient and the
best-of-J choice against float64 host references (docs/method.md §2, §3.5, §9).

The inputs are the real ones: rotation-like operators from `init_operators` at the paper's block
size (b = 64), coefficients from typical (0.01) to the edge of the training range (docs/method.md
§9.1). The tolerances are those the CPU tests hold: float32 arithmetic with every product at the
highest precision, so the accelerator must match them whatever its default dot precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mclr_jax import manifold

pytestmark = pytest.mark.gpu

NUM_OPS, BLOCK, NUM_BLOCKS = 8, 64, 2
DIM = BLOCK * NUM_BLOCKS
# Per-example coefficient scales: typical (docs/method.md §9.1: 0.02-0.1) up to |c| ≈ 8, where
# ‖A‖₁ reaches ~100 and the Taylor path needs 6 squarings.
COEFF_SCALES = (0.01, 0.05, 0.2, 1.0, 3.0, 8.0)
# Relative error bounds (Frobenius / vector 2-norm), as in tests/manifold: Taylor in float32 within
# 1e-4 over the training range; Padé (jax.scipy.linalg.expm) only within 3e-3 on rotation-like
# generators (docs/method.md §9.4).
TOL = {"taylor": 1e-4, "pade": 3e-3}


def _problem(seed, batch=len(COEFF_SCALES)):
  """psi (M, K, b, b) float32 rotation-like; coeffs (B, M); z (B, D) ReLU features."""
  psi = jax.jit(manifold.init_operators, static_argnums=(1, 2, 3))(jax.random.key(seed), NUM_OPS,
                                                                    DIM, BLOCK)
  rng = np.random.default_rng(seed)
  scales = np.resize(np.asarray(COEFF_SCALES), batch)[:, None]
  coeffs = (scales * rng.uniform(-1, 1, (batch, NUM_OPS))).astype(np.float32)
  z = np.maximum(rng.normal(size=(batch, DIM)), 0).astype(np.float32)
  return np.asarray(psi, np.float64), coeffs, z


def _generators64(psi, coeffs):
  """A = Σ_m c_m Ψ_m in float64: (..., K, b, b)."""
  return np.einsum("...m,mkij->...kij", np.asarray(coeffs, np.float64), psi)


def _transport64(psi, coeffs, z):
  """float64 T(c) z, block by block with scipy's expm."""
  a = _generators64(psi, coeffs)
  z = np.asarray(z, np.float64).reshape(z.shape[:-1] + (NUM_BLOCKS, BLOCK))
  out = np.stack([np.stack([scipy.linalg.expm(a[i, k]) @ z[i, k] for k in range(NUM_BLOCKS)])
                  for i in range(a.shape[0])])
  return out.reshape(out.shape[:-2] + (DIM,))


def _rel(out, ref, axis=-1):
  out = np.asarray(out, np.float64)
  return np.linalg.norm(out - ref, axis=axis) / np.linalg.norm(ref, axis=axis)


@pytest.mark.parametrize("method", ["taylor", "pade"])
def test_expm_matches_float64(method, accelerator, record):
  psi, coeffs, _ = _problem(0)
  a64 = _generators64(psi, coeffs).reshape(-1, BLOCK, BLOCK)
  ref = np.stack([scipy.linalg.expm(x) for x in a64])
  a = jax.device_put(jnp.asarray(a64, jnp.float32), accelerator)
  out = jax.jit(manifold.expm, static_argnames="method")(a, method=method)
  assert out.devices() == {accelerator}
  err = _rel(out, ref, axis=(-2, -1)).max()
  record(f"expm_{method}_rel_err", err, TOL[method])
  assert err < TOL[method]


def test_expm_gradient_matches_scipy_frechet(accelerator, record):
  # The custom VJP (grad_A = L(Aᵀ, G), docs/method.md §9.2) against scipy's float64 Fréchet
  # derivative of the exact exponential, along a random direction, at 0 to 6 squarings.
  psi, coeffs, _ = _problem(1)
  a64 = _generators64(psi, coeffs).reshape(-1, BLOCK, BLOCK)
  rng = np.random.default_rng(2)
  w, direction = rng.normal(size=a64.shape), rng.normal(size=a64.shape)
  ref = np.array([np.sum(w[i] * scipy.linalg.expm_frechet(a64[i], direction[i],
                                                          compute_expm=False))
                  for i in range(len(a64))])
  grad_fn = jax.jit(jax.grad(lambda a, w: jnp.sum(w * manifold.expm(a))))
  put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), accelerator)
  grad = np.asarray(grad_fn(put(a64), put(w)), np.float64)
  out = np.sum(grad * direction, axis=(-2, -1))
  # Relative to the largest derivative, as for the values: 1e-4, which TF32 products (inputs
  # rounded to 2^-11 ≈ 5e-4) would exceed.
  err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
  record("expm_taylor_grad_rel_err", err, TOL["taylor"])
  assert err < TOL["taylor"]


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_expm_action_matches_float64(dtype, tol, accelerator, record):
  # As in best-of-J: A (J, B, K, b, b), v (B, K, b) broadcast over J. bf16 A: each entry rounded to
  # 8 bits (relative 2^-9 = 2e-3); the error of exp(A)v grows with ‖A‖ (docs/method.md §9.3), and
  # 3e-2 covers ‖A‖₁ up to ~100 (the vectors and sums stay float32).
  psi, coeffs, z = _problem(3, batch=12)
  a64 = np.stack([_generators64(psi, coeffs), _generators64(psi, coeffs[::-1])])  # J = 2
  v = z.reshape(-1, NUM_BLOCKS, BLOCK)
  ref = np.einsum("jbkpq,bkq->jbkp",
                  np.stack([scipy.linalg.expm(x) for x in a64.reshape(-1, BLOCK, BLOCK)])
                  .reshape(a64.shape), v.astype(np.float64))
  a = jax.device_put(jnp.asarray(a64, jnp.float32).astype(dtype), accelerator)
  out = jax.jit(manifold.expm_action)(a, jax.device_put(jnp.asarray(v), accelerator))
  assert out.dtype == jnp.float32
  err = _rel(out, ref).max()
  record(f"expm_action_{dtype}_rel_err", err, tol)
  assert err < tol


def test_transport_and_gradient_match_float64(accelerator, record):
  psi, coeffs, z = _problem(4)
  rng = np.random.default_rng(5)
  w = rng.normal(size=z.shape)
  d_psi, d_coeffs, d_z = (rng.normal(size=x.shape) for x in (psi, coeffs, z))
  put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), accelerator)
  args = tuple(put(x) for x in (psi, coeffs, z))

  out = jax.jit(manifold.transport)(*args)
  value_err = _rel(out, _transport64(psi, coeffs, z)).max()
  record("transport_taylor_rel_err", value_err, TOL["taylor"])
  assert value_err < TOL["taylor"]

  # d/dε Σ w·T(c + ε dc; Ψ + ε dΨ)(z + ε dz) = Σ_bk w_bk·[L(A_bk, E_bk) z_bk + exp(A_bk) dz_bk],
  # E = Σ_m (dc_m Ψ_m + c_m dΨ_m): scipy's Fréchet derivative in float64.
  a = _generators64(psi, coeffs)
  e = _generators64(psi, d_coeffs) + _generators64(d_psi, coeffs)
  blocks = lambda x: np.asarray(x, np.float64).reshape(x.shape[:-1] + (NUM_BLOCKS, BLOCK))
  zb, dzb, wb = blocks(z), blocks(d_z), blocks(w)
  ref = 0.0
  for i in range(a.shape[0]):
    for k in range(NUM_BLOCKS):
      exp_a, frechet = scipy.linalg.expm_frechet(a[i, k], e[i, k])
      ref += wb[i, k] @ (frechet @ zb[i, k] + exp_a @ dzb[i, k])
  loss = lambda psi, c, z, w: jnp.sum(w * manifold.transport(psi, c, z))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args, put(w))
  out = sum(np.sum(np.asarray(g, np.float64) * d) for g, d in zip(grads, (d_psi, d_coeffs, d_z)))
  grad_err = abs(out - ref) / abs(ref)
  record("transport_taylor_grad_rel_err", grad_err, TOL["taylor"])
  assert grad_err < TOL["taylor"]


def _selection_problem(seed, num_samples=20, batch=64):
  """A best-of-J problem with a true transformation, so that one draw is often clearly best."""
  psi, _, _ = _problem(seed)
  rng = np.random.default_rng(seed)
  mu = rng.uniform(-0.5, 0.5, (batch, NUM_OPS)).astype(np.float32)
  log_scale = np.log(rng.uniform(0.05, 0.2, (batch, NUM_OPS))).astype(np.float32)
  u = rng.uniform(-0.5, 0.5, (num_samples, batch, NUM_OPS)).astype(np.float32)
  z0 = np.maximum(rng.normal(size=(batch, DIM)), 0).astype(np.float32)
  z1 = _transport64(psi, mu + 0.1 * rng.normal(size=mu.shape), z0).astype(np.float32)
  return psi.astype(np.float32), u, mu, log_scale, z0, z1


def _selection_errors64(psi, u, mu, log_scale, z0, z1, threshold):
  """float64 score of every draw (j, b): mean_d (T(c_j) z0 − z1)², c_j the soft-thresholded Laplace
  sample of docs/method.md §3.3-§3.4."""
  psi = np.asarray(psi, np.float64)
  u, mu = np.asarray(u, np.float64), np.asarray(mu, np.float64)
  b = np.exp(np.asarray(log_scale, np.float64))
  eps = -b * np.sign(u) * np.log(np.maximum(1 - 2 * np.abs(u), 1e-6))
  c = np.where(np.abs(eps) <= threshold, 0.0, mu + np.sign(eps) * (np.abs(eps) - threshold))
  z_hat = np.stack([_transport64(psi, c[j], z0) for j in range(len(c))])
  return np.mean(np.square(z_hat - np.asarray(z1, np.float64)), axis=-1)  # (J, B)


@pytest.mark.parametrize("method, dtype, margin", [
    ("action", None, 1e-3), ("taylor", None, 1e-3), ("action", "bfloat16", 0.1)])
def test_best_of_j_selection_matches_float64(method, dtype, margin, accelerator, record):
  # Wherever the best draw's float64 error is below the second best's by more than `margin`
  # (relative), the device must pick it: float32 moves the errors by ~1e-5 relative, bf16
  # generators by ~1e-2 (docs/method.md §3.5).
  threshold = 0.01
  inputs = _selection_problem(6)
  err = _selection_errors64(*inputs, threshold)
  select = jax.jit(manifold.select_best_of_j, static_argnames=("method", "compute_dtype"))
  on_device = [jax.device_put(jnp.asarray(x), accelerator) for x in inputs]
  _, index = select(*on_device, threshold, method=method,
                    compute_dtype=None if dtype is None else jnp.dtype(dtype))
  ordered = np.sort(err, axis=0)
  separated = ordered[1] > (1 + margin) * ordered[0]
  # Enough clear-cut examples, and not always the same draw, for the check to mean something.
  assert separated.sum() >= err.shape[1] // 4
  assert len(set(np.argmin(err, axis=0)[separated].tolist())) > 1
  disagree = np.mean(np.asarray(index)[separated] != np.argmin(err, axis=0)[separated])
  record(f"best_of_j_{method}_{dtype or 'float32'}_disagreement", disagree, 0.0)
  assert disagree == 0.0


def test_default_dot_precision_leaves_taylor_transport_unchanged(accelerator, record):
  # On Ampere/Hopper GPUs a float32 dot at JAX's default precision runs in TF32 (10-bit mantissa).
  # Every product of the Taylor transport asks for the highest precision (docs/method.md §9.2), so
  # neither the default nor an explicit TF32 default may change it. Padé (jax.scipy.linalg.expm)
  # uses the default precision: its error under each setting is recorded, not asserted, as are
  # those of a plain default-precision matmul, which show whether this device uses TF32 at all.
  psi, coeffs, z = _problem(7)
  ref = _transport64(psi, coeffs, z)
  args = [jax.device_put(jnp.asarray(x), accelerator) for x in (psi.astype(np.float32), coeffs, z)]
  rng = np.random.default_rng(8)
  x64, y64 = rng.normal(size=(2, 256, 256))
  x, y = (jax.device_put(jnp.asarray(v, jnp.float32), accelerator) for v in (x64, y64))
  outputs = {}
  for precision in ("default", "tensorfloat32", "highest"):
    with jax.default_matmul_precision(None if precision == "default" else precision):
      # A fresh jit per setting: the precision is read when the function is traced.
      for method in ("taylor", "pade"):
        out = jax.jit(lambda *a, m=method: manifold.transport(*a, method=m))(*args)
        outputs[method, precision] = np.asarray(out, np.float64)
        record(f"transport_{method}_rel_err_{precision}_precision",
               _rel(out, ref).max(), TOL[method] if method == "taylor" else None)
      matmul = jax.jit(lambda a, b: a @ b)(x, y)
      record(f"plain_matmul_rel_err_{precision}_precision",
             _rel(matmul, x64 @ y64, axis=(-2, -1)), None)
  for precision in ("default", "tensorfloat32"):
    assert _rel(outputs["taylor", precision], ref).max() < TOL["taylor"]
    change = _rel(outputs["taylor", precision], outputs["taylor", "highest"]).max()
    record(f"transport_taylor_change_{precision}_vs_highest", change, 1e-6)
    assert change < 1e-6
  assert _rel(outputs["pade", "highest"], ref).max() < TOL["pade"]
