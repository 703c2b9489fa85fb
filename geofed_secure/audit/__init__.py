"""Privacy audit: threat models, views of a recorded transcript, attacks, metrics (issue 5: the foundation; no runner yet).

Library use, e.g. in a privacy-attack test suite::

    from geofed_secure.audit import load_threat_model, load_run_view, invert_gram_upper, membership_result

    view = load_run_view(load_threat_model("threat_models/hbc-server.toml"), "runs/geofed-demo-...")
    for record, upload in view.messages(type_="NodeUpdate"):   # present only in a --secure none run
        embeddings = invert_gram_upper(upload.payload["gram_upper"], n_anchors=50)

Attacks consume views only; they never reach into a node's memory.
"""

from geofed_secure.audit.canary import epsilon_lower_bound
from geofed_secure.audit.canary_run import CanaryAudit, run_canary_audit
from geofed_secure.audit.attacks.gram_inversion import invert_gram, invert_gram_upper, procrustes_error
from geofed_secure.audit.metrics import AttackResult, Interval, membership_result
from geofed_secure.audit.threat_model import ThreatModel, load_threat_model, threat_model_from_dict
from geofed_secure.audit.views import View, load_run_view, select_view

__all__ = [
    "AttackResult", "CanaryAudit", "Interval", "run_canary_audit", "ThreatModel", "View", "epsilon_lower_bound", "invert_gram", "invert_gram_upper", "load_run_view",
    "load_threat_model", "membership_result", "procrustes_error", "select_view", "threat_model_from_dict",
]
