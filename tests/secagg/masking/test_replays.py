"""secagg-v1 replays, duplicates, other federations, misrouting and forged messages."""

from __future__ import annotations

import dataclasses

import pytest

from geofed_secure.errors import (
    ProtocolAborted,
    RemoteProtocolError,
)
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.machine import rows
from geofed_secure.secagg.masking import (
    MaskingParameters,
)
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.federation import MaskingFederation
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    MaskedInput,
    RoundStart,
    ShareDelivery,
    UnmaskRequest,
)
from geofed_secure.secagg.masking.tables import (
    NODE_TRANSITIONS,
    NodeEvent,
)
from secagg.masking.support import (
    NODE_TRIGGERS,
    PATH_TO,
    SEED,
    TABLE_DEGREE,
    TABLE_IDS,
    drive,
    feed,
    node_in,
    reference_round,
    revealed,
    sent_to,
    server_in,
    table_fed,
    table_vectors,
    trigger_message,
)

# =========================================================================================================
# 5. Replays, duplicates, other federations, misrouting


def round_two(state, *, new_epoch):
    """A federation after round 1 (n4's masked input lost), with round 2 (a new epoch or the steady state) driven
    until n0 is in ``state``. Returns (federation, round-1 stages, round-2 stages)."""
    fed = table_fed(rounds_per_epoch=1 if new_epoch else 3)
    lost = {"collect_inputs": {"n4"}}
    first = drive(fed, 1, table_vectors(), silent=lost)
    target = {"advertised": "collect_advertisements", "revealed": "collect_reveals", "shared": "collect_shares",
              "masked": "collect_inputs", "signed": "collect_signatures"}[state]
    second = drive(fed, 2, table_vectors(), until=target, silent=lost)
    assert fed.nodes["n0"].state == state
    assert isinstance(second[0].outgoing["n0"], RoundStart) and (second[0].outgoing["n0"].epoch == 2) is new_epoch
    return fed, first, second


@pytest.mark.parametrize("round_, epoch", [(1, 1), (0, 0), (1, 0)])
def test_replayed_round_start_is_refused(round_, epoch):
    node = node_in("ready")
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(reference_round()["start"], round=round_, epoch=epoch))
    assert node.state == "aborted"


@pytest.mark.parametrize("relabel", [False, True])
def test_roster_of_an_earlier_epoch_is_refused(relabel):
    # Prepare: n0 advertised for epoch 2; the server replays epoch 1's roster (optionally relabelled as epoch 2)
    fed, first, _ = round_two("advertised", new_epoch=True)
    old = first[1].outgoing["n0"]
    message = dataclasses.replace(old, epoch=2) if relabel else old

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], message)
    assert fed.nodes["n0"].state == "aborted"


@pytest.mark.parametrize("relabel", [False, True])
def test_share_delivery_of_an_earlier_epoch_is_refused(relabel):
    fed, first, _ = round_two("shared", new_epoch=True)
    old = sent_to(first, ShareDelivery)
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], dataclasses.replace(old, epoch=2) if relabel else old)


@pytest.mark.parametrize("relabel", [False, True])
def test_misrouted_share_delivery_is_refused(relabel):
    node = node_in("shared")
    other = reference_round()["deliveries"]["n1"]
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(other, receiver="n0") if relabel else other)
    assert node.state == "aborted"


def test_share_delivery_from_a_stranger_or_with_a_swapped_sender_is_refused():
    ref = reference_round()["delivery"]
    swapped = dict(ref.sealed)
    a, b = sorted(swapped)[:2]
    swapped[a], swapped[b] = swapped[b], swapped[a]
    for sealed in (swapped, {**ref.sealed, "n9": next(iter(ref.sealed.values()))}):
        node = node_in("shared")
        with pytest.raises(ProtocolAborted):
            feed(node, dataclasses.replace(ref, sealed=sealed))


@pytest.mark.parametrize("state", ["advertised", "shared", "masked", "signed"])
def test_duplicate_server_message_is_refused(state):
    node = node_in(state)
    last = reference_round()[PATH_TO[state][-1]]
    with pytest.raises(ProtocolAborted):
        feed(node, last)
    assert node.state == "aborted"


def test_duplicate_unmask_request_after_the_round_is_refused():
    node = node_in("ready")
    with pytest.raises(ProtocolAborted):
        feed(node, reference_round()["unmask"])


@pytest.mark.parametrize("state, event, guard", [(s, e, g) for s in NODE_TRANSITIONS for e, g, _ in rows(NODE_TRANSITIONS, s)
                                                 if (e, g) in NODE_TRIGGERS and e is not NodeEvent.ABANDON_ROUND], ids=str)
