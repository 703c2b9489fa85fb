"""Command line: ``geofed run`` trains the (demo) federation and writes summary, plots, transcript, checkpoints;
``geofed audit`` attacks it from one threat model's view, as an audit plan says (:mod:`geofed_secure.audit.suite`).

Logs and progress go to stderr, the result to stdout as one JSON line (``--json``: a JSON Lines event stream), see
:mod:`geofed_secure.terminal`; the exit codes are :data:`EXIT_CODES`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from geofed_secure import __version__
from geofed_secure.config import RunConfig, config_from_dict, load_config
from geofed_secure.errors import CheckpointError, ConfigError, GeofedError
from geofed_secure.terminal import ConsoleReporter, Terminal

__all__ = ["EXIT_CODES", "ConsoleReporter", "main"]

console = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("geofed_secure.cli")

EXIT_CODES = """\
exit codes:
  0    success; the result is the last line of stdout, one JSON object
  1    internal error: a bug in geofed (rerun with -v for the traceback, and report it)
  2    refused: bad arguments, configuration, threat model or plan; an output folder that is a file, not writable,
       in use by another run, or holding a run (without --resume / --overwrite); a damaged checkpoint or transcript;
       unusable data; a security stop. The message names the field or file (stderr; with --json also on stdout)
  130  interrupted (Ctrl-C); geofed run keeps the last completed round: continue with geofed run --resume DIR
"""


def _output_options(*, subcommand: bool) -> argparse.ArgumentParser:
    """-v/-q/--json, accepted before or after the subcommand (after it, they must not reset what came before)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if subcommand else 0,
                       help="more detail on stderr (-v: debug lines, tracebacks of internal errors, dependencies' "
                            "deprecation warnings)")
    group.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS if subcommand else 0,
                       help="less on stderr (-q: warnings and errors only, no progress; -qq: errors only)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS if subcommand else False,
                       help="stdout becomes JSON Lines: progress events, then the result (or the error)")
    return options


