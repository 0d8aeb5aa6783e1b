"""The geometry probe of one model (docs/method.md §14): what the projector keeps of the directions
in which augmentations and the data move the encoder's features, and how invariant each is.

`probe(model, raw, key)` gathers, for N held-out inputs, the arrays that `geometry.geometry_report`
turns into numbers, with the model's own augmentation distribution (config.data; a sweep over
augmentation strengths passes a model whose config carries the scaled ranges):

  h = f(x) (N, D), z = g(h) (N, K); G_x = ∂g/∂h at h (N, K, D);
  Uᵃᵘᵍ (N, D, p): augmentation directions. Spirograph, exactly: the columns ∂h/∂α_j of the
      encoder's Jacobian with respect to the p = 6 nuisance parameters at the rendered (θ, α).
      Images: the top `tangent_dim` principal directions of the V augmented encodings of x;
  Uᵈᵃᵗᵃ (N, D, q): data directions. Spirograph, exactly: ∂h/∂θ_j = J_f ∂x/∂θ_j for the 4 content
      parameters. Images: local PCA, the top `tangent_dim` principal directions of h's
      `k_neighbours` nearest clean neighbours (and itself);
  Uʳᵃⁿᵈ (N, D, p): random orthonormal directions, the control;
  h_α (N, V, D), z_α = g(h_α): the encodings of V random training views of each input.

and reports, each a mean over the N inputs:

  retention ρ(U) = ‖G_x U‖²_F / (‖U‖²_F · ‖G_x‖²_F / D)      for U = Uᵃᵘᵍ, Uᵈᵃᵗᵃ, Uʳᵃⁿᵈ
      (retention["aug"], ["data"], ["random"]): how much of the squared length of U the projector
      passes, relative to an average direction. For random directions E ρ = 1 for every G_x, so
      retention["random"] ≈ 1 is a control, not a finding; ρ < 1 means the projector damps U.
      The exact tangents are not orthonormalised: ρ(Uᵃᵘᵍ) weights each nuisance parameter by how
      far it moves h;
  relative retention ‖G_x U‖²_F / (‖G_x‖²_op ‖U‖²_F) ∈ [0, 1], and the principal angles between
      G_x's top right-singular subspace and each tangent;
  invariance ratio IR(r) = E_x tr Cov_α r(t(x, α)) / tr Cov_{x,α} r(t(x, α)),  r = h, z, ẑ = z/‖z‖
      (invariance_ratio["encoder"], ["projector"], ["projector_normalized"]): 0 when r ignores
      the augmentation, ≈ 1 when r ignores the input;
  spectra (effective rank, participation ratio, rank@τ) of h, z and ẑ (docs/method.md §14.1).
"""

import functools

import jax
import jax.numpy as jnp

from mclr_jax.evaluate import geometry
from mclr_jax.evaluate.model import SpirographInputs, map_chunks


@functools.partial(jax.jit, static_argnames=("backbone",))
def _spirograph_tangents(variables, inputs, theta, alpha, *, backbone):
  """h (B, D), ∂h/∂α (B, D, p) and ∂h/∂θ (B, D, n_c) at the rendered (θ, α)."""
  encode = lambda t, a: backbone.apply(variables, inputs.render(t, a), train=False).astype(
      jnp.float32)

  def columns(fn, x):
    # Rows are independent (eval-mode BatchNorm), so one JVP with the tangent e_j on every row
    # gives every row's column j of its own Jacobian.
    basis = jnp.eye(x.shape[-1], dtype=x.dtype)
    tangent = lambda e: jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))[1]
    return jax.vmap(tangent, out_axes=-1)(basis)

  return (encode(theta, alpha), columns(lambda a: encode(theta, a), alpha),
          columns(lambda t: encode(t, alpha), theta))


def spirograph_tangents(model, theta, alpha, chunk_size: int = 128):
  """Exact tangents of a Spirograph model at the rendered (θ (N, n_c), α (N, n_a)):
  (h (N, D), ∂h/∂α (N, D, n_a), ∂h/∂θ (N, D, n_c))."""
  fn = functools.partial(_spirograph_tangents, model.variables("backbone"), model.inputs,
                         backbone=model.networks.backbone)
  return map_chunks(lambda i, t, a: fn(t, a), [theta, alpha], chunk_size)


@functools.partial(jax.jit, static_argnames=("projector",))
def _projector_jacobians(variables, h, *, projector):
  """G_x = ∂g/∂h for each row of h (B, D) -> (B, K, D)."""
  row = lambda v: projector.apply(variables, v[None], train=False)[0].astype(jnp.float32)
  return geometry.projector_jacobians(row, h)


def probe(model, raw, key, *, num_views: int = 32, tangent_dim: int = 4,
          k_neighbours: int = 20) -> dict:
  """The geometry report of one model on N held-out raw inputs (module docstring).

  Args:
    model: an EvalModel; its config.data sets the augmentation distribution.
    raw: (N, ...) uint8 test images, or Spirograph content parameters θ (N, n_c).
    key: PRNG key (the views, Spirograph's α, the random directions).
    num_views: V augmented views per input (for IR, and the image augmentation tangent).
    tangent_dim: directions of the sample-based (image) augmentation and data tangents.
    k_neighbours: neighbourhood of the local-PCA data tangent (images).

  Returns:
    `geometry.geometry_report` (JSON-serialisable) plus "tangents": how each U was obtained.
  """
  k_views, k_alpha, k_random = jax.random.split(key, 3)
  inputs = model.inputs
  if isinstance(inputs, SpirographInputs):
    theta = jnp.asarray(raw, jnp.float32)
    h, aug, data = spirograph_tangents(model, theta, inputs.sample_alpha(k_alpha, theta.shape[:-1]))
    how = {"aug": "exact: ∂h/∂α", "data": "exact: ∂h/∂θ = J_f ∂x/∂θ"}
  else:
    h = model.features(raw, num_copies=0)
    aug = data = None
    how = {"aug": f"sample PCA: top {tangent_dim} of {num_views} views",
           "data": f"local PCA: top {tangent_dim} of {k_neighbours} neighbours"}
  h_views = model.view_features(raw, k_views, num_views)  # (N, V, D)
  n, v, d = h_views.shape
  if aug is None:
    aug = geometry.sample_tangents(h_views, tangent_dim)
    data = geometry.data_tangents_knn(h, k_neighbours, tangent_dim)
  z_views = model.project(h_views.reshape(n * v, d)).reshape(n, v, -1)
  fn = functools.partial(_projector_jacobians, model.variables("projector"),
                         projector=model.networks.projector)
  jacobians = map_chunks(lambda i, x: fn(x), [h], chunk_size=256)
  report = geometry.geometry_report(h, model.project(h), jacobians=jacobians, aug_tangents=aug,
                                    data_tangents=data, h_aug=h_views, z_aug=z_views, key=k_random,
                                    num_random=aug.shape[-1])
  report["tangents"] = dict(how, random=f"{aug.shape[-1]} random orthonormal directions")
  return report
