"""Typed run configuration, loaded from TOML and validated once, with errors that name the field.

Sections: ``[federation]``, ``[model]``, ``[training]``, ``[data]`` and one ``[[nodes]]`` table per node.
See ``examples/demo.toml`` for every key with its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geofed_secure.config.specs import (
    ENCODER_INPUTS,
    ENCODER_KINDS,
    SOURCE_KINDS,
    TOKEN_LAYOUTS,
    AnchorsSection,
    EncoderSpec,
    SourceSpec,
)
from geofed_secure.errors import ConfigError

MODALITIES = ("image", "text", "tabular", "dna")
MODES = ("federated", "local-only")


@dataclass(frozen=True, kw_only=True)
class FederationSection:
    id: str = "geofed-demo"
    seed: int = 0
    rounds: int = 6
    mode: str = "federated"  # "local-only": nodes never aggregate (baseline)


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    backbone: str = "minilm-l6"  # or a local Hugging Face checkpoint directory
    rank: int = 8
    target_modules: tuple[str, ...] = ("query", "value")
    use_dora: bool = True
    magnitude: str = "local"  # "local" | "averaged"


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    local_steps: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    lambda_geo: float = 1.5  # chosen by the demo sweep of lambda 1-4 (docs/alignment.md, 'Choosing lambda')
    anchor_batch: int = 64  # anchors per step in the geometric loss (a random subset; 0 = all B)
    gram_scale_floor: float = 0.05  # collapse guard: relu(1 - ||HGH||_F / (B floor))^2 joins the geometric loss; 0 = off
    collapse_scale: float = 0.01  # a node whose anchor Gram scale ||HGH||_F / B falls below this refuses its upload
    max_inverse_uncertainty: float = 100.0  # clip of 1/u in the precision weight (eq. 6)
    lap_samples: int = 256  # private samples used for the precision weight
    contrastive_temperature: float = 0.1  # bridge nodes only


@dataclass(frozen=True, kw_only=True)
class DataSection:
    anchors_per_class: int = 20  # B = 10 * anchors_per_class public anchors (5: nodes collapsed, see docs/alignment.md)
    eval_per_class: int = 10
    max_pool: int = 2000  # private samples encoded per modality
    test_fraction: float = 0.2
    dirichlet_alpha: float = 0.5  # label skew between nodes of one modality
    eval_samples: int = 200  # held-out samples per node used by the evaluator
    cache_dir: str = ""  # "" -> $GEOFED_CACHE or ~/.cache/geofed-secure/features


@dataclass(frozen=True, kw_only=True)
class SecureSection:
    protocol: str = "masking"  # "masking" (secagg-v1) | "ckks" (ckks-v1) | "none" (uploads in clear: tests only)
    # masking: 0 -> automatic: Z_(2^32) (4 bytes a parameter) when the sum of n clipped inputs cannot wrap at a step no
    # coarser than float32 at the clip bound (n <= 63 always, n <= 127 for some clips; fixedpoint.automatic_ring_bits),
    # else Z_(2^64); 32 or 64 forces it (64: the aggregate exact to ~1e-11 at clip 1e4)
    ring_bits: int = 0
    clip: float = 10000.0  # bound on every uploaded coordinate (weighted B, Gram, weight); counted when hit
    threshold: int = 0  # masking: shares needed per owner; 0 -> majority of its share holders
    neighbors: int = 0  # masking: SecAgg+ neighbourhood degree; 0 -> complete graph
    rounds_per_epoch: int = 8  # masking: rounds served by one key set-up
    colluders: int = 0  # masking: nodes that may collude with a malicious server (threshold >= 3 + colluders)


@dataclass(frozen=True, kw_only=True)
class PrivacySection:
    """Record-level differential privacy on every node (DP-SGD + privatised precision weight), one budget per node."""

    epsilon: float = 0.0  # per-node budget for the whole run; 0 = no DP (epsilon infinite)
    delta: float = 1e-5
    accountant: str = "pld"  # replace-one adjacency: "pld" (dp_accounting privacy loss distributions, tight) | "rdp"
    max_grad_norm: float = 1.0  # per-sample clipping bound C of DP-SGD
    grad_sample_mode: str = "ghost"  # Opacus per-sample clipping: "ghost" (norms only, two backward passes) | "hooks"
    weight_budget_share: float = 0.1  # the precision-weight releases alone may cost this share of epsilon
    # Where DP noise and Poisson sampling come from (privacy/noise.py). Default: a secret drawn on each node and kept in
    # its own checkpoint (resume is bit-identical; the server cannot regenerate the noise).
    secure_mode: bool = False  # true: fresh OS entropy every step, floating-point-robust sampler (production; not reproducible)
    shared_seed_noise: bool = False  # true: from the federation seed (experiments only: DP then does NOT hold against the server)

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    id: str
    modality: str  # demo nodes: one of MODALITIES; nodes with their own ``data``: any name the operator chooses
    paired_modality: str = ""  # bridge node: locally paired data of a second modality
    anchor_noise: float = 0.0  # deliberate degradation: Gaussian noise (x feature std) on this node's anchors
    shuffle_anchors: bool = False  # null control: anchors in a node-specific random order
    # Bring your own (docs/own-federation.md): all of data, anchors and encoder, or none of them (a demo node).
    data: SourceSpec | None = None  # the node's private records
    anchors: SourceSpec | None = None  # the node's copy of the public anchors of its modality; label = concept
    eval_anchors: SourceSpec | None = None  # held-out public anchors; absent -> anchors.holdout_per_concept of ``anchors``
    encoder: EncoderSpec | None = None
    labels: tuple[str, ...] = ()  # the node's task labels (its head is local); () -> the concepts
    # An own bridge node: row i of paired_data is the same sample as row i of data, in modality paired_modality.
    paired_data: SourceSpec | None = None
    paired_encoder: EncoderSpec | None = None

    @property
    def own_data(self) -> bool:
        return self.data is not None


DEMO_NODES = (
    NodeSpec(id="clinic-images-a", modality="image"),
    NodeSpec(id="clinic-images-b", modality="image"),
    NodeSpec(id="lab-notes-text", modality="text"),
    NodeSpec(id="registry-tabular", modality="tabular"),
    NodeSpec(id="genomics-dna", modality="dna"),
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    federation: FederationSection = field(default_factory=FederationSection)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    data: DataSection = field(default_factory=DataSection)
    secure: SecureSection = field(default_factory=SecureSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    anchors: AnchorsSection = field(default_factory=AnchorsSection)
    nodes: tuple[NodeSpec, ...] = DEMO_NODES

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def replace(self, **sections: Any) -> RunConfig:
        return dataclasses.replace(self, **sections)

    def with_overrides(self, *, rounds: int | None = None, seed: int | None = None, protocol: str | None = None,
                       nodes: str | None = None) -> RunConfig:
        """This configuration with the overrides ``geofed run`` and ``geofed deploy`` share (None keeps a value):
        ``--rounds``, ``--seed``, ``--secure`` and ``--nodes`` (a spec string, :func:`nodes_from_spec`)."""
        fed = self.federation
        if rounds is not None:
            fed = dataclasses.replace(fed, rounds=rounds)
        if seed is not None:
            fed = dataclasses.replace(fed, seed=seed)
        secure = self.secure if protocol is None else dataclasses.replace(self.secure, protocol=protocol)
        return self.replace(federation=fed, secure=secure, nodes=self.nodes if nodes is None else nodes_from_spec(nodes))


def label_count(config: RunConfig, node: NodeSpec) -> int:
    """How many task labels ``node``'s (local) head has: its own label set, else the concepts, else the demo's digits."""
    if not node.own_data:
        return 10
    return len(node.labels or config.anchors.concepts)


def needed_modalities(config: RunConfig) -> list[str]:
    """Every modality whose data the configured nodes draw from (their own, and a demo bridge node's paired one: an own
    bridge node brings its paired records itself), sorted."""
    return sorted({n.modality for n in config.nodes}
                  | {n.paired_modality for n in config.nodes if n.paired_modality and not n.own_data})


_SECTIONS = {"federation": FederationSection, "model": ModelSection, "training": TrainingSection, "data": DataSection,
             "secure": SecureSection, "privacy": PrivacySection, "anchors": AnchorsSection}
_NESTED: dict[type, dict[str, type]] = {NodeSpec: {"data": SourceSpec, "anchors": SourceSpec, "eval_anchors": SourceSpec,
                                                   "encoder": EncoderSpec, "paired_data": SourceSpec,
                                                   "paired_encoder": EncoderSpec}}


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word`` (a misspelt key or value), else ``""``.

    >>> did_you_mean("lamda_geo", ["lambda_geo", "lr"])
    "; did you mean 'lambda_geo'?"
    """
    hint = difflib.get_close_matches(word, list(choices), n=1) if isinstance(word, str) else []
    return f"; did you mean '{hint[0]}'?" if hint else ""


