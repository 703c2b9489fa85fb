"""Run Flower's real SecAgg+ (flwr 1.41) for n nodes in one process, no network.

This is a benchmark harness only: ``flwr`` is imported inside the functions, so
nothing in ``geofed_secure`` depends on it. Install it with
``pip install "flwr==1.41.0"`` (the proposed ``bench`` extra).

Which flwr code runs
--------------------
Server side: ``flwr.server.workflow.SecAggPlusWorkflow.__call__`` itself, unchanged:
``setup_stage`` -> ``share_keys_stage`` -> ``collect_masked_vectors_stage`` ->
``unmask_stage`` (neighbour graph, share forwarding, summing the masked vectors,
``combine_shares``, ``pseudo_rand_gen`` mask removal, ``factor_extract``,
``dequantize``). It gets a ``LegacyContext`` with a ``SimpleClientManager``, one
``GridClientProxy`` per node and ``FedAvg`` for ``configure_fit`` (fraction 1.0,
so every node is sampled). Only ``aggregate_fit`` is overridden: it returns the
vector the workflow has already unmasked, untouched (stock ``FedAvg`` would
re-average n identical copies of it).

Client side: per node one ``flwr.clientapp.ClientApp(client_fn, mods=[secaggplus_mod])``
(the set-up of Flower's secure-aggregation example) with its own persistent
``Context``. ``secaggplus_mod`` runs all four stages: ``generate_key_pairs``
(ECDH SECP384R1), ``create_shares`` (pycryptodome Shamir) + ``encrypt`` (Fernet
over an HKDF'd ECDH key), then ``decrypt``, ``quantize``, the private mask and
the pairwise masks from ``pseudo_rand_gen``, and the unmask share upload. The
``NumPyClient.fit`` behind it only hands back the node's input array.

The one piece not from flwr is the in-memory ``Grid``: ``send_and_receive``
delivers each message to the addressed node's ``ClientApp`` in turn
(sequentially, in this process) and returns the replies. A delivered message is
a copy (``transport="copy"``: ``copy.deepcopy``; ``transport="wire"``: flwr's own
deflate/inflate object serialisation, as the SuperLink stores messages), because
the workflow sends one shared ``RecordDict`` to all nodes in stage 0 and
``secaggplus_mod`` pops a key out of it.

What is returned
----------------
``SecAggPlusWorkflow`` computes a weighted *mean*, sum_i(w_i x_i) / sum_i(w_i)
with w_i = num_examples_i / max_weight. Every node reports num_examples = 1 and
max_weight = 1.0, so w_i = 1 exactly (q_ratio = quantization_range, dq_ratio = 1.0)
and the workflow yields the plain mean; this harness multiplies it by the number
of nodes and returns the sum.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

_SUPERLINK_TASK_ID = 1
_RUN_ID = 1


def _flwr_version_check() -> None:
    import flwr

    if not flwr.__version__.startswith("1.41."):
        raise RuntimeError(f"this harness is written against flwr 1.41, found {flwr.__version__}")


def _make_grid_cls():
    from flwr.app import Message, RecordDict
    from flwr.serverapp.grid import Grid
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    def _wire_copy(msg: Message) -> Message:
        contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
        return inflate_object_from_contents(msg.object_id, contents)  # type: ignore[return-value]

    class InProcessGrid(Grid):
        """Grid that hands each message to the addressed node's ClientApp in this process."""

        def __init__(self, apps: dict[int, Any], contexts: dict[int, Any], transport: str,
                     stage_seconds: dict[str, float] | None) -> None:
            if transport not in ("copy", "wire"):
                raise ValueError("transport must be 'copy' or 'wire'")
            self._apps = apps
            self._contexts = contexts
            self._copy = copy.deepcopy if transport == "copy" else _wire_copy
            self._stage_seconds = stage_seconds
            self._run = None

        def set_run(self, run) -> None:
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                           group_id: str, ttl: float | None = None) -> Message:
            return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                           group_id=group_id, ttl=ttl)

        def get_node_ids(self) -> Iterable[int]:
            return list(self._apps)

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            raise NotImplementedError("only send_and_receive is used by SecAggPlusWorkflow")

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            raise NotImplementedError("only send_and_receive is used by SecAggPlusWorkflow")

        def send_and_receive(self, messages: Iterable[Message], *,
                             timeout: float | None = None) -> Iterable[Message]:
            from flwr.common.secure_aggregation.secaggplus_constants import (
                RECORD_KEY_CONFIGS,
                Key,
            )

            replies = []
            for msg in messages:
                stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
                t0 = time.perf_counter()
                nid = msg.metadata.dst_node_id
                delivered = self._copy(msg)
                reply = self._apps[nid](delivered, self._contexts[nid])
                replies.append(self._copy(reply))
                if self._stage_seconds is not None:
                    self._stage_seconds[f"nodes:{stage}"] = (
                        self._stage_seconds.get(f"nodes:{stage}", 0.0) + time.perf_counter() - t0)
            return replies

    return InProcessGrid


