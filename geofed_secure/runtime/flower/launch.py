"""A loopback Flower deployment in one call: a SuperLink and one SuperNode per configured node as separate processes on
127.0.0.1, the run submitted with ``flwr run``, waited for, and every process stopped afterwards.

What :func:`run_loopback` lays out under its folder ``root``:

- ``config.json``: the geofed run configuration every party reads (the run configuration's ``config``);
- ``app/pyproject.toml``: the Flower app project (:func:`write_app_project`): its components are
  :data:`geofed_secure.runtime.flower.apps.server_app` / ``client_app`` of the installed package, so the FAB holds
  only this file and nothing is installed at run time (the SuperLink runs with
  ``--disable-runtime-dependency-installation``; a SuperNode installs nothing unless told to);
- ``flwr-home/``: ``FLWR_HOME`` of every process started (the ``flwr`` CLI's SuperLink connection ``geofed``, the
  installed FABs); nothing is written to ``~/.flwr``;
- ``certs/``: the self-signed CA and SuperLink certificate (:mod:`.certs`) when TLS is on and none were given;
- ``logs/``: ``superlink.log``, ``supernode-<node id>.log``, ``run.log`` (``flwr run --stream``: the ServerApp's output);
- ``server/``: the ServerApp's output (``transcript/``, ``checkpoints/``, ``final/``, ``run.json``);
- ``sites/<node id>/``: each site's node state directory.

Every process is started in its own session and stopped (SIGTERM, then SIGKILL) with the processes it started
(Flower's SuperExec and app processes) when the run ends, fails, times out or is interrupted. Flower's telemetry and
update check are switched off (``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1``): nothing leaves the
machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from geofed_secure.config import RunConfig
from geofed_secure.errors import ConfigError, GeofedError
from geofed_secure.runtime.flower.certs import Certificates, make_certificates
from geofed_secure.runtime.flower.sitedata import split_sites
from geofed_secure.runtime.secure.keys import write_keys

SERVER_APP = "geofed_secure.runtime.flower.apps:server_app"
CLIENT_APP = "geofed_secure.runtime.flower.apps:client_app"
CONNECTION = "geofed"  # the SuperLink connection's name in FLWR_HOME/config.toml
QUIET_FLOWER = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
SUPERNODE = "supernode {}"  # a started SuperNode's name, by node id
RUN_STATUS = "run.json"  # as apps.RUN_STATUS (apps imports Flower's app machinery; this module stays light)


class DeploymentError(GeofedError):
    """A deployment could not start, or its run failed: the message names the logs to read."""


def _toml(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def write_app_project(folder: str | Path, run_config: Mapping[str, str | float | int | bool]) -> Path:
    """Write the Flower app project ``flwr run`` submits: ``folder/pyproject.toml``, whose components are the
    installed package's apps and whose ``[tool.flwr.app.config]`` is ``run_config`` (see :mod:`.apps`)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by geofed deploy: the Flower app project of a geofed federation (submit it with flwr run).",
        "# The apps are the installed geofed-secure package's; the bundle (FAB) carries only this file.",
        "[project]", 'name = "geofed-federation"', 'version = "1.0.0"',
        'description = "geofed-secure federation over Flower (ServerApp + ClientApp)"', 'license = "Apache-2.0"',
        "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "geofed-secure"', "",
        "[tool.flwr.app.components]", f'serverapp = "{SERVER_APP}"', f'clientapp = "{CLIENT_APP}"', "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml(value)}" for key, value in run_config.items()), "",
    ]
    path = out / "pyproject.toml"
    path.write_text("\n".join(lines))
    return path


