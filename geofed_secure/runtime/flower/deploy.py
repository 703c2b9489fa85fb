"""``geofed deploy``: the federation on Flower's deployment engine, in one command (also
``python -m geofed_secure.runtime.flower.deploy``).

- ``geofed deploy [--config F] [--sites N] --secure none [--out DIR]``: a loopback deployment, a SuperLink and one
  SuperNode per configured node as separate processes on 127.0.0.1 with TLS (certificates made on the spot, or
  ``--certs DIR``), ``--insecure`` for tests only; submits the run, waits for it, prints where the results are and
  stops every process it started (also on Ctrl-C and on failure).
- ``--simulation``: Flower's simulation engine instead (one SuperLink in simulation mode, one virtual SuperNode per
  node on Ray; one machine, development only);
- ``--dry-run``: write the plan (configuration, Flower app project, Flower configuration, certificates) and print
  the commands, start nothing; ``--superlink HOST:PORT --certs DIR``: the same for an existing SuperLink, with the
  commands each machine runs.
- ``geofed deploy certs --out DIR [--host NAME ...]``: a self-signed CA and SuperLink certificate (:mod:`.certs`).
- ``geofed deploy keys --out DIR [--config F --secure masking|ckks ...]``: the secure-aggregation keys of every party
  (:mod:`geofed_secure.runtime.secure.keys`); a loopback deployment makes its own unless ``--keys DIR``.
- ``geofed deploy split-data --data SRC --out DIR [--config F ...]``: each node's own share of ``SRC`` in
  ``DIR/<node id>/site.safetensors``, the folder to hand that site and only that site (a loopback deployment from a
  data folder does this itself).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geofed_secure.config import RunConfig
from geofed_secure.errors import ConfigError, GeofedError
from geofed_secure.runtime.flower.certs import LOOPBACK_HOSTS, Certificates, make_certificates

Echo = Callable[[str], None]


def build_parser(prog: str = "geofed deploy") -> argparse.ArgumentParser:
    """``geofed deploy``'s own parser: the ``geofed`` command hands it every argument after ``deploy`` (so that
    ``geofed --help`` and ``geofed run`` never import the Flower driver)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return parser


def configure(deploy: argparse.ArgumentParser) -> None:
    deploy.add_argument("--config", type=Path, help="TOML run configuration (default: the built-in demo)")
    deploy.add_argument("--sites", type=int, metavar="N", help="the first N configured nodes only (one site each)")
    deploy.add_argument("--nodes", help="node list by modality, as geofed run --nodes (e.g. image:2,text)")
    deploy.add_argument("--rounds", type=int, help="number of federated rounds")
    deploy.add_argument("--seed", type=int)
    deploy.add_argument("--secure", choices=("masking", "ckks", "none"),
                        help="secure aggregation (default: the configuration's, masking for the demo)")
    deploy.add_argument("--keys", type=Path, metavar="DIR",
                        help="secure-aggregation keys from geofed deploy keys (default: new ones in the deployment folder)")
    deploy.add_argument("--data", default="demo", help="data source: 'demo' (default) or a folder of encoded modalities")
    deploy.add_argument("--out", type=Path, help="deployment folder (default deployments/<federation id>-<time>)")
    deploy.add_argument("--insecure", action="store_true", help="no TLS (tests only)")
    deploy.add_argument("--simulation", action="store_true",
                        help="Flower's simulation engine: virtual SuperNodes on this machine (Ray; no TLS, nothing leaves it)")
    deploy.add_argument("--certs", type=Path, metavar="DIR", help="certificate set from geofed deploy certs (default: a new one)")
    deploy.add_argument("--timeout", type=float, default=3600.0, help="bound on the whole run, seconds (default 3600)")
    deploy.add_argument("--message-timeout", type=float, default=600.0, dest="message_timeout",
                        help="bound on each Flower message round trip and on SuperNodes connecting, seconds (default 600)")
    deploy.add_argument("--dry-run", action="store_true", dest="dry_run", help="write the plan and print the commands only")
    deploy.add_argument("--superlink", metavar="HOST:PORT",
                        help="prepare for an existing SuperLink (implies --dry-run; needs --certs unless --insecure)")
    actions = deploy.add_subparsers(dest="deploy_action", metavar="{certs,keys,split-data}")
    certs = actions.add_parser("certs", help="make a self-signed CA and SuperLink certificate")
    certs.add_argument("--out", type=Path, required=True, dest="certs_out", help="folder for ca.pem, server.pem, server.key")
    certs.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                       help=f"IP address or DNS name of the SuperLink (repeatable; default {', '.join(LOOPBACK_HOSTS)})")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    keys = actions.add_parser("keys", help="make the secure-aggregation keys of the server and of every site")
    keys.add_argument("--out", type=Path, required=True, dest="keys_out", help="folder for server/ and sites/<node id>/")
    # the federation's shape, as for the deployment itself (SUPPRESS: given before 'keys', they are kept)
    keys.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML run configuration (default: the demo)")
    keys.add_argument("--sites", type=int, metavar="N", default=argparse.SUPPRESS, help="the first N configured nodes only")
    keys.add_argument("--nodes", default=argparse.SUPPRESS, help="node list by modality (e.g. image:2,text)")
    keys.add_argument("--secure", choices=("masking", "ckks", "none"), default=argparse.SUPPRESS,
                      help="the protocol to make keys for (default: the configuration's)")
    split = actions.add_parser("split-data", help="write each node's own data share to its own folder")
    split.add_argument("--out", type=Path, required=True, dest="split_out", help="folder for <node id>/site.safetensors")
    split.add_argument("--data", default=argparse.SUPPRESS, help="data source: 'demo' or a folder of encoded modalities")
    split.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML run configuration (default: the demo)")
    split.add_argument("--sites", type=int, metavar="N", default=argparse.SUPPRESS, help="the first N configured nodes only")
    split.add_argument("--nodes", default=argparse.SUPPRESS, help="node list by modality (e.g. image:2,text)")