def _coerce(cls: type, table: Mapping[str, Any], where: str, source: str | None) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(where, f"must be a table, got {type(table).__name__}", source=source)
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            hint = did_you_mean(key, known)
            raise ConfigError(f"{where}.{key}", "unknown key" + (hint or f"; known keys: {sorted(known)}"), source=source)
        default = known[key].default
        expected = type(default) if default is not dataclasses.MISSING else str
        nested = _NESTED.get(cls, {}).get(key)
        if nested is not None:  # None: absent (a config.json written by to_dict())
            values[key] = None if value is None else _coerce(nested, value, f"{where}.{key}", source)
            continue
        if expected is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}", f"must be a list of strings, got {value!r}", source=source)
            value = tuple(value)
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}", f"must be {expected.__name__}, got {type(value).__name__} {value!r}", source=source)
        values[key] = value
    missing = [n for n, f in known.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in values]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}", "is required", source=source)
    return cls(**values)


def config_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> RunConfig:
    unknown = set(data) - set(_SECTIONS) - {"nodes"}
    if unknown:
        key = min(unknown)
        raise ConfigError(key, f"unknown section{did_you_mean(key, [*_SECTIONS, 'nodes'])}; known: {sorted(_SECTIONS) + ['nodes']}",
                          source=source)
    sections = {name: _coerce(cls, data.get(name, {}), name, source) for name, cls in _SECTIONS.items()}
    if "nodes" in data:
        if not isinstance(data["nodes"], list) or not data["nodes"]:
            raise ConfigError("nodes", "must be a non-empty array of [[nodes]] tables", source=source)
        sections["nodes"] = tuple(_coerce(NodeSpec, t, f"nodes[{i}]", source) for i, t in enumerate(data["nodes"]))
    try:
        return RunConfig(**sections)
    except ConfigError as exc:
        if source and exc.source is None:
            raise ConfigError(exc.field, str(exc).split(": ", 1)[1], source=source) from None
        raise