def write_flower_config(flwr_home: str | Path, address: str, *, ca: Path | None, virtual_supernodes: int = 0) -> Path:
    """``FLWR_HOME/config.toml`` with one SuperLink connection, :data:`CONNECTION`, the default: TLS trusting ``ca``,
    or plain HTTP when ``ca`` is None; ``virtual_supernodes`` > 0: a simulation SuperLink with that many."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    security = f"root-certificates = {json.dumps(str(ca))}" if ca is not None else "insecure = true"
    options = f"options.num-supernodes = {virtual_supernodes}\n" if virtual_supernodes else ""
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{address}"\n{security}\n{options}')
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_executable(name: str) -> str:
    """Flower's console script ``name`` next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"'{name}' not found: install the flower extra (pip install 'geofed-secure[flower]')")
    return found


def superlink_argv(port: int, *, certs: Certificates | None, host: str = "127.0.0.1", simulation: bool = False) -> list[str]:
    """The SuperLink: Fleet, Control and Runtime APIs on one HTTP(S) port; nothing installed at run time.
    ``simulation``: Flower's simulation engine (virtual SuperNodes on Ray, in a subprocess of the SuperLink)."""
    tls = (["--insecure"] if certs is None else
           ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--ssl-ca-certfile", str(certs.ca)])
    engine = ["--simulation", "--isolation", "subprocess"] if simulation else []
    return [flower_executable("flower-superlink"), *tls, *engine, "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def shell_join(argv: list[str]) -> str:
    """``argv`` as a shell command; a node configuration (single quotes inside) goes in double quotes, as Flower's
    documentation writes it."""
    def quote(arg: str) -> str:
        if "'" in arg and not any(c in arg for c in '"$`\\!'):
            return f'"{arg}"'
        return shlex.quote(arg)

    return " ".join(quote(a) for a in argv)


def node_config_arg(values: Mapping[str, str]) -> str:
    for key, value in values.items():
        if "'" in value:
            raise ConfigError(key, f"{value!r}: a node configuration value cannot contain a single quote")
    return " ".join(f"{key}='{value}'" for key, value in values.items())


def supernode_argv(node_config: Mapping[str, str], *, superlink: str, runtime_port: int, ca: Path | None) -> list[str]:
    """One site's SuperNode; ``runtime_port``: its local Runtime API port (each SuperNode of a machine needs its own)."""
    tls = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    return [flower_executable("flower-supernode"), *tls, "--superlink", superlink, "--port", str(runtime_port),
            "--node-config", node_config_arg(node_config)]


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes] = field(repr=False)


class Processes:
    """The processes a deployment started; :meth:`stop` ends them and every process they started."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.started: list[Started] = []

    def start(self, name: str, argv: list[str], log: Path, *, cwd: Path | None = None) -> Started:
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("ab")  # closed by stop()
        try:
            process = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.env, cwd=cwd, start_new_session=True)
        except OSError:
            fh.close()
            raise
        started = Started(name, process, log, fh)
        self.started.append(started)
        return started

    def exited(self) -> list[Started]:
        return [s for s in self.started if s.process.poll() is not None]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process and the processes it started (Flower's SuperExec and app processes run in sessions of
        their own), SIGKILL what is still alive after ``grace`` seconds."""
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with peft and accelerate
            psutil = None
        tree: list[Any] = []
        if psutil is not None:
            for started in self.started:
                try:
                    parent = psutil.Process(started.process.pid)
                    tree += [parent, *parent.children(recursive=True)]
                except psutil.Error:
                    pass
            for process in tree:
                _signal(process, "terminate")
            _, alive = psutil.wait_procs(tree, timeout=grace)
            for process in alive:
                _signal(process, "kill")
            psutil.wait_procs(alive, timeout=grace)
        for started in self.started:
            _end(started.process, grace)  # without psutil; with it, this reaps the exit status
            started.log_file.close()


def _signal(process: Any, action: str) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):  # NoSuchProcess and kin: the process is already gone
        getattr(process, action)()


