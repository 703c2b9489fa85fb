"""The cost of a secure round on Flower, side by side with a plain FedAvg round, on ONE loopback deployment.

    python scripts/flower_round_cost.py [--sites 3,5,10] [--dim 100000] [--rounds 5] [--protocols masking,ckks]

For each site count N: a real SuperLink and N SuperNodes on 127.0.0.1 (separate processes, ``--insecure``), then one
``flwr run`` of the apps in ``scripts/flower_round_cost_apps.py``, which interleaves per round a plain Flower FedAvg
round, a secagg-v1 round and (optionally) a ckks-v1 round of d float32 values (see that module). secagg-v1 runs one
key epoch over all rounds (``rounds_per_epoch = rounds``): round 1 sets the keys up (4 round trips), later rounds
reuse them (2 round trips). Prints a Markdown table of per-round wall-time medians (round 1 and rounds >= 2 apart),
the ratio to the plain round measured in the same run, the bytes a node sends per round, the ClientApp processes'
peak RSS and start-up time, and each site's state folder on disk; writes everything as JSON to ``--out``.
Every process started is stopped (launch.Processes); each deployment is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geofed_secure.config import FederationSection, NodeSpec, RunConfig, SecureSection
from geofed_secure.runtime.flower.launch import (
    CONNECTION,
    QUIET_FLOWER,
    Processes,
    flower_executable,
    free_port,
    superlink_argv,
    supernode_argv,
    wait_for_port,
    write_flower_config,
)
from geofed_secure.runtime.secure.keys import write_keys

HERE = Path(__file__).resolve().parent
APPS = "flower_round_cost_apps"  # importable through PYTHONPATH=scripts/ in every Flower process


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _app_project(folder: Path, run_config: dict[str, str | int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    values = "\n".join(f"{k} = {json.dumps(v)}" for k, v in run_config.items())
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "flower-round-cost"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "geofed-secure"\n\n'
        f'[tool.flwr.app.components]\nserverapp = "{APPS}:server_app"\nclientapp = "{APPS}:client_app"\n\n'
        f"[tool.flwr.app.config]\n{values}\n")
    return folder


def run_sites(n: int, *, dim: int, rounds: int, protocols: list[str], root: Path, timeout: float,
              reply_poll: float = 0.0, superexec_poll: float | None = None, train_seconds: float = 0.0) -> dict[str, object]:
    """One deployment of ``n`` sites, one ``flwr run``; the ServerApp's per-round results plus the sites' costs."""
    nodes = tuple(NodeSpec(id=f"site-{i:02d}", modality="tabular") for i in range(n))
    anchor = hashlib.sha256(b"flower-round-cost").hexdigest()
    run_config: dict[str, str | int] = {"dim": dim, "rounds": rounds, "protocols": ",".join(protocols),
                                        "out": str(root / "server" / "results.json"), "anchor": anchor,
                                        "reply-poll": str(reply_poll), "train-seconds": str(train_seconds)}
    site_keys: dict[str, dict[str, str]] = {v.id: {} for v in nodes}
    root.mkdir(parents=True, exist_ok=True)
    for p in protocols:
        config = RunConfig(federation=FederationSection(id=f"bench-{p}", rounds=rounds), nodes=nodes,
                           secure=SecureSection(protocol=p, rounds_per_epoch=max(2, rounds)))
        path = root / f"config-{p}.json"
        path.write_text(json.dumps(config.to_dict()))
        keys = write_keys(config, root / f"keys-{p}")
        run_config |= {f"config-{p}": str(path), f"keys-{p}": str(keys / "server")}
        for v in nodes:
            site_keys[v.id][f"keys-{p}"] = str(keys / "sites" / v.id)
    (root / "server").mkdir(parents=True, exist_ok=True)
    app = _app_project(root / "app", run_config)
    flwr_home = root / "flwr-home"
    port = free_port()
    write_flower_config(flwr_home, f"127.0.0.1:{port}", ca=None)
    env = {**os.environ, **QUIET_FLOWER, "FLWR_HOME": str(flwr_home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))}
    if superexec_poll is not None:  # how often each SuperExec asks for a message to start a ClientApp for (default 1 s)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(superexec_poll)
    processes = Processes(env)
    logs = root / "logs"
    t0 = time.monotonic()
    try:
        processes.start("superlink", superlink_argv(port, certs=None), logs / "superlink.log")
        for v in nodes:
            config_values = {"node-id": v.id, "state-dir": str(root / "sites" / v.id), **site_keys[v.id]}
            argv = supernode_argv(config_values, superlink=f"127.0.0.1:{port}", runtime_port=free_port(), ca=None)
            processes.start(f"supernode {v.id}", argv, logs / f"supernode-{v.id}.log")
        wait_for_port(port, processes, timeout=120)
        run = processes.start("flwr run", [flower_executable("flwr"), "run", str(app), CONNECTION, "--stream"],
                              logs / "run.log", cwd=root)
        while run.process.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{n} sites: not done within {timeout:g} s; see {logs}")
            time.sleep(0.5)
    finally:
        processes.stop()
    results_path = root / "server" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    if len(results) < rounds * (1 + len(protocols)):
        raise RuntimeError(f"{n} sites: the run ended after {len(results)} measured rounds; see {logs / 'run.log'}")
    costs = [json.loads(line) for v in nodes for line in (root / "sites" / v.id / "cost.jsonl").read_text().splitlines()]
    state = {p: max(_folder_bytes(root / "sites" / v.id / p) for v in nodes) for p in protocols}
    site_keys_bytes = {p: max(_folder_bytes(root / f"keys-{p}" / "sites" / v.id) for v in nodes) for p in protocols}
    return {"sites": n, "rounds": results, "clientapp": costs, "state_bytes": state, "key_bytes": site_keys_bytes,
            "wall_s": time.monotonic() - t0}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(runs: list[dict[str, object]]) -> str:
    lines = ["| N | round | plain FedAvg s | " + " | ".join(f"{p} s (x plain)" for p in PROTOCOLS) + " | bytes up/node "
             + "(plain, " + ", ".join(PROTOCOLS) + ") |", "|---|---|---|" + "---|" * len(PROTOCOLS) + "---|"]
    for run in runs:
        rows = run["rounds"]
        assert isinstance(rows, list)
        for label, keep in (("1 (set-up)", lambda r: r == 1), (">= 2 (steady)", lambda r: r >= 2)):
            med = {p: _median([x["seconds"] for x in rows if x["protocol"] == p and keep(x["round"])])
                   for p in ["plain", *PROTOCOLS]}
            sent = {p: max((x["bytes_up_per_node"] for x in rows if x["protocol"] == p and keep(x["round"])), default=0)
                    for p in ["plain", *PROTOCOLS]}
            cells = " | ".join(f"{med[p]:.1f} ({med[p] / med['plain']:.2f}x)" for p in PROTOCOLS)
            lines.append(f"| {run['sites']} | {label} | {med['plain']:.1f} | {cells} | "
                         + ", ".join(f"{sent[p] / 1e6:.2f} MB" for p in ["plain", *PROTOCOLS]) + " |")
    return "\n".join(lines)


def site_table(runs: list[dict[str, object]]) -> str:
    lines = [("| N | message | ClientApp processes | median age at handler s | median project import s | "
              "median handler s | peak RSS MiB (max) |"), "|---|---|---|---|---|---|---|"]
    for run in runs:
        costs = run["clientapp"]
        assert isinstance(costs, list)
        for kind in sorted({c["kind"] for c in costs}):
            sel = [c for c in costs if c["kind"] == kind]
            lines.append(f"| {run['sites']} | {kind} | {len({c['pid'] for c in sel})} of {len(sel)} messages | "
                         f"{_median([c['age_at_handler_s'] for c in sel]):.2f} | {_median([c['import_s'] for c in sel]):.2f} | "
                         f"{_median([c['handler_s'] for c in sel]):.2f} | {max(c['maxrss_kb'] for c in sel) / 1024:.0f} |")
    return "\n".join(lines)


PROTOCOLS: list[str] = []


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="3,5,10")
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--protocols", default="masking,ckks")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per deployment")
    parser.add_argument("--reply-poll", type=float, default=0.0,
                        help="seconds between the ServerApp's pulls for replies, every round kind alike (0: Flower's 3 s)")
    parser.add_argument("--superexec-poll", type=float, default=None,
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for every Flower process (unset: Flower's 1 s)")
    parser.add_argument("--train-seconds", type=float, default=0.0,
                        help="each site's local training per round, modelled as importing torch and sleeping this long "
                             "in the round's first message (sites on their own machines; the same in every kind of round; "
                             "0: no training)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: <work folder>/results.json)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the deployments (default: a new temp folder)")
    args = parser.parse_args()
    PROTOCOLS[:] = [p for p in args.protocols.split(",") if p]
    work = args.work or Path(tempfile.mkdtemp(prefix="flower-round-cost-"))
    load = os.getloadavg()
    print(f"work folder {work}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{os.cpu_count()} CPUs", flush=True)
    out = args.out or work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated benchmark still stops its deployment (finally)
    runs = []
    for n in [int(x) for x in args.sites.split(",")]:
        run = run_sites(n, dim=args.dim, rounds=args.rounds, protocols=PROTOCOLS, root=work / f"n{n}", timeout=args.timeout,
                        reply_poll=args.reply_poll, superexec_poll=args.superexec_poll, train_seconds=args.train_seconds)
        run["load_after"] = os.getloadavg()
        runs.append(run)
        print(f"{n} sites done in {run['wall_s']:.0f} s; load average {run['load_after'][0]:.2f}\n{table([run])}", flush=True)
        out.write_text(json.dumps(runs, indent=1))
    print(f"\nd = {args.dim:,} float32, {args.rounds} rounds per protocol, interleaved, reply poll "
          f"{args.reply_poll or 3.0:g} s, training {args.train_seconds:g} s per site and round; results {out}\n")
    print(table(runs))
    print()
    print(site_table(runs))
    print()
    for run in runs:
        print(f"N = {run['sites']}: site state folder (max over sites) "
              + ", ".join(f"{p}: {b / 1024:.0f} KiB" for p, b in run["state_bytes"].items())  # type: ignore[union-attr]
              + "; site key folder " + ", ".join(f"{p}: {b / 1024:.0f} KiB" for p, b in run["key_bytes"].items())  # type: ignore[union-attr]
              + f"; load average after {run['load_after'][0]:.2f}")
    subprocess.run(["uptime"], check=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