def test_legal_message_for_another_federation_is_refused(state, event, guard):
    node = node_in(state)
    with pytest.raises(ProtocolAborted):
        feed(node, dataclasses.replace(trigger_message(event, guard), federation_id="another-federation"))
    assert node.state == "aborted"


def test_whole_round_of_another_federation_is_refused():
    # Prepare: same node ids, other federation and keys
    other = MaskingFederation.provision(TABLE_IDS, MaskingParameters(rounds_per_epoch=3, degree=TABLE_DEGREE), seed=SEED,
                                        federation_id="other")
    stages = drive(other, 1, table_vectors())
    node = table_fed().nodes["n0"]

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(node, stages[0].outgoing["n0"])


def test_check_and_unmask_of_an_earlier_round_are_refused_in_the_steady_state():
    # Prepare: round 2 reuses epoch 1; n4 drops, so n0 goes through the consistency check
    fed, first, _ = round_two("masked", new_epoch=False)

    # Execute / Assert: round 1's check replayed in round 2
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], sent_to(first, ConsistencyRequest))
    assert fed.nodes["n0"].state == "aborted"


def test_round_one_signatures_are_refused_in_round_two():
    # Prepare: n0 signed round 2's view (which equals round 1's view: n4 dropped both times)
    fed, first, second = round_two("signed", new_epoch=False)
    check2 = second[-1].outgoing["n0"]
    round1 = sent_to(first, UnmaskRequest)
    assert (check2.alive, check2.dropped) == (round1.alive, round1.dropped)
    replay = dataclasses.replace(round1, round=2)

    # Execute / Assert
    with pytest.raises(ProtocolAborted):
        feed(fed.nodes["n0"], replay)
    assert revealed(fed.transcript, 2) == {}


def test_server_refuses_stale_duplicate_foreign_and_unexpected_node_messages():
    # Prepare: the server waits for round 2's masked inputs (steady state)
    fed, held = server_in("collect_inputs", steady=True)
    round1_input = reference_round()["replies"][MaskedInput]
    mine = held["n0"]

    # Execute / Assert
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(round1_input)  # replayed from round 1
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, federation_id="another-federation"))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, node_id="stranger"))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, words=mine.words[:-1]))
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(mine, words=mine.words.astype("<u4")))
    fed.server.receive(mine)
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(mine)  # duplicate
    assert fed.server.state == "collect_inputs"


def test_server_refuses_forged_adverts_bundles_signatures_and_shares():
    # Prepare
    fed, adverts = server_in("collect_advertisements")
    advert = adverts["n0"]

    # Execute / Assert: advertisements must carry the node's own signature for this epoch
    for forged in (dataclasses.replace(advert, epoch=2), dataclasses.replace(advert, channel_key=bytes(32)),
                   dataclasses.replace(advert, node_id="n1")):
        with pytest.raises(RemoteProtocolError):
            fed.server.receive(forged)

    fed, bundles = server_in("collect_shares")
    bundle = bundles["n0"]
    for sealed in ({k: v for k, v in list(bundle.sealed.items())[1:]}, {**bundle.sealed, "n0": b"x"}):
        with pytest.raises(RemoteProtocolError):
            fed.server.receive(dataclasses.replace(bundle, sealed=sealed))

    fed, signatures = server_in("collect_signatures")
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(signatures["n0"], signature=signatures["n1"].signature))

    fed, responses = server_in("collect_unmask")
    response = responses["n0"]
    short = {k: v[:-1] for k, v in response.self_mask_shares.items()}
    with pytest.raises(RemoteProtocolError):
        fed.server.receive(dataclasses.replace(response, self_mask_shares=short))


def test_a_lying_node_share_makes_the_server_abort_never_a_wrong_sum():
    # Prepare: n0 (first in the reconstruction order) returns a wrong self-mask share of another owner
    fed, responses = server_in("collect_unmask")
    response = responses["n0"]
    owner = next(o for o in response.self_mask_shares if o != "n0")
    bad = bytes(crypto.SHARE_BYTES - 1) + b"\x01"
    fed.server.receive(dataclasses.replace(response, self_mask_shares={**response.self_mask_shares, owner: bad}))
    for v, r in responses.items():
        if v != "n0":
            fed.server.receive(r)

    # Execute / Assert
    with pytest.raises(ProtocolAborted) as info:
        fed.server.close_stage()
    assert info.value.party == SERVER
    assert fed.server.outcome is None and fed.server.state == "aborted"
