"""Record-level differential privacy on the node: DP-SGD (Opacus) for GeoDoRA, the privatised precision weight,
and one budget per node that the node refuses to exceed.

Adjacency: REPLACE-ONE. Two datasets of a node are neighbours when they have the same size n and differ in one record
(any record substituted by any other). The node's dataset size n, its sampling rates and noise multipliers are
public (``summary.json`` reports them). The budget is accounted with Google's ``dp_accounting`` (PLD accountant with
``NeighboringRelation.REPLACE_ONE``, default) or an RDP accountant of the same replace-one pair
(:mod:`geofed_secure.privacy.accounting`).

Against whom the epsilon holds depends on where the noise comes from (:mod:`geofed_secure.privacy.noise`): by
default a secret each node draws from ``os.urandom`` and keeps in its own checkpoint, so the server, the other nodes
and outside observers cannot regenerate the noise; ``secure_mode`` draws fresh OS entropy every step; the opt-in
``shared_seed_noise`` (reproducible experiments) derives it from the federation seed, and the epsilon then does NOT
hold against the server or the other nodes. ``summary.json`` ``privacy.holds_against`` says which.

What leaves a DP node each round, and why each is covered by its (epsilon, delta):

| upload | derived from private data through | covered by |
|---|---|---|
| ``p_k * B_k`` (weighted GeoDoRA B) | DP-SGD steps (clipped, noised) | the DP-SGD steps; product with p_k is post-processing |
| ``p_k * m_k`` (only with ``magnitude = "averaged"``) | DP-SGD steps | as above |
| Gram upper triangle of the PUBLIC anchors | the DP-trained adapter + backbone on public inputs | post-processing |
| precision weight ``p_k`` | a Poisson-sampled sum over private samples | its own Gaussian mechanism, composed in the same accountant |

The public anchor (CKA) gradient is added after clipping and noise; it depends only on public data and on
parameters that are already DP outputs.
"""

# What leaves a DP node each round and what covers it (summary.json ``privacy.covers``; the table above).
PRIVACY_COVERAGE = {
    "weighted B (p_k * B_k)": "DP-SGD steps (per-sample clipped, Gaussian noise); the product with the released p_k is post-processing",
    "weighted m (only with magnitude = averaged)": "DP-SGD steps, as B",
    "Gram upper triangle of the public anchors": "post-processing: the DP-trained model applied to public inputs",
    "precision weight p_k": "its own Poisson-subsampled Gaussian sum of per-record terms centred in [-(U_max - 1)/2, (U_max - 1)/2] "
                            "(a substituted record moves it by at most U_max - 1), composed in the same accountant",
}

from geofed_secure.privacy.accounting import (
    ACCOUNTANT_DESCRIPTIONS,
    ADJACENCY,
    ADJACENCY_STATEMENT,
    PrivacyLedger,
    PrivacyPlan,
    calibrate_noise_multiplier,
    canonical_history,
    epsilon_of,
    replace_one_rdp,
)
from geofed_secure.privacy.dora_opacus import OpacusDoraLinearLayer, prepare_geodora_for_opacus
from geofed_secure.privacy.mechanisms import private_precision_weight
from geofed_secure.privacy.noise import DOES_NOT_HOLD_AGAINST, HOLDS_AGAINST, DPRandomness, randomness_source

__all__ = [
    "ACCOUNTANT_DESCRIPTIONS",
    "ADJACENCY",
    "ADJACENCY_STATEMENT",
    "DOES_NOT_HOLD_AGAINST",
    "HOLDS_AGAINST",
    "PRIVACY_COVERAGE",
    "DPRandomness",
    "OpacusDoraLinearLayer",
    "PrivacyLedger",
    "PrivacyPlan",
    "calibrate_noise_multiplier",
    "canonical_history",
    "epsilon_of",
    "prepare_geodora_for_opacus",
    "private_precision_weight",
    "randomness_source",
    "replace_one_rdp",
]
