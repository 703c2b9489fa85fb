"""The ServerApp and ClientApp of scripts/flower_round_cost.py (the cost of a secure round on Flower).

One ServerApp run interleaves, round after round on the same SuperNodes, three kinds of round with d float32 values:

- ``plain``: Flower's own FedAvg (``flwr.serverapp.strategy.FedAvg``: its ``configure_train``, then
  ``grid.send_and_receive``, then its ``aggregate_train``, exactly the body of one round of ``FedAvg.start``): the
  server sends an ArrayRecord of d values, each ClientApp answers its own d-vector, the server averages;
- ``masking`` (secagg-v1) and ``ckks`` (ckks-v1): the project's :class:`~geofed_secure.runtime.round.FederatedRound`
  over :class:`~geofed_secure.runtime.flower.app.FlowerLink`, with the server's aggregator from its key folder
  (:func:`~geofed_secure.runtime.secure.keys.server_aggregator`); the broadcast's global state is the same d-vector;
  each node answers a fixed random d-vector (no training) through its :class:`~geofed_secure.runtime.flower.site.SiteState`
  session (keys from its own node-config folder, session kept on disk between messages, as a deployed site does).

The ClientApp imports the project only for a secure message (a plain round costs what a plain Flower app costs). Each
ClientApp process appends one JSON line to ``<state-dir>/cost.jsonl``: its pid, its age when the handler started (the
process start, Flower's app loading and this module's import), the project's import time, the handler's time and the
process's peak RSS.

Configured by Flower: run config ``dim``, ``rounds``, ``protocols`` (comma list), ``out`` (results JSON), ``anchor``,
``reply-poll`` (seconds between the ServerApp's pulls for replies, every kind of round alike; 0: Flower's own 3 s),
``train-seconds`` (each site's local training per round, the same in every kind of round: the handler of the
round's first message imports torch, as any training ClientApp does in its fresh process, then sleeps that long, as a
site training on its own machine would; 0: neither, the plain ClientApp imports nothing),
``config-masking`` / ``config-ckks`` (run configurations, JSON), ``keys-masking`` / ``keys-ckks`` (server key folders);
node config ``node-id``, ``state-dir``, ``keys-masking`` / ``keys-ckks`` (this site's key folders).
"""

from __future__ import annotations

import json
import os
import resource
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:  # the project is imported only by a secure message
    from geofed_secure.runtime.flower.site import SiteState

PROTOCOL_FILE = "protocol"  # which secure protocol the open round belongs to (rounds never overlap)
COST_LOG = "cost.jsonl"


def node_vector(node_id: str, dim: int) -> np.ndarray:
    """The fixed random d-vector a node answers with (values in [-1, 1))."""
    return np.random.default_rng(zlib.crc32(node_id.encode())).uniform(-1, 1, dim).astype(np.float32)