def _build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="geofed", description=__doc__, epilog=EXIT_CODES, formatter_class=formatter,
                                     parents=[_output_options(subcommand=False)])
    parser.add_argument("--version", action="version", version=f"geofed {__version__} (Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federation (default: the built-in offline demo)", epilog=EXIT_CODES,
                         formatter_class=formatter, parents=[_output_options(subcommand=True)])
    run.add_argument("--config", type=Path, help="TOML run configuration (see examples/demo.toml)")
    run.add_argument("--rounds", type=int, help="number of federated rounds")
    run.add_argument("--nodes", help="node list by modality, e.g. image:2,text,tabular,dna")
    run.add_argument("--lambda-geo", type=float, dest="lambda_geo", help="weight of the CKA alignment loss (0 = off)")
    run.add_argument("--magnitude", choices=("local", "averaged"), help="GeoDoRA magnitude policy")
    run.add_argument("--mode", choices=("federated", "local-only"), help="local-only: nodes never aggregate (baseline)")
    run.add_argument("--shuffle-anchors", action="store_true", help="null control: every node shuffles its anchor order")
    run.add_argument("--secure", choices=("masking", "ckks", "none"),
                     help="secure aggregation of uploads: pairwise masking (default), CKKS, or none (clear, tests only)")
    run.add_argument("--dp-epsilon", type=float, dest="dp_epsilon", metavar="E",
                     help="per-node differential-privacy budget for the whole run (DP-SGD; 0 = off, the default)")
    run.add_argument("--dp-delta", type=float, dest="dp_delta", metavar="D", help="DP delta (default 1e-5)")
    run.add_argument("--dp-accountant", choices=("pld", "rdp"), dest="dp_accountant",
                     help="replace-one privacy accountant: pld (dp_accounting PLD, default, tight) or rdp")
    run.add_argument("--dp-max-grad-norm", type=float, dest="dp_max_grad_norm", metavar="C", help="DP-SGD per-sample clip (default 1.0)")
    run.add_argument("--dp-secure-mode", action="store_true", dest="dp_secure_mode",
                     help="production DP: OS-entropy noise and sampling, floating-point-robust sampler (not reproducible)")
    run.add_argument("--dp-shared-seed-noise", action="store_true", dest="dp_shared_seed_noise",
                     help="experiments only: DP noise from the federation seed (reproducible across runs); the epsilon then "
                          "does NOT hold against the server or other nodes")
    run.add_argument("--seed", type=int)
    run.add_argument("--cache-dir", help="feature cache folder (default $GEOFED_CACHE or ~/.cache/geofed-secure)")
    run.add_argument("--out", type=Path, help="output folder (default runs/<federation id>-<time>)")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted run in DIR")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out (its checkpoints, transcript, summary, node logs); without it "
                          "a folder holding a run is refused")
    audit = sub.add_parser("audit", help="attack the federation from one threat model's view and report what leaks",
                           epilog=EXIT_CODES, formatter_class=formatter, parents=[_output_options(subcommand=True)])
    audit.add_argument("--threat-model", type=Path, required=True, dest="threat_model", help="threat model TOML (threat_models/)")
    audit.add_argument("--plan", type=Path, help="audit plan TOML, or a preset: quick (minutes, low power), standard (the "
                       "default, audits/plan.toml), high-power (the reference reports); its run / reference_run keys also "
                       "audit a finished geofed run folder's recorded transcript")
    audit.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md and the plots")
    audit.add_argument("--cache-dir", dest="cache_dir", help="feature and experiment cache (default $GEOFED_CACHE or ~/.cache/geofed-secure)")
    audit.add_argument("--seed", type=int, help="override the plan's seed")
    audit.add_argument("--config", help="the federation to audit: a geofed run config TOML (your own nodes, "
                       "docs/own-federation.md); default: the plan's config key, else the built-in demo")
    audit.add_argument("--workers", type=int, help="training processes (default: the plan's workers key; 0 = one per "
                       "available core, 1 = no worker processes); the experiment trained does not depend on it")
    audit.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    # geofed deploy parses its own arguments (geofed deploy --help), so the Flower driver is imported only when it runs
    deploy = sub.add_parser("deploy", help="run the federation on a loopback Flower deployment (SuperLink, SuperNodes); "
                            "geofed deploy certs makes TLS certificates", prefix_chars="+", add_help=False)
    deploy.add_argument("deploy_args", nargs=argparse.REMAINDER, help="see geofed deploy --help")
    return parser


AUDIT_OUTPUTS = ("report.json", "report.md")


def cmd_audit(args: argparse.Namespace, term: Terminal) -> int:
    from geofed_secure.audit.plan import load_plan
    from geofed_secure.audit.suite import check_audit, run_audit
    from geofed_secure.audit.threat_model import load_threat_model
    from geofed_secure.runtime.outdir import claim_for_new_run, output_folder

    threat_model = load_threat_model(args.threat_model)
    plan = load_plan(args.plan)
    overrides = {k: v for k, v in (("cache_dir", args.cache_dir), ("seed", args.seed), ("config", args.config),
                                                ("workers", args.workers))
                 if v is not None}
    plan = dataclasses.replace(plan, **overrides) if overrides else plan
    check_audit(threat_model, plan)  # before anything trains
    started = time.perf_counter()

    def progress(line: str) -> None:
        term.event("progress", message=line, elapsed_s=round(time.perf_counter() - started, 1))
        log.info("[%6.1fs] %s", time.perf_counter() - started, line)

    with output_folder(args.out, owner="geofed audit"):
        claim_for_new_run(args.out, overwrite=args.overwrite, entries=AUDIT_OUTPUTS, resume_hint=False)
        report = run_audit(threat_model, plan, args.out, progress=progress)
    for line in report["verdict"]:
        log.info("  %s", line)
    log.info("  wrote %s, %s%s", args.out / "report.json", args.out / "report.md", "".join(f", {p}" for p in report.get("plots", [])))
    term.result({"command": "audit", "status": "ok", "out": str(args.out), "report": str(args.out / "report.json"),
                 "markdown": str(args.out / "report.md"), "plots": [str(args.out / p) for p in report.get("plots", [])],
                 "threat_model": threat_model.name, "verdict": report["verdict"], "seconds": report["seconds"]})
    return 0


