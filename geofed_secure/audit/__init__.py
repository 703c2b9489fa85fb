"""Privacy audit: threat models, views, attacks with one result type, metrics, the audit experiment and report.

Library use, e.g. in a privacy-attack test suite (``tests/audit/test_example.py`` is a runnable example)::

    from geofed_secure.audit import lira_vector_scores, membership_result, membership_trials

    scores = lira_vector_scores(view, membership, shadow_releases=shadows)      # [runs, candidates]
    result = membership_result(*membership_trials(scores, membership), attack="lira_release",
                               threat_model="hbc-server", target="node-a", seed=0)
    assert result.metrics["tpr_at_0.001_fpr"].value <= 0.05

``geofed audit --threat-model FILE [--plan FILE] --out DIR`` runs the whole catalogue (:mod:`.suite`) on the demo;
a plan naming a finished run (``run``, ``reference_run``) also audits that run's recorded transcript
(:mod:`.recorded_run`), in the same report. Attacks consume views only; they never reach into a node's memory.
"""

from geofed_secure.audit.attacks.extraction import extraction_metrics, fit_extraction
from geofed_secure.audit.attacks.gram_inversion import invert_gram, invert_gram_upper, procrustes_error
from geofed_secure.audit.attacks.membership import (
    lira_scores,
    lira_vector_scores,
    logit_confidence,
    rmia_scores,
    threshold_scores,
    true_label_probability,
)
from geofed_secure.audit.attacks.membership import trials as membership_trials
from geofed_secure.audit.attacks.prototypes import class_prototypes, label_inference_accuracy, prototype_statistic
from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.audit.canary_run import CanaryAudit, run_canary_audit
from geofed_secure.audit.metrics import AttackResult, Interval, membership_grid_result, membership_result
from geofed_secure.audit.plan import AuditPlan, load_plan
from geofed_secure.audit.protections import release_view
from geofed_secure.audit.recorded_run import RecordedRunAudit, audit_recorded_run
from geofed_secure.audit.threat_model import ThreatModel, load_threat_model, threat_model_from_dict
from geofed_secure.audit.views import View, load_run_view, select_view

__all__ = [
    "AttackResult",
    "AuditPlan",
    "CanaryAudit",
    "Interval",
    "RecordedRunAudit",
    "ThreatModel",
    "View",
    "audit_recorded_run",
    "class_prototypes",
    "epsilon_lower_bound",
    "extraction_metrics",
    "fit_extraction",
    "invert_gram",
    "invert_gram_upper",
    "label_inference_accuracy",
    "lira_scores",
    "lira_vector_scores",
    "load_plan",
    "load_run_view",
    "load_threat_model",
    "logit_confidence",
    "membership_grid_result",
    "membership_result",
    "membership_trials",
    "procrustes_error",
    "prototype_statistic",
    "release_view",
    "rmia_scores",
    "run_canary_audit",
    "select_view",
    "threat_model_from_dict",
    "threshold_scores",
    "true_label_probability",
]
