"""Declarative threat models (``threat_models/*.toml``): who the adversary is and what it observes.

A threat model names an adversary ROLE, its BEHAVIOUR and what it OBSERVES; :func:`geofed_secure.audit.views.select_view`
turns it into the exact set of transcript messages (and final-model files) that adversary sees. Attacks get views only.

Roles (what the role sees in a transcript is fixed by the role; ``observes`` can only narrow it):

| role | sees |
|---|---|
| ``server`` | every message it sends or receives (all uploads as they arrive: clear, masked or encrypted) |
| ``node`` | the messages one node (``nodes = ["id"]``) sends or receives, including the broadcast global state |
| ``colluding`` | the server's view plus the listed nodes' views (a coalition pooling everything it saw) |
| ``observer`` | nothing of the transcript; only the released final model (``final/`` of a run) |

``behaviour = "malicious"`` marks an adversary that may deviate (the secure-aggregation adversary catalogue,
``geofed_secure.secagg.masking.adversary``, lists what honest nodes refuse); views are selected the same way for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofed_secure.config import did_you_mean, read_toml
from geofed_secure.errors import ConfigError

ROLES = ("server", "node", "colluding", "observer")
BEHAVIOURS = ("honest-but-curious", "malicious")
OBSERVABLES = ("transcript", "final_model")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreatModel:
    name: str
    description: str
    role: str
    behaviour: str
    nodes: tuple[str, ...] = ()  # role node: exactly one; colluding: the server's accomplices (>= 1)
    observes: tuple[str, ...] = OBSERVABLES

    def __post_init__(self) -> None:
        where = f"threat model {self.name!r}"
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ConfigError("name", f"{where}: must be 1+ characters of [A-Za-z0-9._-]")
        if self.role not in ROLES:
            raise ConfigError("adversary.role", f"{where}: must be one of {ROLES}, got {self.role!r}{did_you_mean(self.role, ROLES)}")
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError("adversary.behaviour", f"{where}: must be one of {BEHAVIOURS}, got {self.behaviour!r}"
                              f"{did_you_mean(self.behaviour, BEHAVIOURS)}")
        if len(set(self.nodes)) != len(self.nodes) or any(not isinstance(n, str) or not n for n in self.nodes):
            raise ConfigError("adversary.nodes", f"{where}: node ids must be distinct non-empty strings, got {list(self.nodes)}")
        if self.role == "node" and len(self.nodes) != 1:
            raise ConfigError("adversary.nodes", f"{where}: role 'node' names exactly one node, got {list(self.nodes)}")
        if self.role == "colluding" and not self.nodes:
            raise ConfigError("adversary.nodes", f"{where}: role 'colluding' names the nodes that collude with the server")
        if self.role in ("server", "observer") and self.nodes:
            raise ConfigError("adversary.nodes", f"{where}: role {self.role!r} takes no nodes; use role 'colluding'")
        unknown = sorted(set(self.observes) - set(OBSERVABLES))
        if unknown or not self.observes:
            raise ConfigError("observes", f"{where}: must list some of {OBSERVABLES}, got {list(self.observes)}"
                              f"{did_you_mean(unknown[0], OBSERVABLES) if unknown else ''}")
        if self.role == "observer" and "transcript" in self.observes:
            raise ConfigError("observes", f"{where}: an outside observer sees no transcript; observes = [\"final_model\"]")

    @property
    def parties(self) -> frozenset[str]:
        """The transcript parties whose messages this adversary sees (sent or received)."""
        if "transcript" not in self.observes or self.role == "observer":
            return frozenset()
        return frozenset((*(("server",) if self.role in ("server", "colluding") else ()), *self.nodes))


_TOP = {"name", "description", "adversary", "observes"}
_ADVERSARY = {"role", "behaviour", "nodes"}


def threat_model_from_dict(data: dict[str, Any], *, source: str | None = None) -> ThreatModel:
    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(field, problem, source=source)

    for key in data:
        if key not in _TOP:
            raise fail(key, f"unknown key{did_you_mean(key, _TOP)}; known: {sorted(_TOP)}")
    adversary = data.get("adversary")
    if not isinstance(adversary, dict):
        raise fail("adversary", "a [adversary] table with role and behaviour is required")
    for key in adversary:
        if key not in _ADVERSARY:
            raise fail(f"adversary.{key}", f"unknown key{did_you_mean(key, _ADVERSARY)}; known: {sorted(_ADVERSARY)}")
    for key, value in (("name", data.get("name")), ("description", data.get("description", "")),
                       ("adversary.role", adversary.get("role")), ("adversary.behaviour", adversary.get("behaviour"))):
        if not isinstance(value, str):
            raise fail(key, f"must be a string, got {value!r}")
    nodes = adversary.get("nodes", [])
    observes = data.get("observes", list(OBSERVABLES))
    for key, value in (("adversary.nodes", nodes), ("observes", observes)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(key, f"must be a list of strings, got {value!r}")
    try:
        return ThreatModel(name=data["name"], description=data.get("description", ""), role=adversary["role"],
                           behaviour=adversary["behaviour"], nodes=tuple(nodes), observes=tuple(observes))
    except ConfigError as exc:
        raise fail(exc.field, str(exc).split(": ", 1)[1]) from None


def load_threat_model(path: str | Path) -> ThreatModel:
    """Read and validate a threat-model TOML file; errors name the field and the file."""
    return threat_model_from_dict(read_toml(path, option="--threat-model"), source=str(path))