def _apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    config = config.with_overrides(rounds=args.rounds, seed=args.seed, protocol=args.secure, nodes=args.nodes)
    fed, model, training, data, privacy = config.federation, config.model, config.training, config.data, config.privacy
    for flag, key in (("dp_epsilon", "epsilon"), ("dp_delta", "delta"), ("dp_accountant", "accountant"),
                      ("dp_max_grad_norm", "max_grad_norm")):
        if getattr(args, flag) is not None:
            privacy = dataclasses.replace(privacy, **{key: getattr(args, flag)})
    if args.dp_secure_mode:
        privacy = dataclasses.replace(privacy, secure_mode=True)
    if args.dp_shared_seed_noise:
        privacy = dataclasses.replace(privacy, shared_seed_noise=True)
    if args.mode is not None:
        fed = dataclasses.replace(fed, mode=args.mode)
    if args.magnitude is not None:
        model = dataclasses.replace(model, magnitude=args.magnitude)
    if args.lambda_geo is not None:
        training = dataclasses.replace(training, lambda_geo=args.lambda_geo)
    if args.cache_dir is not None:
        data = dataclasses.replace(data, cache_dir=args.cache_dir)
    nodes = config.nodes
    if args.shuffle_anchors:
        nodes = tuple(dataclasses.replace(n, shuffle_anchors=True) for n in nodes)
    return config.replace(federation=fed, model=model, training=training, data=data, privacy=privacy, nodes=nodes)