def resolve_config(args: argparse.Namespace) -> RunConfig:
    from geofed_secure.runtime.flower.apps import load_run_config

    config = load_run_config(args.config) if args.config else RunConfig()
    if args.nodes is not None and args.sites is not None:
        raise ConfigError("--sites", "give --sites or --nodes, not both")
    config = config.with_overrides(rounds=args.rounds, seed=args.seed, protocol=args.secure, nodes=args.nodes)
    if args.sites is not None:
        nodes = config.nodes
        if not 1 <= args.sites <= len(nodes):
            raise ConfigError("--sites", f"the configuration has {len(nodes)} node(s); --sites takes 1 to {len(nodes)} "
                                         "(add [[nodes]] to the configuration, or use --nodes)")
        config = config.replace(nodes=nodes[: args.sites])
    return config


def cmd_certs(args: argparse.Namespace, echo: Echo) -> dict[str, Any]:
    made = make_certificates(args.certs_out, hosts=tuple(args.hosts or LOOPBACK_HOSTS), days=args.days)
    echo(f"wrote {made.ca} (every SuperNode trusts it: --root-certificates), {made.server_cert} and {made.server_key} "
         "(the SuperLink's --ssl-certfile and --ssl-keyfile; its --ssl-ca-certfile is the CA)")
    return {"command": "deploy certs", "status": "ok", "ca": str(made.ca), "server_cert": str(made.server_cert),
            "server_key": str(made.server_key)}


def cmd_keys(args: argparse.Namespace, echo: Echo) -> dict[str, Any]:
    from geofed_secure.runtime.secure.keys import write_keys

    config = resolve_config(args)
    if args.keys_out.exists() and any(args.keys_out.iterdir()):
        raise ConfigError("--out", f"{args.keys_out} is not empty; keys are never written over (choose another folder)")
    folder = write_keys(config, args.keys_out)
    echo(f"wrote {config.secure.protocol} keys of federation {config.federation.id!r} to {folder}: copy {folder / 'server'} "
         f"to the SuperLink machine and {folder / 'sites'}/<node id> to that site only (the site files are secret)")
    return {"command": "deploy keys", "status": "ok", "out": str(folder), "protocol": config.secure.protocol,
            "sites": [n.id for n in config.nodes]}