def run_flwr_secaggplus(
    inputs: dict[str, np.ndarray],
    *,
    num_shares: int,
    reconstruction_threshold: int,
    clipping_range: float = 8.0,
    quantization_range: int = 2**22,
    modulus_range: int = 2**32,
    transport: str = "copy",
    stage_seconds: dict[str, float] | None = None,
) -> np.ndarray:
    """One complete SecAgg+ round of flwr 1.41 over ``inputs``; returns the dequantised sum.

    ``inputs`` maps a node name to its float vector (all the same shape). ``num_shares``
    and ``reconstruction_threshold`` are integers in flwr's sense (the workflow's
    constructor arguments): ``num_shares`` is the size of each node's neighbourhood
    *including itself* (neighbours are the nodes within ``num_shares // 2`` ring
    positions after a random shuffle), so ``num_shares = n`` is the complete graph;
    flwr requires ``num_shares > 2`` and ``reconstruction_threshold < num_shares``
    (a value of 1 means 1.0, i.e. a fraction). An even ``num_shares < n`` makes flwr
    1.41's client mod raise IndexError in share_keys (the workflow bumps it to odd
    only after it has sent the even value to the nodes), so use an odd value. Values outside
    [-clipping_range, clipping_range] are clipped silently by flwr's ``quantize``.

    ``transport`` is how the in-memory Grid copies each message: "copy" (deepcopy)
    or "wire" (flwr's deflate/inflate serialisation). ``stage_seconds``, if given,
    is filled with seconds per stage spent inside the nodes' ClientApps
    ("nodes:<stage>") and in total ("total"); the server workflow's own time is
    "total" minus the node times.
    """
    _flwr_version_check()
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.supercore.task_identity import TaskIdentity

    if len(inputs) < 2:
        raise ValueError("SecAgg+ needs at least two nodes")
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in inputs.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"all inputs must have one shape, got {shapes}")
    (shape,) = shapes

    # Node IDs: random 63-bit like a SuperLink's, never SUPERLINK_NODE_ID.
    sysrand = random.SystemRandom()
    node_ids: dict[str, int] = {}
    while len(node_ids) < len(arrays):
        nid = sysrand.randrange(2, 2**63)
        if nid != SUPERLINK_NODE_ID and nid not in node_ids.values():
            node_ids[list(arrays)[len(node_ids)]] = nid

    class _InputClient(NumPyClient):
        def __init__(self, x: np.ndarray) -> None:
            self._x = x

        def fit(self, parameters, config):
            # weight 1 with max_weight 1.0 -> w_i = 1 in the workflow's weighted mean
            return [self._x], 1, {}

    def _client_fn_for(x: np.ndarray):
        def client_fn(context: Context):
            return _InputClient(x).to_client()
        return client_fn

    apps: dict[int, ClientApp] = {}
    contexts: dict[int, Context] = {}
    for name, x in arrays.items():
        nid = node_ids[name]
        apps[nid] = ClientApp(client_fn=_client_fn_for(x), mods=[secaggplus_mod])
        contexts[nid] = Context(run_id=_RUN_ID, node_id=nid, node_config={},
                                state=RecordDict(), run_config={})

    timings = stage_seconds
    grid = _make_grid_cls()(apps, contexts, transport, timings)

    class _PassThrough(FedAvg):
        """configure_fit is stock FedAvg; aggregate_fit keeps the workflow's unmasked vector."""

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"SecAgg+ round had failures: {failures}")
            return results[0][1].parameters, {}

    n = len(arrays)
    strategy = _PassThrough(fraction_fit=1.0, fraction_evaluate=0.0,
                            min_fit_clients=n, min_available_clients=n)
    client_manager = SimpleClientManager()
    for nid in apps:
        client_manager.register(GridClientProxy(node_id=nid, grid=grid, run_id=_RUN_ID))

    server_state = RecordDict({
        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: 1}),
        # Empty global model: the benchmark is the masked aggregation, not a model broadcast.
        MAIN_PARAMS_RECORD: compat.parameters_to_arrayrecord(ndarrays_to_parameters([]), True),
    })
    context = LegacyContext(
        Context(run_id=_RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=server_state,
                run_config={}),
        strategy=strategy, client_manager=client_manager)

    workflow = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=reconstruction_threshold,
        max_weight=1.0,
        clipping_range=float(clipping_range),
        quantization_range=quantization_range,
        modulus_range=modulus_range,
    )

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = _SUPERLINK_TASK_ID   # as flwr.server.compat.app.start_grid does
    TaskIdentity.run_id = _RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    t0 = time.perf_counter()
    try:
        workflow(grid, context)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    if timings is not None:
        timings["total"] = time.perf_counter() - t0

    record = context.state.array_records[MAIN_PARAMS_RECORD]
    out = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
    if len(out) != 1:
        raise RuntimeError("SecAgg+ round did not complete (see flwr's log above)")
    return (out[0] * n).reshape(shape)


