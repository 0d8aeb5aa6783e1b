"""mclr_jax.manifold.operators: initialisation, generator and transport (docs/method.md §2)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from absl.testing import parameterized

from mclr_jax.manifold import generator, transport
from mclr_jax.manifold import init_operators as init_operators_eager


# Test inputs come from numpy: each jax.random call with a new shape costs a CPU compile.
def _uniform(seed, shape, low, high):
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)

# Training range of the coefficients (docs/method.md §9.1): |μ| ≤ 5.05 plus tails ≤ 13.8·b, b ≤ 0.2.
COEFF_MAX = 5.05 + 13.8 * 0.2

# Jitted: one compile per shape is cheaper on CPU than op-by-op dispatch of the loops.
transport_jit = jax.jit(transport, static_argnames="method")
init_operators = jax.jit(init_operators_eager, static_argnums=(1, 2, 3),
                         static_argnames=("kind", "real_range", "imag_range"))


def _transport_reference(psi, coeffs, z):
  """float64 numpy/scipy: per sample and block, scipy.linalg.expm(Σ c_m Ψ[m,k]) @ z_k."""
  psi, coeffs, z = (np.asarray(x, np.float64) for x in (psi, coeffs, z))
  num_ops, num_blocks, b, _ = psi.shape
  out = np.zeros(z.shape)
  for i in range(z.shape[0]):
    for k in range(num_blocks):
      a = np.tensordot(coeffs[i], psi[:, k], axes=1)
      out[i, b * k:b * (k + 1)] = scipy.linalg.expm(a) @ z[i, b * k:b * (k + 1)]
  return out


def _rel_err(out, ref):
  return np.linalg.norm(np.asarray(out, np.float64) - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


def test_stable_init_structure():
  psi = np.asarray(init_operators(jax.random.PRNGKey(0), 3, 16, 8, kind="stable"))
  chex.assert_shape(psi, (3, 2, 8, 8))
  for m in range(3):
    for k in range(2):
      r, w = psi[m, k, 0, 0], psi[m, k, 1, 0]
      assert abs(r) <= 0.5e-4 and abs(w) <= 3.0
      expected = np.kron(np.eye(4), np.array([[r, -w], [w, r]]))
      np.testing.assert_array_equal(psi[m, k], expected.astype(np.float32))


def test_stable_init_ranges_are_uniform():
  # r ~ U(±real_range/2), ω ~ U(±imag_range/2): check the range and the U(-a, a) variance a²/3.
  psi = np.asarray(init_operators(jax.random.PRNGKey(1), 500, 16, 4))
  r, w = psi[:, :, 0, 0].ravel(), psi[:, :, 1, 0].ravel()
  assert np.abs(r).max() <= 0.5e-4 and np.abs(w).max() <= 3.0
  np.testing.assert_allclose(np.var(w), 9.0 / 3, rtol=0.1)
  np.testing.assert_allclose(np.var(r), (0.5e-4) ** 2 / 3, rtol=0.1)


def test_gaussian_init_std():
  # Same shape as the transport test's dictionary (jax.random.normal is slow to compile on CPU).
  psi = np.asarray(init_operators(jax.random.PRNGKey(2), 16, 16, 8, kind="gaussian"))
  chex.assert_shape(psi, (16, 2, 8, 8))
  # The sample std of n = 2048 normals has relative standard error 1/√(2n) ≈ 1.6%.
  np.testing.assert_allclose(psi.std(), 1 / 8, rtol=0.05)
  assert abs(psi.mean()) < 4 * (1 / 8) / np.sqrt(psi.size)


@pytest.mark.parametrize("kwargs, match", [
    (dict(feature_dim=16, block_dim=6), "block_dim"),
    (dict(feature_dim=15, block_dim=5), "block_dim must be even"),
    (dict(feature_dim=16, block_dim=8, kind="orthogonal"), "kind"),
])
def test_init_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    init_operators_eager(jax.random.PRNGKey(0), 2, **kwargs)


def test_generator_is_linear_combination():
  psi = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32)
  c = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  out = generator(jnp.asarray(psi), jnp.asarray(c))
  np.testing.assert_allclose(out, np.einsum("bm,mkij->bkij", c, psi), rtol=1e-5, atol=1e-6)


def test_transport_identity_at_zero_coefficients():
  psi = init_operators(jax.random.PRNGKey(3), 4, 16, 8)
  z = _normal(4, (3, 16))
  out = transport_jit(psi, jnp.zeros((3, 4)), z)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(z))


# jax.scipy.linalg.expm ("pade") in float32 is much less accurate than the Taylor path on
# rotation-like generators: measured relative errors 9e-6 at ‖A‖₁ = 10 and 1.6e-3 at ‖A‖₁ = 100
# for a 2×2 rotation generator (Taylor: 6e-7 and 2e-6). Its tolerance records that, not a goal.
@pytest.mark.parametrize("method, tol", [("taylor", 1e-4), ("pade", 3e-3)])
@pytest.mark.parametrize("kind", ["stable", "gaussian"])
def test_transport_matches_scipy_over_training_range(method, tol, kind):
  # M = 16 operators, coefficients uniform over the whole training range ±(5.05 + 2.76): ‖A‖₁ up
  # to ~100 for the stable (ω up to ±3) dictionary.
  psi = init_operators(jax.random.PRNGKey(5), 16, 16, 8, kind=kind)
  coeffs = _uniform(6, (6, 16), -COEFF_MAX, COEFF_MAX)
  # Include one sample at typical magnitudes (docs/method.md §9: 0.02-0.1) and one at the extreme.
  coeffs = coeffs.at[0].multiply(0.01).at[1].set(COEFF_MAX)
  z = jax.nn.relu(_normal(7, (6, 16)))  # ReLU features (docs/method.md §2)
  out = transport_jit(psi, coeffs, z, method=method)
  ref = _transport_reference(psi, coeffs, z)
  np.testing.assert_array_less(_rel_err(out, ref), tol)


def test_transport_matches_scipy_at_full_block_size():
  psi = init_operators(jax.random.PRNGKey(8), 4, 128, 64)
  coeffs = _uniform(9, (2, 4), -COEFF_MAX, COEFF_MAX)
  z = jax.nn.relu(_normal(10, (2, 128)))
  out = transport_jit(psi, coeffs, z)
  np.testing.assert_array_less(_rel_err(out, _transport_reference(psi, coeffs, z)), 1e-4)


def test_transport_composition_of_commuting_operators():
  # Stable-init operators commute blockwise, so T(c) T(c') = T(c + c').
  psi = init_operators(jax.random.PRNGKey(11), 5, 16, 8)
  c1 = _uniform(115, (4, 5), -3.0, 3.0)
  c2 = _uniform(116, (4, 5), -3.0, 3.0)
  z = _normal(117, (4, 16))
  composed = transport_jit(psi, c2, transport_jit(psi, c1, z))
  direct = np.asarray(transport_jit(psi, c1 + c2, z), np.float64)
  np.testing.assert_array_less(_rel_err(composed, direct), 1e-4)


def test_transport_broadcasts_samples_over_batch():
  psi = init_operators(jax.random.PRNGKey(13), 3, 16, 4)
  coeffs = _normal(14, (2, 5, 3))  # (J, B, M)
  z = _normal(15, (5, 16))  # (B, D)
  out = transport_jit(psi, coeffs, z)
  chex.assert_shape(out, (2, 5, 16))
  loop = jnp.stack([transport_jit(psi, coeffs[j], z) for j in range(2)])
  # Same computation except that the squaring count comes from the (J, B) batch maximum.
  chex.assert_trees_all_close(out, loop, rtol=1e-5, atol=1e-5)


def test_transport_bf16_input_computes_in_float32():
  psi = init_operators(jax.random.PRNGKey(16), 3, 16, 8)
  coeffs = _uniform(17, (4, 3), -2.0, 2.0)
  z = _normal(18, (4, 16)).astype(jnp.bfloat16)
  out = transport_jit(psi, coeffs, z)
  assert out.dtype == jnp.bfloat16
  ref = _transport_reference(psi, coeffs, np.asarray(z, np.float64))
  # Only the final cast rounds: bf16 has an 8-bit mantissa (relative 2^-8).
  np.testing.assert_array_less(_rel_err(out, ref), 2 ** -8)


def test_transport_rejects_wrong_feature_dim():
  psi = init_operators(jax.random.PRNGKey(0), 2, 16, 8)
  with pytest.raises(ValueError, match="z last axis"):
    transport(psi, jnp.zeros((1, 2)), jnp.zeros((1, 12)))


@pytest.mark.parametrize("wrt", [0, 1, 2])
def test_transport_gradients_match_finite_differences(wrt):
  # float64 directional derivatives (central differences) for coeffs, psi and z.
  rng = np.random.default_rng(20 + wrt)
  psi = np.asarray(init_operators(jax.random.PRNGKey(19), 3, 8, 4), np.float64)
  psi += 0.3 * rng.normal(size=psi.shape)  # break commutativity
  coeffs = rng.uniform(-3, 3, size=(2, 3))
  z = rng.normal(size=(2, 8))
  w = rng.normal(size=(2, 8))
  args = [psi, coeffs, z]
  direction = rng.normal(size=args[wrt].shape)
  with jax.enable_x64(True):
    def loss(x):
      full = list(map(jnp.asarray, args))
      full[wrt] = x
      return jnp.sum(jnp.asarray(w) * transport(*full))
    loss = jax.jit(loss)
    x = jnp.asarray(args[wrt])
    grad = np.asarray(jax.grad(loss)(x))
    h = 1e-6
    fd = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
  np.testing.assert_allclose(np.sum(grad * direction), float(fd), rtol=1e-6)


class TransportVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("taylor", "pade")
  def test_transport_same_under_jit(self, method):
    psi = init_operators(jax.random.PRNGKey(21), 3, 8, 4)
    # Moderate ‖A‖₁ (≤ 9), where both methods are accurate to 1e-5 in float32.
    coeffs = _uniform(22, (2, 3), -1.0, 1.0)
    z = _normal(23, (2, 8))
    out = self.variant(transport, static_argnames="method")(psi, coeffs, z, method=method)
    ref = _transport_reference(psi, coeffs, z)
    np.testing.assert_array_less(_rel_err(out, ref), 1e-5)