def _resolve_config(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    if args.resume is not None:
        others = [name for name in ("config", "nodes", "lambda_geo", "magnitude", "mode", "seed", "out", "secure", "dp_epsilon",
                                    "dp_delta", "dp_accountant", "dp_max_grad_norm") if getattr(args, name) is not None]
        others += [name for name in ("shuffle_anchors", "dp_secure_mode", "dp_shared_seed_noise", "overwrite") if getattr(args, name)]
        if others:
            raise ConfigError("--resume", f"takes its configuration from the run folder; only --rounds/--cache-dir may be given (got --{others[0].replace('_', '-')})")
        saved = args.resume / "config.json"
        if not saved.is_file():
            raise ConfigError("--resume", f"{args.resume} holds no config.json; is it a geofed run folder?")
        try:
            data = json.loads(saved.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError("--resume", f"{saved} is unreadable ({type(exc).__name__}); the run folder is damaged") from None
        if not isinstance(data, dict):
            raise ConfigError("--resume", f"{saved} does not hold a configuration table")
        config = config_from_dict(data, source=str(saved))
        return _apply_overrides(config, args), args.resume, True
    config = load_config(args.config) if args.config else RunConfig()
    config = _apply_overrides(config, args)
    return config, args.out or _default_out(config), False


def _default_out(config: RunConfig) -> Path:
    """runs/<federation id>-<time>, with -2, -3... when a run started in the same second already has it."""
    base = Path("runs") / f"{config.federation.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def cmd_run(args: argparse.Namespace, term: Terminal) -> int:
    from geofed_secure.config import preflight
    from geofed_secure.runtime.outdir import claim_for_new_run, output_folder
    from geofed_secure.server.checkpoint import CheckpointStore

    config, out, resume = _resolve_config(args)
    preflight(config)  # the backbone, before any data is loaded
    _check_cache_dir(config)
    with output_folder(out, owner="geofed run"):
        if resume:
            store = CheckpointStore(out)
            if not (store.root / "LATEST").exists() and not store.rounds_on_disk():  # damage is the resume's to judge
                raise CheckpointError(f"{out} holds no checkpoint (the run stopped before its first round ended), so there "
                                      f"is nothing to resume; start it again, with the options it had, and --out {out} --overwrite")
        else:
            claim_for_new_run(out, overwrite=args.overwrite)
        return _run_in(out, config, resume, term)


def _check_cache_dir(config: RunConfig) -> None:
    from geofed_secure.encoders.cache import default_cache_root

    root = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("data.cache_dir", f"cannot create the feature cache {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError("data.cache_dir", f"the feature cache {root} is not writable; give --cache-dir DIR")


def _run_in(out: Path, config: RunConfig, resume: bool, term: Terminal) -> int:
    from geofed_secure.inputs import load_modalities
    from geofed_secure.report import write_plots
    from geofed_secure.runtime import Simulator

    log.info("geofed run: %d nodes, %d rounds, mode=%s, lambda_geo=%s, magnitude=%s, secure=%s, dp_epsilon=%s, out=%s%s",
             len(config.nodes), config.federation.rounds, config.federation.mode, config.training.lambda_geo,
             config.model.magnitude, config.secure.protocol, config.privacy.epsilon or "off", out,
             " (resuming)" if resume else "")
    term.event("run_started", out=str(out), resume=resume, nodes=[n.id for n in config.nodes],
               rounds=config.federation.rounds, config=config.to_dict())
    t0 = time.perf_counter()
    reporter = ConsoleReporter(term, nodes=len(config.nodes), steps=config.training.local_steps)
    with term.live():
        modalities = load_modalities(config, progress=reporter.features)
        log.info("  data ready in %.1f s: %s", time.perf_counter() - t0, ", ".join(
            f"{m} ({len(d.pool)} private, B={len(d.anchors)}{', synthetic' if d.synthetic else ''})" for m, d in modalities.items()))
        log.info("  building %d nodes (backbone copies, adapters%s)", len(config.nodes),
                 ", DP noise calibration" if config.privacy.enabled else "")
        sim = Simulator(config, modalities, out, reporter=reporter)
        for node_id, node in sim.nodes.items():
            node.step_hook = lambda step, steps, node_id=node_id: reporter.node_step(node_id, step, steps)
        result = sim.run(resume=resume, overwrite=False)
        plots = write_plots(result.summary, out)
    final = result.summary["final"]
    log.info("done in %.1f s: %s", time.perf_counter() - t0, ", ".join(f"{k}={v:.3f}" for k, v in final.items() if v is not None))
    privacy = result.summary["privacy"]
    spent: dict[str, Any] | None = None
    if privacy["enabled"]:
        spent = {k: {"epsilon": v["epsilon"], "budget": v["epsilon_budget"]} for k, v in privacy["nodes"].items()}
        line = f"  privacy spent ({privacy['adjacency']} epsilon of budget): " + ", ".join(
            f"{k} {v['epsilon']:.2f}/{v['budget']:g}" for k, v in spent.items())
        line += "; holds against: " + "; ".join(privacy["holds_against"])
        if privacy["does_not_hold_against"]:
            line += "; does NOT hold against: " + "; ".join(privacy["does_not_hold_against"])
        log.info("%s", line)
    log.info("  wrote %s, %s, transcript/, checkpoints/, final/", out / "summary.json", ", ".join(p.name for p in plots))
    term.result({"command": "run", "status": "ok", "out": str(out), "summary": str(out / "summary.json"),
                 "resumed": resume, "rounds": len(result.summary["rounds"]), "final": final, "privacy": spent,
                 "seconds": round(time.perf_counter() - t0, 1)})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``geofed``; returns the exit code (:data:`EXIT_CODES`)."""
    args = _build_parser().parse_args(argv)
    term = Terminal(verbosity=args.verbose - args.quiet, json_events=args.json)
    with term.session():
        try:
            if args.command == "run":
                return cmd_run(args, term)
            if args.command == "audit":
                return cmd_audit(args, term)
            if args.command == "deploy":
                from geofed_secure.runtime.flower.deploy import run_cli

                return run_cli(args.deploy_args, echo=lambda line: log.info("%s", line), result=term.result)
        except GeofedError as exc:
            term.error(exc, exit_code=2)
            return 2
        except KeyboardInterrupt:
            term.console.print("interrupted: the last completed round is checkpointed; continue with geofed run --resume "
                               "<out dir>", style="yellow", markup=False)
            term.event("error", status="interrupted", exit_code=130, error="KeyboardInterrupt", message="interrupted")
            return 130
        except Exception as exc:  # noqa: BLE001 - anything else is a bug: one line (traceback with -v), exit 1
            term.error(exc, exit_code=1, internal=True)
            return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
