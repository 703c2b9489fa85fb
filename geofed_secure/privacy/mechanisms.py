"""The privatised precision weight (eq. 6 under DP): a Poisson-subsampled Gaussian sum of bounded per-sample terms.

The LAP weight ``p_k = mean_x clip(1 / u(x), 1, U)`` is a statistic of the node's PRIVATE samples. Under DP the node
releases instead

    p_k~ = clip(1 + h + (sum_{x in S} (clip(1 / u(x), 1, U) - 1 - h) + N(0, (sigma h)^2)) / E|S|, 1, U),  h = (U - 1) / 2

where ``S`` is a Poisson sample of the private training set at rate ``q = lap_samples / n`` and ``E|S| = q n``.
Each sampled record adds a term in ``[-h, h]``, a ball of radius ``h`` around 0 (the value an unsampled record
adds); centring the terms on ``h`` halves that radius compared with the raw terms in ``[0, U - 1]``. Under
replace-one adjacency a substituted record moves the sum by at most ``2 h = U - 1``, and the release is the
Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` relative to radius ``h``, the pair the
replace-one accountants of :mod:`geofed_secure.privacy.accounting` compose with the DP-SGD steps. Adding back
``h`` times the public EXPECTED count, dividing by it and clipping are post-processing (unbiased: ``E sum_S (t - h) =
q sum (t - h)``). The embeddings ``u`` uses come from the already-private model and the public anchors, so only the
sum over private samples needs the noise.
"""

from __future__ import annotations

import numpy as np
import torch

from geofed_secure.alignment.lap import clipped_inverse
from geofed_secure.errors import ConfigError, DataError
from geofed_secure.privacy.noise import gaussian_noise


def private_precision_weight(uncertainty: np.ndarray, *, expected_count: float, max_inverse: float,
                             noise_multiplier: float, generator: torch.Generator, secure_mode: bool) -> float:
    """Release the node's precision weight with Gaussian noise of std ``noise_multiplier * (max_inverse - 1) / 2``.

    ``uncertainty``: LAP uncertainties of the Poisson-sampled private samples (may be empty).
    Returns a float in ``[1, max_inverse]``.
    """
    if not expected_count > 0:
        raise ConfigError("training.lap_samples", f"expected sample count must be positive, got {expected_count}")
    if not noise_multiplier >= 0:
        raise ConfigError("privacy.noise_multiplier", f"must be >= 0, got {noise_multiplier}")
    u = np.asarray(uncertainty, np.float64).reshape(-1)
    if not np.isfinite(u).all() or (u.size and (u.min() < 0 or u.max() > 1)):
        raise DataError("LAP uncertainties must be finite values in [0, 1]")
    radius = (max_inverse - 1.0) / 2
    total = float((clipped_inverse(u, max_inverse) - 1.0 - radius).sum()) if u.size else 0.0
    noise = float(gaussian_noise(noise_multiplier * radius, torch.zeros(1, dtype=torch.float64), generator, secure_mode)[0])
    return float(np.clip(1.0 + radius + (total + noise) / expected_count, 1.0, max_inverse))
