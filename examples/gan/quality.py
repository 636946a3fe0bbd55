"""Sample quality in the feature space of a Fashion-MNIST classifier.

Both numbers are computed from per-batch sums, so the batches can be sharded over devices
and processes and no process needs all 10,000 images on the host:

* Frechet distance (FID, here in the space of the 256 last hidden activations of the
  classifier in models.py, not of Inception-v3): fit a Gaussian to the features of each
  image set and compute ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))``. 0 for two sets
  with the same mean and covariance.
* Inception score (of the same classifier): ``exp(E_x KL(p(y|x) || p(y)))``; between 1 and
  the number of classes (10), high when each image is classified confidently and the
  classes are balanced. Computed over the whole set (no splits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def batch_sums(features: jax.Array, log_probs: jax.Array) -> dict[str, jax.Array]:
    """Sufficient statistics of one batch.

    Args:
      features: float32 ``(batch, d)`` classifier features.
      log_probs: float32 ``(batch, classes)`` classifier log-probabilities.

    Returns:
      float32 sums over the batch: ``count`` (), ``features`` (d,), ``outer`` (d, d),
      ``probs`` (classes,) and ``neg_entropy`` () (the sum of ``p log p``).
    """
    probs = jnp.exp(log_probs)
    return {"count": jnp.asarray(features.shape[0], jnp.float32),
            "features": jnp.sum(features, axis=0),
            "outer": features.T @ features,
            "probs": jnp.sum(probs, axis=0),
            "neg_entropy": jnp.sum(probs * log_probs)}


def add_sums(batches: list[dict]) -> dict[str, np.ndarray]:
    """The sum of several ``batch_sums`` results, in float64 on the host."""
    host = jax.device_get(batches)
    return {k: np.sum([np.asarray(b[k], np.float64) for b in host], axis=0) for k in host[0]}


def gaussian(sums: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of the features (float64)."""
    n = sums["count"]
    mean = sums["features"] / n
    cov = (sums["outer"] - n * np.outer(mean, mean)) / (n - 1)
    return mean, cov


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """Frechet distance between the Gaussians ``N(mean1, cov1)`` and ``N(mean2, cov2)``.

    ``tr((C1 C2)^(1/2))`` is computed as ``tr((S C2 S)^(1/2))`` with ``S = C1^(1/2)``: the
    two matrices have the same eigenvalues, and the second is symmetric, so ``eigh`` is
    stable where a general matrix square root of ``C1 C2`` can turn complex.
    """
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def inception_score(sums: dict[str, np.ndarray]) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of ``p(y|x)`` over the set."""
    n = sums["count"]
    marginal = sums["probs"] / n
    marginal_neg_entropy = np.sum(marginal * np.log(np.clip(marginal, 1e-30, None)))
    return float(np.exp(sums["neg_entropy"] / n - marginal_neg_entropy))


def fid_and_is(sums: dict[str, np.ndarray], reference: dict[str, np.ndarray]
               ) -> tuple[float, float]:
    """``(Frechet distance to reference, inception score)`` of the set behind ``sums``."""
    return frechet_distance(*gaussian(sums), *gaussian(reference)), inception_score(sums)
