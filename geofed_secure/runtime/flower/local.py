"""An in-process Flower ``Grid``: the real ServerApp and ClientApp objects, every message through Flower's own
serialisation, no SuperLink.

It delivers each message as a SuperNode does in its default (subprocess) isolation: the ClientApp is called once
per message with a fresh ``Context`` (nothing of the node survives in memory; the site's state directory carries
it), on a copy made by Flower's deflate/inflate (the bytes a SuperLink stores). It exists for tests and for
checking the Flower driver against the simulator on one machine; multi-site runs use Flower's deployment engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1


def wire_copy(message: Message) -> Message:
    """``message`` as the receiver gets it: deflated to Flower's stored form and inflated again."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    copied = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(copied, Message)
    return copied


class InProcessGrid(Grid):
    """A Grid over ClientApps in this process: ``sites`` maps a Flower node id to (its ClientApp, its node config).

    ``drop(message)`` (tests) may return True to lose a message before delivery, as a crashed SuperNode would.
    """

    def __init__(self, sites: Mapping[int, tuple[ClientApp, dict[str, Any]]], *,
                 drop: Callable[[Message], bool] | None = None) -> None:
        self.sites = dict(sites)
        self.drop = drop or (lambda message: False)
        self._run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the in-process grid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the in-process grid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            if self.drop(message):
                continue
            node = message.metadata.dst_node_id
            app, node_config = self.sites[node]
            context = Context(run_id=RUN_ID, node_id=node, node_config=dict(node_config), state=RecordDict(),
                              run_config={})
            with _identity(node):
                reply = app(wire_copy(message), context)
            replies.append(wire_copy(reply))
        return replies


class _identity:
    """Flower stamps messages with the identity of the running task; set it as a SuperNode's process would."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id

    def __enter__(self) -> None:
        self.saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, self.node_id

    def __exit__(self, *exc: object) -> None:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = self.saved


def server_identity() -> _identity:
    """The identity of the ServerApp's task (the SuperLink's node id), for running a ServerApp in process."""
    return _identity(SUPERLINK_NODE_ID)
