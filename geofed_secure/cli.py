"""Command line: ``geofed run`` trains the (demo) federation and writes summary, plots, transcript, checkpoints;
``geofed audit`` attacks it from one threat model's view, as an audit plan says (:mod:`geofed_secure.audit.suite`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from geofed_secure.config import RunConfig, config_from_dict, load_config, nodes_from_spec
from geofed_secure.errors import ConfigError, GeofedError

console = Console(stderr=True, highlight=False, soft_wrap=True)


class ConsoleReporter:
    """Per-round progress on the terminal (plain lines, so logs and CI output stay readable)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def round_started(self, round_: int, total: int) -> None:
        console.print(f"[bold]round {round_}/{total}[/bold]")

    def node_done(self, round_: int, node_id: str, info: str) -> None:
        console.print(f"  {node_id:<22} {info}")

    def round_done(self, round_: int, line: str) -> None:
        console.print(f"  [green]{line}[/green] [dim](elapsed {time.perf_counter() - self._t0:.0f} s)[/dim]")

    def log(self, message: str) -> None:
        console.print(f"  [yellow]{message}[/yellow]")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geofed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federation (default: the built-in offline demo)")
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
    audit = sub.add_parser("audit", help="attack the federation from one threat model's view and report what leaks")
    audit.add_argument("--threat-model", type=Path, required=True, dest="threat_model", help="threat model TOML (threat_models/)")
    audit.add_argument("--plan", type=Path, help="audit plan TOML (default: the built-in plan, spelled out in audits/plan.toml); "
                       "its run / reference_run keys also audit a finished geofed run folder's recorded transcript")
    audit.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md and the plots")
    audit.add_argument("--cache-dir", dest="cache_dir", help="feature and experiment cache (default $GEOFED_CACHE or ~/.cache/geofed-secure)")
    audit.add_argument("--seed", type=int, help="override the plan's seed")
    return parser


def cmd_audit(args: argparse.Namespace) -> int:
    from geofed_secure.audit.plan import load_plan
    from geofed_secure.audit.suite import run_audit
    from geofed_secure.audit.threat_model import load_threat_model

    threat_model = load_threat_model(args.threat_model)
    plan = load_plan(args.plan)
    overrides = {k: v for k, v in (("cache_dir", args.cache_dir), ("seed", args.seed)) if v is not None}
    plan = dataclasses.replace(plan, **overrides) if overrides else plan
    started = time.perf_counter()
    report = run_audit(threat_model, plan, args.out,
                       progress=lambda line: console.print(f"[{time.perf_counter() - started:6.1f}s] {line}"))
    for line in report["verdict"]:
        console.print(f"  [bold]{line}[/bold]")
    console.print(f"  wrote {args.out / 'report.json'}, {args.out / 'report.md'}"
                  + "".join(f", {p}" for p in report.get("plots", [])))
    return 0


def _apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    fed, model, training, data, secure = config.federation, config.model, config.training, config.data, config.secure
    privacy = config.privacy
    for flag, key in (("dp_epsilon", "epsilon"), ("dp_delta", "delta"), ("dp_accountant", "accountant"),
                      ("dp_max_grad_norm", "max_grad_norm")):
        if getattr(args, flag) is not None:
            privacy = dataclasses.replace(privacy, **{key: getattr(args, flag)})
    if args.dp_secure_mode:
        privacy = dataclasses.replace(privacy, secure_mode=True)
    if args.dp_shared_seed_noise:
        privacy = dataclasses.replace(privacy, shared_seed_noise=True)
    if args.rounds is not None:
        fed = dataclasses.replace(fed, rounds=args.rounds)
    if args.seed is not None:
        fed = dataclasses.replace(fed, seed=args.seed)
    if args.mode is not None:
        fed = dataclasses.replace(fed, mode=args.mode)
    if args.magnitude is not None:
        model = dataclasses.replace(model, magnitude=args.magnitude)
    if args.lambda_geo is not None:
        training = dataclasses.replace(training, lambda_geo=args.lambda_geo)
    if args.secure is not None:
        secure = dataclasses.replace(secure, protocol=args.secure)
    if args.cache_dir is not None:
        data = dataclasses.replace(data, cache_dir=args.cache_dir)
    nodes = nodes_from_spec(args.nodes) if args.nodes is not None else config.nodes
    if args.shuffle_anchors:
        nodes = tuple(dataclasses.replace(n, shuffle_anchors=True) for n in nodes)
    return RunConfig(federation=fed, model=model, training=training, data=data, secure=secure, privacy=privacy, nodes=nodes)


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
        config = config_from_dict(json.loads(saved.read_text()), source=str(saved))
        return _apply_overrides(config, args), args.resume, True
    config = load_config(args.config) if args.config else RunConfig()
    config = _apply_overrides(config, args)
    out = args.out or Path("runs") / f"{config.federation.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, out, False


def cmd_run(args: argparse.Namespace) -> int:
    from geofed_secure.demo import load_demo_modalities
    from geofed_secure.report import write_plots
    from geofed_secure.runtime import Simulator

    config, out, resume = _resolve_config(args)
    console.print(f"[bold]geofed run[/bold]: {len(config.nodes)} nodes, {config.federation.rounds} rounds, "
                  f"mode={config.federation.mode}, lambda_geo={config.training.lambda_geo}, magnitude={config.model.magnitude}, "
                  f"secure={config.secure.protocol}, dp_epsilon={config.privacy.epsilon or 'off'}, out={out}")
    t0 = time.perf_counter()
    shown: dict[str, int] = {}

    def progress(modality: str, done: int, total: int) -> None:
        # Cold encoding takes tens of seconds per modality: show it every 500 samples; a cache hit shows once.
        if done == total or done // 500 > shown.get(modality, 0):
            console.print(f"  features {modality}: {done}/{total}")
            shown[modality] = done // 500

    modalities = load_demo_modalities(config, progress=progress)
    console.print(f"  data ready in {time.perf_counter() - t0:.1f} s: "
                  + ", ".join(f"{m} ({len(d.pool)} private, B={len(d.anchors)}{', synthetic' if d.synthetic else ''})" for m, d in modalities.items()))
    sim = Simulator(config, modalities, out, reporter=ConsoleReporter())
    result = sim.run(resume=resume, overwrite=args.overwrite)
    plots = write_plots(result.summary, out)
    final = result.summary["final"]
    console.print(f"[bold]done[/bold] in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{k}={v:.3f}" for k, v in final.items() if v is not None))
    privacy = result.summary["privacy"]
    if privacy["enabled"]:
        line = f"  privacy spent ({privacy['adjacency']} epsilon of budget): " + ", ".join(
            f"{k} {v['epsilon']:.2f}/{v['epsilon_budget']:g}" for k, v in privacy["nodes"].items())
        line += "; holds against: " + "; ".join(privacy["holds_against"])
        if privacy["does_not_hold_against"]:
            line += "; does NOT hold against: " + "; ".join(privacy["does_not_hold_against"])
        console.print(line)
    console.print(f"  wrote {out / 'summary.json'}, {', '.join(p.name for p in plots)}, transcript/, checkpoints/, final/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "audit":
            return cmd_audit(args)
    except GeofedError as exc:
        console.print(f"[red]error[/red] ({type(exc).__name__}): {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: the last completed round is checkpointed; continue with geofed run --resume <out dir>")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