def _process_age() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def _cost(context: Context, kind: str, round_: int, age: float, imports: float, t0: float) -> None:
    line = {"kind": kind, "round": round_, "pid": os.getpid(), "age_at_handler_s": round(age, 3),
            "import_s": round(imports, 3), "handler_s": round(time.perf_counter() - t0, 3),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    path = Path(str(context.node_config["state-dir"])) / COST_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def _site(context: Context, protocol: str) -> SiteState:
    from geofed_secure.config import config_from_dict
    from geofed_secure.runtime.flower.site import SiteState

    config = config_from_dict(json.loads(Path(str(context.run_config[f"config-{protocol}"])).read_text()), source=protocol)
    state_dir = Path(str(context.node_config["state-dir"])) / protocol
    return SiteState(config, str(context.node_config["node-id"]), anchor_digest=str(context.run_config["anchor"]),
                     state_dir=state_dir, keys_dir=str(context.node_config[f"keys-{protocol}"]))


client_app = ClientApp()


@client_app.query()
def identify(message: Message, context: Context) -> Message:
    return Message(RecordDict({"node": ConfigRecord({"node-id": str(context.node_config["node-id"])})}), reply_to=message)


def discover(grid: Grid, node_ids: tuple[str, ...], timeout: float) -> dict[str, int]:
    """Each node id's Flower node id (every SuperNode says which site it is)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < len(node_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {len(node_ids)} SuperNodes connected within {timeout:g} s")
        time.sleep(0.5)
    queries = [Message(RecordDict(), dst_node_id=nid, message_type="query") for nid in grid.get_node_ids()]
    found = {str(r.content.config_records["node"]["node-id"]): r.metadata.src_node_id
             for r in grid.send_and_receive(queries, timeout=timeout) if not r.has_error()}
    assert sorted(found) == sorted(node_ids), found
    return found


@client_app.train()
def train(message: Message, context: Context) -> Message:
    age, t0 = _process_age(), time.perf_counter()
    node_id = str(context.node_config["node-id"])
    train_seconds = float(str(context.run_config.get("train-seconds", 0.0)))
    if train_seconds > 0:  # the site's own local training: a fresh ClientApp process loads its ML framework, then trains
        import torch  # noqa: F401  (the project's secure path imports it anyway; a training FedAvg client does too)

        time.sleep(train_seconds)
    if "arrays" in message.content.array_records:  # plain FedAvg: no project code at all
        dim = int(context.run_config["dim"])
        content = RecordDict({"arrays": ArrayRecord([node_vector(node_id, dim)]),
                              "metrics": MetricRecord({"num-examples": 1})})
        reply = Message(content, reply_to=message)
        config = message.content.config_records.get("config")
        _cost(context, "plain", int(config.get("server-round", 0)) if config else 0, age, 0.0, t0)
        return reply
    from geofed_secure.runtime.flower.app import RECORD, pack, unpack_bytes
    from geofed_secure.runtime.nodelog import NodeLog
    from geofed_secure.runtime.round import secure_answer
    from geofed_secure.runtime.secure import SecureInputLayout
    from geofed_secure.wire.round import GRAM_FIELD, WEIGHT_FIELD, WEIGHTED_PREFIX, RoundBroadcast, decode_message

    imports = time.perf_counter() - t0
    round_ = int(message.metadata.group_id)
    broadcast = decode_message(unpack_bytes(message, "wire"))
    assert isinstance(broadcast, RoundBroadcast)
    protocol = broadcast.federation_id.removeprefix("bench-")
    site = _site(context, protocol)
    (site.state_dir.parent / PROTOCOL_FILE).write_text(protocol)
    layout = SecureInputLayout.for_round(broadcast.global_state, 2, clip=site.config.secure.clip)
    (name, value), = broadcast.global_state.items()
    payload = {WEIGHTED_PREFIX + name: node_vector(node_id, value.size).reshape(value.shape),
               GRAM_FIELD: np.zeros(1), WEIGHT_FIELD: np.ones(1)}
    vector, _ = layout.node_input(payload)  # on the node: checks, clips, counts (as Site.upload)
    session = site.load_session()
    secure_open = message.content.config_records[RECORD]["secure"]
    assert isinstance(secure_open, bytes)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    log = NodeLog(site.state_dir / "log.jsonl")
    answer = secure_answer(log, round_, lambda: session.open(secure_open, vector, layout))
    site.save_session(session)
    reply = Message(pack(answer=answer.kind.value, wire=answer.blob, stage=answer.stage), reply_to=message)
    _cost(context, f"{protocol}-open", round_, age, imports, t0)
    return reply


@client_app.train("secagg")
def secagg(message: Message, context: Context) -> Message:
    age, t0 = _process_age(), time.perf_counter()
    from geofed_secure.runtime.flower.app import pack, unpack_bytes

    imports = time.perf_counter() - t0
    protocol = (Path(str(context.node_config["state-dir"])) / PROTOCOL_FILE).read_text()
    round_ = int(message.metadata.group_id)
    answer = _site(context, protocol).secure_step(round_, unpack_bytes(message, "wire"))
    reply = Message(pack(answer=answer.kind.value, wire=answer.blob, stage=answer.stage), reply_to=message)
    _cost(context, f"{protocol}-step", round_, age, imports, t0)
    return reply


class FastPollGrid:
    """``grid`` whose ``send_and_receive`` pulls the replies every ``interval`` seconds (flwr 1.41's HTTP grid sleeps
    3 s between pulls); everything else is ``grid``'s. Used for every kind of round alike (run config ``reply-poll``)."""

    def __init__(self, grid: Grid, interval: float) -> None:
        self._grid = grid
        self._interval = interval

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending:
            pulled = list(self._grid.pull_messages(pending))
            replies += pulled
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if not pending or (timeout is not None and time.time() >= end):
                break
            time.sleep(self._interval)
        return replies


server_app = ServerApp()


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    from flwr.serverapp.strategy import FedAvg

    from geofed_secure.config import config_from_dict
    from geofed_secure.runtime.flower.app import FlowerLink
    from geofed_secure.runtime.round import FederatedRound, SilentReporter
    from geofed_secure.runtime.secure.keys import server_aggregator
    from geofed_secure.runtime.transcript import Transcript
    from geofed_secure.server.server import Server

    cfg = context.run_config
    if float(str(cfg.get("reply-poll", 0.0))) > 0:
        grid = FastPollGrid(grid, float(str(cfg["reply-poll"])))  # type: ignore[assignment]
    dim, rounds = int(cfg["dim"]), int(cfg["rounds"])
    protocols = [p for p in str(cfg["protocols"]).split(",") if p]
    out = Path(str(cfg["out"]))
    anchor = str(cfg["anchor"])
    configs = {p: config_from_dict(json.loads(Path(str(cfg[f"config-{p}"])).read_text()), source=p) for p in protocols}
    first = next(iter(configs.values()))
    node_ids = tuple(n.id for n in first.nodes)
    flower_ids = discover(grid, node_ids, timeout=300)
    initial = np.zeros(dim, np.float32)
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=len(node_ids), min_available_nodes=len(node_ids))
    arrays = ArrayRecord([initial])
    secure = {}
    for p, config in configs.items():
        server = Server(federation_id=config.federation.id, anchor_digest=anchor, node_ids=node_ids,
                        global_state={"w": initial.copy()})
        link = FlowerLink(grid, flower_ids, timeout=300)
        aggregator = server_aggregator(config, anchor, str(cfg[f"keys-{p}"]))
        secure[p] = (server, FederatedRound(server, link, secure=aggregator, n_anchors=2, clip=config.secure.clip,
                                            reporter=SilentReporter(), fault_hook=lambda *_: None, node_logs={}),
                     Transcript(out.parent / f"transcript-{p}"))
    expected = np.mean([node_vector(v, dim) for v in node_ids], axis=0)
    results: list[dict[str, object]] = []
    for round_ in range(1, rounds + 1):
        t0 = time.perf_counter()
        messages = strategy.configure_train(round_, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=300)
        new_arrays, _ = strategy.aggregate_train(round_, replies)
        assert new_arrays is not None, f"plain round {round_}: no reply"
        arrays = new_arrays
        seconds = time.perf_counter() - t0
        error = float(np.abs(arrays.to_numpy_ndarrays()[0] - expected).max())
        results.append({"protocol": "plain", "round": round_, "seconds": seconds, "max_error": error,
                        "bytes_up_per_node": dim * 4})
        print(f"round {round_} plain {seconds:.2f} s", flush=True)
        for p, (server, federated_round, transcript) in secure.items():
            t0 = time.perf_counter()
            outcome = federated_round.run(round_, transcript, node_ids)
            seconds = time.perf_counter() - t0
            assert not outcome.failures, outcome.failures
            error = float(np.abs(server.global_state["w"] - expected).max())
            results.append({"protocol": p, "round": round_, "seconds": seconds, "max_error": error,
                            "bytes_up_per_node": max(outcome.uploaded.values())})
            print(f"round {round_} {p} {seconds:.2f} s (error {error:.1e})", flush=True)
        out.write_text(json.dumps(results, indent=1))
