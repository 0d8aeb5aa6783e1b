"""Feature averaging and augmentation ensembling (docs/method.md §12) against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np

from mclr_jax.invariance import averaging

B, P = 3, 2


def view_fn(key, x):
  """Appends a nuisance α ~ U(0, 1)^P to each clean x: views are (B, dim_x + P)."""
  return jnp.concatenate([x, jax.random.uniform(key, (x.shape[0], P))], axis=-1)


def test_alpha_blind_encoder_gives_plain_features():
  x = jax.random.normal(jax.random.key(0), (B, 4))
  encode = lambda v: jnp.tanh(v[:, :4])  # ignores α
  got = jax.jit(averaging.feature_average, static_argnums=(0, 1, 4))(
      encode, view_fn, jax.random.key(1), x, 5)
  np.testing.assert_allclose(got, jnp.tanh(x), rtol=1e-6)


def test_linear_encoder_average_converges_to_mean_alpha():
  # encode(x, α) = x + α A: the average is x + ᾱ A with ᾱ → E[α] = ½, error std ~ ‖A_col‖/√(12M).
  x = jax.random.normal(jax.random.key(2), (B, 3))
  a_mat = jax.random.normal(jax.random.key(3), (P, 3))
  encode = lambda v: v[:, :3] + v[:, 3:] @ a_mat
  m = 2000
  got = np.asarray(averaging.feature_average(encode, view_fn, jax.random.key(4), x, m))
  expected = np.asarray(x + 0.5 * jnp.sum(a_mat, 0))
  std = np.sqrt(np.sum(np.asarray(a_mat) ** 2, 0) / (12 * m))
  assert np.all(np.abs(got - expected) < 5 * std)


def test_matches_explicit_loop_over_split_keys():
  x = jax.random.normal(jax.random.key(5), (B, 3))
  encode = lambda v: jnp.sin(v) * 2.0
  key = jax.random.key(6)
  loop = np.mean([np.asarray(encode(view_fn(k, x))) for k in jax.random.split(key, 3)], axis=0)
  np.testing.assert_allclose(averaging.feature_average(encode, view_fn, key, x, 3), loop,
                             rtol=1e-6)
  logits = lambda v: v @ jnp.ones((3 + P, 4)) * jnp.arange(4.0)
  loop = np.mean([np.asarray(jax.nn.softmax(logits(view_fn(k, x))))
                  for k in jax.random.split(key, 3)], axis=0)
  np.testing.assert_allclose(averaging.augmentation_ensemble(logits, view_fn, key, x, 3), loop,
                             rtol=1e-6)


def test_ensemble_of_identical_predictions_is_one_softmax():
  x = jax.random.normal(jax.random.key(7), (B, 3))
  logits = lambda v: v[:, :3] * 3.0  # ignores α
  got = averaging.augmentation_ensemble(logits, view_fn, jax.random.key(8), x, 4)
  np.testing.assert_allclose(got, jax.nn.softmax(x * 3.0), rtol=1e-6)
  np.testing.assert_allclose(np.sum(got, -1), np.ones(B), rtol=1e-6)