def _end(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def wait_for_port(port: int, processes: Processes, *, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(processes)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"the SuperLink did not listen on {host}:{port} within {timeout:g} s; see "
                          f"{processes.started[0].log}")


def _check_alive(processes: Processes, *, except_: tuple[str, ...] = ()) -> None:
    dead = [s for s in processes.exited() if s.name not in except_]
    if dead:
        raise DeploymentError(", ".join(f"{s.name} exited with code {s.process.returncode}" for s in dead)
                              + "; its log: " + ", ".join(str(s.log) for s in dead))


@dataclass
class LoopbackPlan:
    """Everything a loopback deployment runs, written to disk by :func:`prepare_loopback` (nothing started yet)."""

    root: Path
    config: RunConfig
    insecure: bool
    port: int
    address: str  # the SuperLink the flwr CLI submits to
    app: Path
    flwr_home: Path
    out_dir: Path
    logs: Path
    superlink: list[str]
    supernodes: dict[str, list[str]]
    submit: list[str]

    @property
    def supernode_names(self) -> tuple[str, ...]:
        return tuple(SUPERNODE.format(node_id) for node_id in self.supernodes)

    @property
    def env(self) -> dict[str, str]:
        """What every process of the deployment gets on top of the caller's environment."""
        return {**QUIET_FLOWER, "FLWR_HOME": str(self.flwr_home)}


@dataclass
class LoopbackResult:
    root: Path
    out_dir: Path
    final: Path
    status: dict[str, Any]
    timings: dict[str, float]
    logs: dict[str, Path]


def site_node_config(node_id: str, state_dir: Path, **extra: str) -> dict[str, str]:
    return {"node-id": node_id, "state-dir": str(state_dir), **extra}


def _port_of(address: str) -> int:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--superlink", f"{address!r}: give the SuperLink as host:port")
    return int(port)


def prepare_loopback(config: RunConfig, root: str | Path, *, data: str = "demo", insecure: bool = False,
                     certs: Certificates | None = None, message_timeout: float = 600.0,
                     superlink: str | None = None, keys: Path | None = None, simulation: bool = False) -> LoopbackPlan:
    """Write the configuration, the Flower app project and the Flower configuration under ``root`` and pick free
    ports: the plan :func:`run_loopback` runs. TLS is on unless ``insecure`` (tests only): with ``certs`` (a set valid
    for 127.0.0.1) or a fresh set in ``root/certs``.

    ``superlink`` (``host:port``): prepare for an existing SuperLink instead (its ``certs`` must be given unless
    ``insecure``); the plan is then only written and printed, not run.

    Data: from a folder (``data``), each node's share is cut here and written to ``root/site-data/<node id>``, and each
    site is given only its own folder; with the demo every site rebuilds the demo's data and keeps its share.

    Secure aggregation: ``keys`` (a folder from ``geofed deploy keys``) or fresh keys in ``root/keys``; the ServerApp
    gets ``keys/server`` (run configuration), each site ``keys/sites/<node id>`` (its own node configuration).

    ``simulation``: Flower's simulation engine instead: one SuperLink in simulation mode runs one virtual SuperNode
    per node (Ray), with no TLS (nothing leaves the machine). Virtual SuperNodes get only Flower's ``partition-id``
    as node configuration, so the sites' state and key folders come from the run configuration (``sites-dir``,
    ``site-keys``): one machine, one operator, for development only."""
    if simulation and superlink is not None:
        raise ConfigError("--simulation", "the simulation engine runs on this machine; it takes no --superlink")
    base = Path(root).resolve()
    if (base / "server" / RUN_STATUS).exists():
        raise DeploymentError(f"{base} already holds a deployment's run; choose another folder")
    base.mkdir(parents=True, exist_ok=True)
    if data != "demo":
        data = str(Path(data).resolve())
    config_path = base / "config.json"
    config_path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True))
    insecure = insecure or simulation
    if not insecure and certs is None:
        if superlink is not None:
            raise ConfigError("--certs", f"name the certificate set the SuperLink at {superlink} uses (or --insecure)")
        certs = make_certificates(base / "certs", overwrite=True)
    ca = None if insecure or certs is None else certs.ca
    port = free_port() if superlink is None else _port_of(superlink)
    address = superlink or f"127.0.0.1:{port}"
    out_dir = base / "server"
    app = base / "app"
    run_config: dict[str, str | float] = {"config": str(config_path), "data": data, "out-dir": str(out_dir),
                                          "timeout": float(message_timeout)}
    site_keys: dict[str, dict[str, str]] = {n.id: {} for n in config.nodes}
    if config.secure.protocol != "none":
        keys = keys.resolve() if keys is not None else write_keys(config, base / "keys")
        run_config["keys"] = str(keys / "server")
        site_keys = {n.id: {"keys": str(keys / "sites" / n.id)} for n in config.nodes}
        if simulation:
            run_config["site-keys"] = str(keys / "sites")
    if simulation:
        run_config["sites-dir"] = str(base / "sites")
    write_app_project(app, run_config)
    flwr_home = base / "flwr-home"
    write_flower_config(flwr_home, address, ca=ca, virtual_supernodes=len(config.nodes) if simulation else 0)
    site_data: dict[str, dict[str, str]] = {n.id: {} for n in config.nodes}
    if data != "demo" and not simulation and superlink is None:  # each site gets its own share, and only that
        site_data = {k: {"data": str(v)} for k, v in split_sites(config, data, base / "site-data").items()}
    supernodes = {} if simulation else {
        n.id: supernode_argv(site_node_config(n.id, base / "sites" / n.id, **site_keys[n.id], **site_data[n.id]),
                             superlink=address, runtime_port=free_port(), ca=ca) for n in config.nodes}
    return LoopbackPlan(root=base, config=config, insecure=insecure, port=port, address=address, app=app, flwr_home=flwr_home,
                        out_dir=out_dir, logs=base / "logs",
                        superlink=superlink_argv(port, certs=None if insecure else certs, simulation=simulation),
                        supernodes=supernodes,
                        submit=[flower_executable("flwr"), "run", str(app), CONNECTION, "--stream"])


