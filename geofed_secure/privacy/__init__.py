"""Record-level differential privacy on the node: DP-SGD (Opacus) for GeoDoRA, the privatised precision weight,
and one budget per node (PRV or RDP accountant) that the node refuses to exceed.

What leaves a DP node each round, and why each is covered by its (epsilon, delta):

| upload | derived from private data through | covered by |
|---|---|---|
| ``p_k * B_k`` (weighted GeoDoRA B) | DP-SGD steps (clipped, noised) | the DP-SGD steps; product with p_k is post-processing |
| ``p_k * m_k`` (only with ``magnitude = "averaged"``) | DP-SGD steps | as above |
| Gram upper triangle of the PUBLIC anchors | the DP-trained adapter + backbone on public inputs | post-processing |
| precision weight ``p_k`` | a Poisson-sampled sum over private samples | its own Gaussian mechanism, composed in the same accountant |

The public anchor (CKA) gradient is added after clipping and noise; it depends only on public data and on
parameters that are already DP outputs. The node's dataset size is treated as public (as in Opacus).
"""

# What leaves a DP node each round and what covers it (summary.json ``privacy.covers``; the table above).
PRIVACY_COVERAGE = {
    "weighted B (p_k * B_k)": "DP-SGD steps (per-sample clipped, Gaussian noise); the product with the released p_k is post-processing",
    "weighted m (only with magnitude = averaged)": "DP-SGD steps, as B",
    "Gram upper triangle of the public anchors": "post-processing: the DP-trained model applied to public inputs",
    "precision weight p_k": "its own Poisson-subsampled Gaussian sum (sensitivity U_max - 1), composed in the same accountant",
}

from geofed_secure.privacy.accounting import (  # noqa: E402
    PrivacyLedger, PrivacyPlan, calibrate_noise_multiplier, canonical_history, epsilon_of, make_accountant,
)
from geofed_secure.privacy.dora_opacus import OpacusDoraLinearLayer, prepare_geodora_for_opacus
from geofed_secure.privacy.mechanisms import private_precision_weight

__all__ = [
    "PRIVACY_COVERAGE", "PrivacyLedger", "PrivacyPlan", "calibrate_noise_multiplier", "canonical_history", "epsilon_of", "make_accountant",
    "OpacusDoraLinearLayer", "prepare_geodora_for_opacus", "private_precision_weight",
]