def cmd_split_data(args: argparse.Namespace, echo: Echo) -> dict[str, Any]:
    from geofed_secure.runtime.flower.sitedata import split_sites

    config = resolve_config(args)
    if args.split_out.exists() and any(args.split_out.iterdir()):
        raise ConfigError("--out", f"{args.split_out} is not empty; choose another folder")
    folders = split_sites(config, args.data, args.split_out)
    echo(f"wrote each node's own share under {args.split_out}: hand {args.split_out}/<node id> to that site only and set "
         "its node config data='<that folder>'")
    return {"command": "deploy split-data", "status": "ok", "out": str(args.split_out),
            "sites": {k: str(v) for k, v in folders.items()}}


def cmd_deploy(args: argparse.Namespace, echo: Echo) -> dict[str, Any]:
    from geofed_secure.runtime.flower.launch import prepare_loopback, run_loopback, shell_join, site_commands

    config = resolve_config(args)
    out = args.out or Path("deployments") / f"{config.federation.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    certs = Certificates.in_folder(args.certs) if args.certs is not None else None
    if args.insecure and certs is not None:
        raise ConfigError("--insecure", "--insecure and --certs contradict each other")
    plan = prepare_loopback(config, out, data=args.data, insecure=args.insecure, certs=certs,
                            message_timeout=args.message_timeout, superlink=args.superlink, keys=args.keys,
                            simulation=args.simulation)
    engine = "simulation engine (virtual SuperNodes)" if args.simulation else (
        "insecure (tests only)" if args.insecure else "TLS")
    echo(f"geofed deploy: {len(config.nodes)} sites, {config.federation.rounds} rounds, secure aggregation "
         f"{config.secure.protocol}, {engine}, folder {plan.root}")
    if args.dry_run or args.superlink is not None:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items())
        if args.superlink is None:
            echo("loopback commands (each its own process):")
            echo(f"  {env} {shell_join(plan.superlink)}")
            for argv in plan.supernodes.values():
                echo(f"  {env} {shell_join(argv)}")
        echo("submit the run:")
        echo(f"  {env} {shell_join(plan.submit)}")
        echo("on separate machines (a site names its own configuration copy, data and state directory):")
        for where, command in site_commands([n.id for n in config.nodes], superlink=args.superlink or "SUPERLINK_HOST:9093"):
            echo(f"  [{where}] {command}")
        return {"command": "deploy", "status": "prepared", "out": str(plan.root), "app": str(plan.app),
                "flwr_home": str(plan.flwr_home)}
    result = run_loopback(plan, timeout=args.timeout, echo=echo)
    t = result.timings
    echo(f"done: {result.status['rounds']} rounds; ServerApp {result.status['seconds']:.1f} s, whole run "
         f"{t['run_s']:.1f} s (SuperLink ready after {t['superlink_ready_s']:.1f} s), all processes stopped")
    echo(f"  final global weights: {result.final}")
    echo(f"  transcript and checkpoints: {result.out_dir}; site states: {plan.root / 'sites'}; logs: {plan.logs}")
    return {"command": "deploy", "status": "ok", "out": str(plan.root), "final": str(result.final),
            "server": str(result.out_dir), "logs": str(plan.logs), "rounds": result.status["rounds"],
            "round_seconds": result.status.get("round_seconds"), "seconds": round(t["run_s"], 1)}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stdout_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def run_cli(argv: list[str], *, echo: Echo = _stderr, result: Callable[[dict[str, Any]], None] = _stdout_json,
            prog: str = "geofed deploy") -> int:
    """Parse ``argv`` (the arguments after ``deploy``) and run it: progress lines through ``echo``, the result (one
    JSON object) through ``result``. GeofedError propagates (the caller prints it, exit 2); an interruption stops
    every process started and returns 130."""
    args = build_parser(prog).parse_args(argv)
    try:
        commands = {"certs": cmd_certs, "keys": cmd_keys, "split-data": cmd_split_data}
        result(commands.get(args.deploy_action, cmd_deploy)(args, echo))
    except KeyboardInterrupt:
        echo("interrupted: every process the deployment started was stopped")
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m geofed_secure.runtime.flower.deploy``: the same as ``geofed deploy``."""
    try:
        return run_cli(sys.argv[1:] if argv is None else argv, prog="python -m geofed_secure.runtime.flower.deploy")
    except GeofedError as exc:
        _stderr(f"error ({type(exc).__name__}): {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