def run_loopback(plan: LoopbackPlan, *, timeout: float = 3600.0, env: Mapping[str, str] | None = None,
                 echo: Callable[[str], None] = print) -> LoopbackResult:
    """Start the plan's SuperLink and SuperNodes, submit the run, wait for it, stop everything.

    ``timeout`` bounds the whole run (each message round trip is bounded by the plan's ``message_timeout``).
    Raises DeploymentError (naming the logs) when a process dies, the run fails or the time is up; every process
    started is stopped in all cases (also on KeyboardInterrupt).
    """
    if plan.address != f"127.0.0.1:{plan.port}":
        raise DeploymentError(f"this plan submits to the SuperLink at {plan.address}; only loopback plans are started here")
    logs = plan.logs
    processes = Processes({**os.environ, **plan.env, **(env or {})})
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout
    on_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # a terminated launcher still stops what it started
    try:
        started = processes.start("superlink", plan.superlink, logs / "superlink.log")
        echo(f"SuperLink on 127.0.0.1:{plan.port} ({'insecure: tests only' if plan.insecure else 'TLS'}); log {started.log}")
        for node_id, argv in plan.supernodes.items():
            started = processes.start(SUPERNODE.format(node_id), argv, logs / f"supernode-{node_id}.log")
            echo(f"SuperNode {node_id}: state {plan.root / 'sites' / node_id}; log {started.log}")
        wait_for_port(plan.port, processes, timeout=min(120.0, timeout))
        timings["superlink_ready_s"] = time.monotonic() - t0
        run = processes.start("flwr run", plan.submit, logs / "run.log", cwd=plan.root)
        echo(f"run submitted ({shell_join(['flwr', *plan.submit[1:]])}); its log (the ServerApp's output): {run.log}")
        lost: set[str] = set()
        while run.process.poll() is None:
            # the SuperLink is the deployment; a SuperNode that dies is a site gone: the ServerApp decides whether the
            # round completes without it (it may come back, restarted by its operator)
            _check_alive(processes, except_=("flwr run", *(s for s in plan.supernode_names)))
            for gone in processes.exited():
                if gone.name in plan.supernode_names and gone.name not in lost:
                    lost.add(gone.name)
                    echo(f"{gone.name} exited with code {gone.process.returncode} during the run; the run goes on "
                         f"without it (its log: {gone.log})")
            if time.monotonic() > deadline:
                _stop_run(run.log, processes.env)
                raise DeploymentError(f"the run did not finish within {timeout:g} s; logs in {logs}")
            time.sleep(0.5)
        timings["run_s"] = time.monotonic() - t0
    except KeyboardInterrupt:
        echo(f"interrupted: stopping every process; logs in {logs}")
        raise
    finally:
        processes.stop()
        timings["stopped_s"] = time.monotonic() - t0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
    status_path = plan.out_dir / RUN_STATUS
    if not status_path.is_file():
        raise DeploymentError(f"the run ended without a result (flwr run exited with {run.process.returncode}); "
                              f"see {run.log} and {logs / 'superlink.log'}")
    status = json.loads(status_path.read_text())
    if status.get("status") != "completed":
        raise DeploymentError(f"the run failed: {status.get('error', 'unknown error')}; see {run.log}")
    return LoopbackResult(root=plan.root, out_dir=plan.out_dir, final=Path(status["final"]), status=status,
                          timings=timings, logs={s.name: s.log for s in processes.started})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_run(run_log: Path, env: Mapping[str, str]) -> None:
    """Ask the SuperLink to stop the run (best effort) before its processes are stopped."""
    found = re.search(r"Successfully started run (\d+)", run_log.read_text(errors="replace"))
    if found:
        subprocess.run([flower_executable("flwr"), "stop", found.group(1), CONNECTION], env=dict(env),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


def site_commands(node_ids: list[str], *, superlink: str = "SUPERLINK_HOST:9093") -> list[tuple[str, str]]:
    """The commands an operator runs on separate machines, as (where, command) pairs; paths are placeholders."""
    quiet = " ".join(f"{k}={v}" for k, v in QUIET_FLOWER.items())
    host, _, port = superlink.rpartition(":")
    superlink_cmd = ["flower-superlink", "--ssl-certfile", "certs/server.pem", "--ssl-keyfile", "certs/server.key",
                     "--ssl-ca-certfile", "certs/ca.pem", "--host", "0.0.0.0", "--port", port,
                     "--disable-runtime-dependency-installation"]
    steps = [
        ("operator", ("geofed deploy keys --config federation.toml --out keys   # secure aggregation: copy keys/server "
                     "to the SuperLink machine and keys/sites/<id> to site <id> only, over a channel you trust")),
        ("SuperLink machine", f"geofed deploy certs --out certs --host {host}   # then copy certs/ca.pem to every site"),
        ("SuperLink machine", f"{quiet} {shell_join(superlink_cmd)}"),
    ]
    for node_id in node_ids:
        config = node_config_arg(site_node_config(node_id, Path(f"/var/lib/geofed/{node_id}"),
                                                  config="/etc/geofed/federation.toml", data="demo",
                                                  keys=f"/etc/geofed/keys/sites/{node_id}"))
        supernode_cmd = ["flower-supernode", "--root-certificates", "ca.pem", "--superlink", superlink,
                         "--node-config", config]
        steps.append((f"site {node_id}", f"{quiet} {shell_join(supernode_cmd)}"))
    prepare = f"geofed deploy --config federation.toml --superlink {superlink} --certs certs --keys keys --out deploy"
    steps += [("operator", f"{prepare}   # writes deploy/app and deploy/flwr-home, starts nothing"),
              ("operator", f"FLWR_HOME=deploy/flwr-home {quiet} flwr run deploy/app {CONNECTION} --stream")]
    return steps