def read_toml(path: str | Path, *, option: str) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a :class:`ConfigError` naming the command-line
    ``option`` and the file (a folder, binary data, text that is not UTF-8, a file without read permission)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(option, f"file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(option, f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(option, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(option, f"{path} is not UTF-8 text (byte {exc.start}); is it the TOML file you meant?") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(option, f"{path} is not valid TOML: {exc}") from None


def load_config(path: str | Path) -> RunConfig:
    """The configuration in a TOML file; relative paths of own nodes' files resolved against the file's folder."""
    config = config_from_dict(read_toml(path, option="--config"), source=str(path))
    return resolve_paths(config, Path(path).resolve().parent)


SECURE_PROTOCOLS = ("masking", "ckks", "none")


def _positive(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(name, f"must be a positive finite number, got {value!r}")


# Upper bounds on sizes: far above any federation this code can train on one machine, low enough that a typo (an extra
# zero, 1e8) is refused at load time instead of exhausting memory in round 1.
LIMITS = {
    "federation.rounds": 100_000, "model.rank": 1024, "training.local_steps": 1_000_000, "training.batch_size": 65_536,
    "training.lap_samples": 1_000_000, "data.anchors_per_class": 10_000, "data.eval_per_class": 10_000,
    "data.max_pool": 10_000_000, "data.eval_samples": 1_000_000,
}
MAX_SEED = 2**63 - 1  # the largest TOML integer; torch and numpy take it


def _sized(cfg: RunConfig, name: str, minimum: int = 1) -> None:
    section, key = name.split(".")
    value = getattr(getattr(cfg, section), key)
    if not minimum <= value <= LIMITS[name]:
        raise ConfigError(name, f"must be an integer in [{minimum}, {LIMITS[name]:,}], got {value:,}")


def _check_id(value: str, name: str) -> None:
    """Ids name folders (the default output folder, a node's log folder): a safe file name, never '..' or hidden."""
    if not (1 <= len(value) <= 64 and value[0].isascii() and value[0].isalnum()
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in value)):
        raise ConfigError(name, f"{value!r} must be 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit")


def validate(cfg: RunConfig) -> None:
    """Check ranges and cross-field rules; raise :class:`ConfigError` naming the field."""
    if cfg.federation.mode not in MODES:
        raise ConfigError("federation.mode", f"must be one of {MODES}, got {cfg.federation.mode!r}{did_you_mean(cfg.federation.mode, MODES)}")
    _check_id(cfg.federation.id, "federation.id")
    if not 0 <= cfg.federation.seed <= MAX_SEED:
        raise ConfigError("federation.seed", f"must be an integer in [0, 2**63 - 1], got {cfg.federation.seed}")
    for name in LIMITS:
        _sized(cfg, name, minimum=2 if name == "data.eval_per_class" else 1)
    if cfg.model.magnitude not in ("local", "averaged"):
        raise ConfigError("model.magnitude", f"must be 'local' or 'averaged', got {cfg.model.magnitude!r}")
    if cfg.model.magnitude == "averaged" and not cfg.model.use_dora:
        raise ConfigError("model.magnitude", "'averaged' needs model.use_dora = true (plain LoRA has no magnitude)")
    if cfg.training.batch_size > cfg.data.max_pool:
        raise ConfigError("training.batch_size", f"{cfg.training.batch_size} is above data.max_pool = {cfg.data.max_pool}, "
                          "the most private samples a modality (and so any node) has")
    _positive(cfg.training.lr, "training.lr")
    _positive(cfg.training.contrastive_temperature, "training.contrastive_temperature")
    if not (math.isfinite(cfg.training.lambda_geo) and cfg.training.lambda_geo >= 0):
        raise ConfigError("training.lambda_geo", f"must be >= 0, got {cfg.training.lambda_geo}")
    if cfg.training.anchor_batch < 0 or 0 < cfg.training.anchor_batch < 4:
        raise ConfigError("training.anchor_batch", f"must be 0 (all anchors) or >= 4, got {cfg.training.anchor_batch}")
    for name in ("gram_scale_floor", "collapse_scale"):
        value = getattr(cfg.training, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"training.{name}", f"must be in [0, 1) (a share of the largest cosine-Gram scale), got {value}")
    if not (math.isfinite(cfg.training.max_inverse_uncertainty) and cfg.training.max_inverse_uncertainty >= 1):
        raise ConfigError("training.max_inverse_uncertainty", "must be a finite number >= 1 (1/u is at least 1; the clip "
                          f"bounds it), got {cfg.training.max_inverse_uncertainty}")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError("data.test_fraction", f"must be in (0, 1), got {cfg.data.test_fraction}")
    _positive(cfg.data.dirichlet_alpha, "data.dirichlet_alpha")
    if cfg.data.max_pool < 50 or cfg.data.eval_samples < 10:
        raise ConfigError("data.max_pool", "needs max_pool >= 50 and eval_samples >= 10")
    seen: set[str] = set()
    own = [n.own_data for n in cfg.nodes]
    if any(own) and not all(own):
        demo = cfg.nodes[own.index(False)].id
        raise ConfigError(f"nodes[{own.index(False)}].data", f"node {demo!r} has no data table while other nodes bring their "
                          "own: a federation is either the built-in demo or every node's own data; give every node "
                          "[nodes.data], [nodes.anchors] and [nodes.encoder] (docs/own-federation.md)")
    if any(own):
        _validate_own(cfg)
    for i, node in enumerate(cfg.nodes):
        where = f"nodes[{i}]"
        if node.own_data:
            _check_id(node.modality, f"{where}.modality")
        elif node.modality not in MODALITIES:
            raise ConfigError(f"{where}.modality", f"unknown modality {node.modality!r}{did_you_mean(node.modality, MODALITIES)}; "
                              f"the demo's are {MODALITIES}; a node with its own data (a [nodes.data] table) may name any")
        if not node.own_data and node.paired_modality and (node.paired_modality not in MODALITIES
                                                           or node.paired_modality == node.modality):
            raise ConfigError(f"{where}.paired_modality", f"must be another known modality, got {node.paired_modality!r}")
        if node.id in seen:
            raise ConfigError(f"{where}.id", f"duplicate node id {node.id!r}")
        _check_id(node.id, f"{where}.id")
        if not (math.isfinite(node.anchor_noise) and node.anchor_noise >= 0):
            raise ConfigError(f"{where}.anchor_noise", f"must be >= 0, got {node.anchor_noise}")
        seen.add(node.id)
    if not cfg.nodes:
        raise ConfigError("nodes", "a federation needs at least one node")
    _validate_secure(cfg)
    _validate_privacy(cfg)


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {choices}, got {value!r}{did_you_mean(value, choices)}")


BUILTIN_ENCODERS = ("image", "text", "tabular", "dna", "numeric-columns")


def _validate_own(cfg: RunConfig) -> None:
    """Nodes that bring their own data: the tables every such node needs, concepts, label sets, encoders."""
    concepts = cfg.anchors.concepts
    if len(concepts) < 2 or len(set(concepts)) != len(concepts) or not all(concepts):
        raise ConfigError("anchors.concepts", f"must name at least 2 distinct, non-empty concepts (the public anchor "
                          f"set's; every anchor file's concept column takes these values), got {list(concepts)}")
    if not 0 <= cfg.anchors.holdout_per_concept <= 10_000:
        raise ConfigError("anchors.holdout_per_concept", f"must be in [0, 10000], got {cfg.anchors.holdout_per_concept}")
    for i, node in enumerate(cfg.nodes):
        where = f"nodes[{i}]"
        for part in ("anchors", "encoder"):
            if getattr(node, part) is None:
                raise ConfigError(f"{where}.{part}", f"node {node.id!r} brings its own data, so it needs a [nodes.{part}] "
                                  "table too (docs/own-federation.md)")
        if bool(node.paired_modality) != (node.paired_data is not None) or (node.paired_data is None) != (node.paired_encoder is None):
            raise ConfigError(f"{where}.paired_data", "an own bridge node gives paired_modality, paired_data (row i = the "
                              "same sample as row i of data) and paired_encoder together, or none of them")
        if node.paired_modality:
            _check_id(node.paired_modality, f"{where}.paired_modality")
            if node.paired_modality == node.modality:
                raise ConfigError(f"{where}.paired_modality", f"must differ from the node's modality {node.modality!r}")
        if node.labels and (len(node.labels) < 2 or len(set(node.labels)) != len(node.labels) or not all(node.labels)):
            raise ConfigError(f"{where}.labels", f"must name at least 2 distinct, non-empty task labels, got {list(node.labels)}")
        if node.eval_anchors is None and cfg.anchors.holdout_per_concept == 0:
            raise ConfigError("anchors.holdout_per_concept", f"is 0 and node {node.id!r} has no eval_anchors: evaluation "
                              "needs held-out anchors; set holdout_per_concept >= 1 or give [nodes.eval_anchors]")
        for part in ("data", "anchors", "eval_anchors", "paired_data"):
            source: SourceSpec | None = getattr(node, part)
            if source is None:
                continue
            _choice(source.kind, SOURCE_KINDS, f"{where}.{part}.kind")
            if not source.path:
                raise ConfigError(f"{where}.{part}.path", "is empty; name the file or folder to read")
            if source.limit < 0:
                raise ConfigError(f"{where}.{part}.limit", f"must be >= 0 (0 = every record), got {source.limit}")
        for encoder_part, data_part in (("encoder", node.data), ("paired_encoder", node.paired_data)):
            if getattr(node, encoder_part) is not None:
                _validate_encoder(getattr(node, encoder_part), data_part, f"{where}.{encoder_part}")


def _validate_encoder(enc: EncoderSpec, data: SourceSpec | None, where: str) -> None:
    """One ``[nodes.encoder]`` (or ``paired_encoder``) table; ``data``: the records it encodes."""
    _choice(enc.kind, ENCODER_KINDS, f"{where}.kind")
    _choice(enc.input, ENCODER_INPUTS, f"{where}.input")
    _choice(enc.layout, TOKEN_LAYOUTS, f"{where}.layout")
    needs = {"builtin": ("name", "a built-in encoder: " + ", ".join(BUILTIN_ENCODERS)),
             "hf": ("path", "a local Hugging Face checkpoint directory (nothing is downloaded)"),
             "callable": ("factory", "'package.module:function' returning an encoder")}.get(enc.kind)
    if needs and not getattr(enc, needs[0]):
        raise ConfigError(f"{where}.{needs[0]}", f"is required for kind {enc.kind!r}: {needs[1]}")
    if enc.kind == "builtin":
        _choice(enc.name, BUILTIN_ENCODERS, f"{where}.name")
    if enc.kind == "callable" and enc.factory.count(":") != 1:
        raise ConfigError(f"{where}.factory", f"must be 'package.module:function', got {enc.factory!r}")
    if (data is not None and data.kind == "features") != (enc.kind == "precomputed"):
        raise ConfigError(f"{where}.kind", "precomputed token features (data kind 'features') go with encoder kind "
                          "'precomputed', and only they do")
    if not 3 <= enc.max_length <= 8192 or not 1 <= enc.batch_size <= 65_536:
        raise ConfigError(where, f"max_length must be in [3, 8192] and batch_size in [1, 65536], got {enc.max_length} "
                          f"and {enc.batch_size}")


def resolve_paths(cfg: RunConfig, base: str | Path) -> RunConfig:
    """``cfg`` with every relative data, anchor and checkpoint path (own nodes' files, encoders, ``model.backbone``)
    made absolute against ``base`` (the config file's folder): a config means the same files wherever it runs."""
    root = Path(base)

    def fix(spec: Any) -> Any:
        if spec is None:
            return None
        changes = {k: str(root / getattr(spec, k)) for k in ("path", "labels_file")
                   if hasattr(spec, k) and getattr(spec, k) and not Path(getattr(spec, k)).expanduser().is_absolute()}
        return dataclasses.replace(spec, **changes) if changes else spec

    parts = ("data", "anchors", "eval_anchors", "encoder", "paired_data", "paired_encoder")
    nodes = tuple(dataclasses.replace(n, **{p: fix(getattr(n, p)) for p in parts}) if n.own_data else n for n in cfg.nodes)
    model = cfg.model
    if model.backbone != ModelSection.backbone and not Path(model.backbone).expanduser().is_absolute():
        model = dataclasses.replace(model, backbone=str(root / model.backbone))
    return cfg.replace(nodes=nodes, model=model)


ACCOUNTANTS = ("pld", "rdp")
GRAD_SAMPLE_MODES = ("ghost", "hooks")


def _validate_privacy(cfg: RunConfig) -> None:
    dp = cfg.privacy
    if not (math.isfinite(dp.epsilon) and dp.epsilon >= 0):
        raise ConfigError("privacy.epsilon", f"must be a finite number >= 0 (0 = no DP), got {dp.epsilon!r}")
    if not 0 < dp.delta < 1:
        raise ConfigError("privacy.delta", f"must be in (0, 1), typically below 1 / (records per node); got {dp.delta!r}")
    if dp.accountant == "prv":
        raise ConfigError("privacy.accountant", "'prv' (Opacus PRV accountant, add/remove adjacency only) was replaced by 'pld' "
                          "(dp_accounting privacy loss distributions under replace-one adjacency, which is what geofed delivers: "
                          "the dataset size n is public); use 'pld' or 'rdp'")
    if dp.accountant not in ACCOUNTANTS:
        raise ConfigError("privacy.accountant", f"must be one of {ACCOUNTANTS}, got {dp.accountant!r}")
    if dp.secure_mode and dp.shared_seed_noise:
        raise ConfigError("privacy.shared_seed_noise", "cannot be combined with secure_mode: secure_mode draws fresh OS entropy, "
                          "shared_seed_noise derives the noise from the federation seed; choose one")
    _positive(dp.max_grad_norm, "privacy.max_grad_norm")
    if not 0 < dp.weight_budget_share < 1:
        raise ConfigError("privacy.weight_budget_share", f"must be in (0, 1), got {dp.weight_budget_share!r}")
    if dp.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError("privacy.grad_sample_mode", f"must be one of {GRAD_SAMPLE_MODES}, got {dp.grad_sample_mode!r}")
    if dp.enabled:
        bridges = [n.id for n in cfg.nodes if n.paired_modality]
        if bridges:
            raise ConfigError("privacy.epsilon", f"DP-SGD does not support bridge nodes yet ({bridges[0]}): their InfoNCE loss "
                              "couples the samples of a batch, so per-sample clipping would not bound one record's influence; "
                              "remove paired_modality or run without DP")


def _validate_secure(cfg: RunConfig) -> None:
    sec = cfg.secure
    if sec.protocol not in SECURE_PROTOCOLS:
        raise ConfigError("secure.protocol", f"must be one of {SECURE_PROTOCOLS}, got {sec.protocol!r}"
                          f"{did_you_mean(sec.protocol, SECURE_PROTOCOLS)}")
    if sec.protocol != "none" and cfg.federation.mode == "federated" and len(cfg.nodes) < 3:
        raise ConfigError("secure.protocol", f"secure aggregation needs >= 3 nodes (with {len(cfg.nodes)}, a node learns "
                          "the others' uploads from the sum); add nodes or use protocol 'none' for a test federation")
    if sec.ring_bits not in (0, 32, 64):
        raise ConfigError("secure.ring_bits", f"must be 0 (automatic), 32 or 64, got {sec.ring_bits}")
    _positive(sec.clip, "secure.clip")
    if sec.threshold < 0 or 0 < sec.threshold < 3 or sec.neighbors < 0 or sec.neighbors == 1:
        raise ConfigError("secure.threshold", "threshold must be 0 (automatic) or >= 3, neighbors 0 (complete graph) or >= 2")
    if not 1 <= sec.rounds_per_epoch <= 1024:
        raise ConfigError("secure.rounds_per_epoch", f"must be in [1, 1024], got {sec.rounds_per_epoch}")
    if sec.protocol == "masking":  # the colluder bound and the threshold/degree it needs (secagg-v1 SPEC section 6)
        from geofed_secure.secagg.masking import MaskingParameters
        from geofed_secure.secagg.masking.fixedpoint import automatic_ring_bits
        from geofed_secure.secagg.masking.spec import default_threshold, holders_per_owner
        MaskingParameters(ring_bits=sec.ring_bits or automatic_ring_bits(len(cfg.nodes), sec.clip), clip=sec.clip, threshold=sec.threshold or None,
                          degree=sec.neighbors or None, rounds_per_epoch=sec.rounds_per_epoch, colluders=sec.colluders)
        if cfg.federation.mode != "federated":
            return
        # What epoch planning would refuse in round 1 (after the data is loaded), checked here with every node present.
        n = len(cfg.nodes)
        if sec.neighbors > n - 1:
            raise ConfigError("secure.neighbors", f"SecAgg+ degree {sec.neighbors} is above the {n - 1} other nodes a node "
                              f"can have in a federation of {n}; use at most {n - 1} (or 0 for the complete graph)")
        holders = holders_per_owner(n, sec.neighbors or None)
        threshold = sec.threshold or default_threshold(n, sec.neighbors or None, sec.colluders)
        if threshold > holders:
            raise ConfigError("secure.threshold", f"threshold {threshold} is above the {holders} share holders each node has "
                              f"({n} nodes{f', degree {sec.neighbors}' if sec.neighbors else ''}): no secret could ever be "
                              "reconstructed; lower it (0 = automatic) or add nodes")
        if 2 * threshold <= holders + sec.colluders:
            raise ConfigError("secure.threshold", f"threshold {threshold} of {holders} share holders is not above (holders + "
                              f"colluders) / 2 = {(holders + sec.colluders) / 2:g}: two disjoint sets of holders could each "
                              f"reconstruct; use at least {(holders + sec.colluders) // 2 + 1} (0 = automatic)")


def preflight(cfg: RunConfig) -> None:
    """What :func:`validate` cannot check without the disk, checked before any data is loaded: the backbone (its
    directory, config and weights, that ``model.target_modules`` name linear layers of it, ``model.rank`` within their
    widths). Builds the model's shapes only; raises :class:`ConfigError` naming the field."""
    from geofed_secure.model.backbone import check_backbone

    check_backbone(cfg.model.backbone, cfg.model.target_modules, cfg.model.rank)


def nodes_from_spec(spec: str) -> tuple[NodeSpec, ...]:
    """Parse ``--nodes image:2,text,tabular,dna`` into node specs with generated ids."""
    nodes: list[NodeSpec] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        modality, _, count = part.partition(":")
        if modality not in MODALITIES:
            raise ConfigError("--nodes", f"unknown modality {modality!r} in {spec!r}; known: {MODALITIES}")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ConfigError("--nodes", f"count in {part!r} must be an integer") from None
        if n < 1:
            raise ConfigError("--nodes", f"count in {part!r} must be >= 1")
        nodes.extend(NodeSpec(id=f"{modality}-{sum(x.modality == modality for x in nodes) + 1}", modality=modality) for _ in range(n))
    if not nodes:
        raise ConfigError("--nodes", "names no node; example: image:2,text,tabular,dna")
    return tuple(nodes)