def _bench(n: int, d: int, num_shares: int, threshold: int, repeats: int, transport: str,
           seed: int) -> None:
    rng = np.random.default_rng(seed)
    inputs = {f"node{i}": rng.uniform(-1.0, 1.0, size=d) for i in range(n)}
    exact = np.sum(np.stack(list(inputs.values())), axis=0)
    times, errors, last = [], [], {}
    # One untimed warm-up round (flwr imports, first-call caches).
    run_flwr_secaggplus(inputs, num_shares=num_shares, reconstruction_threshold=threshold,
                        transport=transport)
    for _ in range(repeats):
        st: dict[str, float] = {}
        t0 = time.perf_counter()
        agg = run_flwr_secaggplus(inputs, num_shares=num_shares,
                                  reconstruction_threshold=threshold, transport=transport,
                                  stage_seconds=st)
        times.append(time.perf_counter() - t0)
        errors.append(float(np.max(np.abs(agg - exact))))
        last = st
    nodes = sum(v for k, v in last.items() if k.startswith("nodes:"))
    split = ", ".join(f"{k.split(':')[1]} {v:.3f}" for k, v in last.items() if k.startswith("nodes:"))
    print(f"n={n} d={d} num_shares={num_shares} threshold={threshold} transport={transport}: "
          f"median {statistics.median(times):.3f} s over {repeats} "
          f"(runs {', '.join(f'{t:.3f}' for t in times)}); max |agg - exact| = {max(errors):.3e} "
          f"(quantisation step 2*8/2**22 = {16 / 2**22:.2e}, x n = {n * 16 / 2**22:.2e})")
    print(f"    last run: nodes {nodes:.3f} s [{split}], server workflow {last['total'] - nodes:.3f} s")


def _clipping_check() -> None:
    inputs = {"a": np.array([20.0, -20.0, 1.0]), "b": np.array([0.0, 0.0, 1.0]),
              "c": np.array([0.0, 0.0, 1.0])}
    agg = run_flwr_secaggplus(inputs, num_shares=3, reconstruction_threshold=2)
    print(f"clipping check: inputs a=[20,-20,1], b=c=[0,0,1]; exact sum [20,-20,3]; "
          f"flwr SecAgg+ returns {np.round(agg, 4).tolist()} (no error, no warning)")


def main() -> None:
    import logging

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10)
    p.add_argument("-d", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transport", choices=("copy", "wire", "both"), default="copy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="keep flwr's INFO log")
    args = p.parse_args()
    if not args.verbose:
        import flwr.supercore.logger  # noqa: F401  (sets the "flwr" logger to DEBUG on import)

        logging.getLogger("flwr").setLevel(logging.WARNING)

    n = args.n
    sparse_shares = 2 * math.ceil(math.log2(n)) + 1
    configs = [(n, n // 2 + 1)]                       # complete graph, majority threshold
    if sparse_shares < n:
        configs.append((sparse_shares, sparse_shares // 2 + 1))
    transports = ("copy", "wire") if args.transport == "both" else (args.transport,)
    for transport in transports:
        for num_shares, threshold in configs:
            _bench(n, args.d, num_shares, threshold, args.repeats, transport, args.seed)
    _clipping_check()


if __name__ == "__main__":
    main()
