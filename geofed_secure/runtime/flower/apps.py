"""The deployable Flower apps: :data:`server_app` and :data:`client_app`, what a Flower app project names in
``[tool.flwr.app.components]`` (``geofed deploy`` writes that project; see :mod:`.launch`).

Both are configured by Flower, not by code: the ServerApp reads the run configuration (``flwr run``'s
``[tool.flwr.app.config]`` or ``--run-config``), each ClientApp its SuperNode's node configuration
(``flower-supernode --node-config``), falling back to the run configuration for the keys both may carry.

Run configuration (one per run, sent by the SuperLink to every party):

- ``config``: path of the geofed run configuration, a TOML file (``examples/demo.toml``) or a JSON dump
  (``config.json`` of a run folder);
- ``data``: the data source, ``"demo"`` or a folder of encoded modalities (:mod:`.sitedata`);
- ``out-dir``: where the ServerApp writes ``transcript/``, ``checkpoints/``, ``final/`` and ``run.json``;
- ``timeout``: seconds the ServerApp waits for SuperNodes to connect and for each round's replies;
- ``keys`` (secure aggregation): the server's key folder (``<keys>/server`` from ``geofed deploy keys``);
- ``resume`` (``true``/``false``): continue the run in ``out-dir`` from its last checkpoint
  (:func:`~geofed_secure.runtime.flower.app.run_federation`), e.g. ``flwr run <app> --run-config resume=true``.

Node configuration (one per SuperNode, chosen by the site's operator):

- ``node-id`` (required): which node of the configuration this site is;
- ``state-dir`` (required): the site's node state directory (:class:`~.site.Site`);
- ``keys`` (required under secure aggregation): the site's own key folder (``<keys>/sites/<node id>``). Only the
  node configuration is read for it: a site never takes its keys (or the identities it checks) from the run
  configuration, which the server's operator writes;
- ``config`` and ``data`` (optional): the site's own copy of the configuration and its own data source, best a site
  folder holding only its own share (``geofed deploy split-data``, :func:`~.sitedata.save_site`). On separate
  machines a site names them (the run configuration's paths are the server's); on one machine they default to the
  run configuration's.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from geofed_secure.config import RunConfig, config_from_dict, load_config
from geofed_secure.data.anchors import AnchorManifest
from geofed_secure.errors import ConfigError
from geofed_secure.runtime.flower.app import DEFAULT_TIMEOUT_S, make_client_app, run_federation
from geofed_secure.runtime.flower.site import Site, SiteState, recorded_anchor_digest
from geofed_secure.runtime.flower.sitedata import (
    DEMO,
    anchor_count,
    anchor_digests,
    is_site_folder,
    load_modalities,
    load_site,
    site_anchor_digest,
)

RUN_STATUS = "run.json"  # written by the ServerApp into out-dir when it ends: completed or failed (with the error)


def load_run_config(path: str | Path) -> RunConfig:
    """A geofed run configuration from a TOML file or a JSON dump (a run folder's ``config.json``)."""
    file = Path(path)
    if file.suffix == ".json":
        if not file.is_file():
            raise ConfigError("config", f"{file} does not exist")
        return config_from_dict(json.loads(file.read_text()), source=str(file))
    return load_config(file)


def setting(context: Context, key: str, *, default: str | None = None, node_only: bool = False) -> str:
    """A string setting: the node configuration's ``key``, else the run configuration's (unless ``node_only``)."""
    value = context.node_config.get(key)
    if value is None and not node_only:
        value = context.run_config.get(key)
    if value is None:
        value = default
    if not isinstance(value, str) or not value:
        where = "--node-config" if node_only else "--node-config or the run configuration"
        raise ConfigError(key, f"missing: set {key}='...' in {where}")
    return value


def _site_settings(context: Context) -> tuple[RunConfig, str, str, str | None]:
    """(configuration, node id, state directory, key folder) of this SuperNode's site. A virtual SuperNode of
    Flower's simulation engine has only ``partition-id``: it is the configuration's node of that index, with its
    folders under the run configuration's ``sites-dir`` and ``site-keys`` (one machine: development only)."""
    config = load_run_config(setting(context, "config"))
    secure = config.secure.protocol != "none"
    partition = context.node_config.get("partition-id")
    if "node-id" not in context.node_config and isinstance(partition, int):
        if not 0 <= partition < len(config.nodes):
            raise ConfigError("num-supernodes", f"virtual SuperNode {partition}: the configuration has "
                                                f"{len(config.nodes)} nodes (set options.num-supernodes to that)")
        node_id = config.nodes[partition].id
        state_dir = str(Path(setting(context, "sites-dir")) / node_id)
        keys = str(Path(setting(context, "site-keys")) / node_id) if secure else None
        return config, node_id, state_dir, keys
    node_id = setting(context, "node-id", node_only=True)
    state_dir = setting(context, "state-dir", node_only=True)
    if node_id not in {n.id for n in config.nodes}:
        raise ConfigError("node-id", f"{node_id!r} is not a node of federation {config.federation.id!r}")
    keys = setting(context, "keys", node_only=True) if secure else None
    return config, node_id, state_dir, keys


def site_for(context: Context) -> Site:
    """This SuperNode's site, rebuilt from its configuration, its data and its state directory."""
    from geofed_secure.runtime.federation import build_federation
    from geofed_secure.runtime.simulator import backbone_factory

    config, node_id, state_dir, keys = _site_settings(context)
    source = setting(context, "data", default=DEMO)
    if is_site_folder(source):  # this node's own share only
        data, digest = load_site(source, node_id, config.federation.id)
    elif source == DEMO and any(n.own_data for n in config.nodes):  # own files: this node's records, public anchors
        manifest = AnchorManifest(per_modality=anchor_digests(source, config))
        federation = build_federation(config, load_modalities(source, config, only=[node_id]), only=[node_id],
                                      manifest=manifest)
        data, digest = federation.nodes[node_id], federation.anchor_digest
    else:  # the demo or a modalities folder: the share is cut here from every pool (one machine)
        federation = build_federation(config, load_modalities(source, config))
        data, digest = federation.nodes[node_id], federation.anchor_digest
    return Site(config, node_id, data, anchor_digest=digest, state_dir=state_dir, make_backbone=backbone_factory(config),
                keys_dir=keys)


def state_for(context: Context) -> SiteState:
    """This SuperNode's site without its node (a secure-aggregation step): configuration, state directory, keys and
    the public anchor commitment only; no private data is read."""
    config, node_id, state_dir, keys = _site_settings(context)
    source = setting(context, "data", default=DEMO)
    known = recorded_anchor_digest(state_dir)
    if known is not None:  # recorded when the site last trained: no data is loaded for a protocol step
        digest = known
    elif is_site_folder(source):
        digest = site_anchor_digest(source, node_id, config.federation.id)
    else:
        digest = AnchorManifest(per_modality=anchor_digests(source, config)).digest
    return SiteState(config, node_id, anchor_digest=digest, state_dir=state_dir, keys_dir=keys)


class PrintReporter:
    """Progress lines on the ServerApp's standard output (``flwr log`` / the deployment's run log shows them)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.round_start: dict[int, float] = {}
        self.round_seconds: dict[int, float] = {}  # wall time of each round (the broadcasts out to the aggregate)

    def _print(self, line: str) -> None:
        print(f"[geofed {time.perf_counter() - self.t0:7.1f}s] {line}", flush=True)

    def round_started(self, round_: int, total: int) -> None:
        self.round_start[round_] = time.perf_counter()
        self._print(f"round {round_}/{total}")

    def node_done(self, round_: int, node_id: str, info: str) -> None:
        self._print(f"  {node_id}: {info or 'answered'}")

    def round_done(self, round_: int, line: str) -> None:
        self.round_seconds[round_] = round(time.perf_counter() - self.round_start.get(round_, self.t0), 3)
        self._print(f"{line} ({self.round_seconds[round_]:.1f} s)")

    def log(self, message: str) -> None:
        self._print(message)


def serve(grid: Grid, context: Context) -> None:
    """The ServerApp's work, configured by the run configuration; writes ``out-dir/run.json`` either way."""
    from geofed_secure.runtime.simulator import backbone_factory, server_model_and_initial_state

    out = Path(setting(context, "out-dir"))
    out.mkdir(parents=True, exist_ok=True)
    reporter = PrintReporter()
    started = time.time()
    status: dict[str, object] = {"status": "failed", "started": started}
    try:
        config = load_run_config(setting(context, "config"))
        timeout = float(context.run_config.get("timeout", DEFAULT_TIMEOUT_S))
        source = setting(context, "data", default=DEMO)
        manifest = AnchorManifest(per_modality=anchor_digests(source, config))
        keys = setting(context, "keys") if config.secure.protocol != "none" else None
        _, initial = server_model_and_initial_state(config, backbone_factory(config))
        reporter.log(f"federation {config.federation.id}: {len(config.nodes)} nodes, {config.federation.rounds} rounds, "
                     f"waiting for SuperNodes (timeout {timeout:g} s)")
        run_federation(grid, config, anchor_digest=manifest.digest, initial_state=initial, out_dir=out,
                       timeout=timeout, reporter=reporter, n_anchors=anchor_count(source, config), keys_dir=keys,
                       resume=context.run_config.get("resume", False) is True)
        status.update(status="completed", rounds=config.federation.rounds,
                      final=str(out / "final" / "global_adapters.safetensors"))
    except Exception as exc:
        status.update(error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stdout)
        raise
    finally:
        status["seconds"] = round(time.time() - started, 3)
        status["round_seconds"] = reporter.round_seconds
        if reporter.round_start:  # discovery: from the ServerApp's start to the first round
            status["ready_seconds"] = round(min(reporter.round_start.values()) - reporter.t0, 3)
        (out / RUN_STATUS).write_text(json.dumps(status, indent=1))


server_app = ServerApp()
server_app.main()(serve)

client_app = make_client_app(site_for, state_for)
