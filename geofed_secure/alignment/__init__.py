"""Anchor Gram alignment: cosine Grams, centred/debiased CKA, LAP precision weights, evaluation.

See DESIGN.md section 2: the training loss uses CENTRED CKA (the paper's uncentred eq. 2 is
kept as :func:`kernel_alignment` for reference only); evaluation reports debiased CKA and
anchor-relative cross-modal metrics.
"""

from geofed_secure.alignment.cka import (
    center_gram,
    centered_cka,
    cka_loss,
    debiased_cka,
    kernel_alignment,
)
from geofed_secure.alignment.evaluation import cross_modal_top1, mutual_knn, relative_representation
from geofed_secure.alignment.gram import cosine_gram, gram_from_upper, gram_upper
from geofed_secure.alignment.lap import lap_uncertainty, normalise_weights, precision_weight

__all__ = [
    "center_gram",
    "centered_cka",
    "cka_loss",
    "cosine_gram",
    "cross_modal_top1",
    "debiased_cka",
    "gram_from_upper",
    "gram_upper",
    "kernel_alignment",
    "lap_uncertainty",
    "mutual_knn",
    "normalise_weights",
    "precision_weight",
    "relative_representation",
]
