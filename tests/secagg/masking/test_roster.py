"""The key roster (SPEC 4, 5.1-5.3): members, graph commitments and advertisements kept as wire bytes.

A node decodes, checks and verifies only its share holders' advertisements (the keys it uses): O(degree) per node
instead of O(n). These tests drive real nodes of a 24-node SecAgg+ ring through a roster a dishonest server edited
and check who refuses it, and that the others decode nothing else.
"""

from __future__ import annotations

import pytest

from geofed_secure.errors import MessageError, ProtocolAborted
from geofed_secure.secagg.common import SERVER
from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking import spec
from geofed_secure.secagg.masking.messages import GraphSeeds, KeyAdvertisement, KeyRoster, ShareBundle, decode
from secagg.masking.support import drive, feed, provision, vectors

DEGREE = 4
IDS = tuple(f"n{i:02d}" for i in range(24))
VICTIM = "n07"


def _advertised():
    """A 24-node ring whose nodes advertised for round 1; returns (federation, honest roster, nonces by node)."""
    honest = provision(IDS, rounds_per_epoch=1, degree=DEGREE)
    stages = drive(honest, 1, vectors(IDS), until="collect_shares")
    roster, seeds = stages[1].outgoing[IDS[0]], stages[2].outgoing[IDS[0]]
    assert isinstance(roster, KeyRoster) and isinstance(seeds, GraphSeeds)
    fed = provision(IDS, rounds_per_epoch=1, degree=DEGREE)  # the same seed: the same keys and nonces
    drive(fed, 1, vectors(IDS), until="collect_advertisements")
    return fed, roster, dict(seeds.nonces)


def _with(roster, *, blob=None, commitment=None):
    """``roster`` with the victim's advertisement bytes or listed graph commitment replaced (the same sizes)."""
    members = roster.members
    i = members.index(VICTIM)
    blobs = list(roster.advertisements)
    blobs[i] = blob if blob is not None else blobs[i]
    commitments = dict(roster.graph_commitments)
    commitments[VICTIM] = commitment if commitment is not None else commitments[VICTIM]
    return KeyRoster(federation_id=roster.federation_id, epoch=roster.epoch, graph_commitments=commitments,
                     advertisements=tuple(blobs))


def _run(fed, roster, nonces):
    """Feed ``roster`` then the graph seeds of ``nonces`` to every node; return (refusals at each, bundles)."""
    refused: dict[str, dict[str, str]] = {"roster": {}, "seeds": {}}
    for v in IDS:
        try:
            feed(fed.nodes[v], roster)
        except ProtocolAborted as exc:
            refused["roster"][v] = exc.reason
    seeds = GraphSeeds(federation_id=roster.federation_id, epoch=roster.epoch, nonces=nonces)
    bundles = {}
    for v in IDS:
        if v in refused["roster"]:
            continue
        try:
            bundles[v] = feed(fed.nodes[v], seeds)
        except ProtocolAborted as exc:
            refused["seeds"][v] = exc.reason
    return refused, bundles


def _plan(fed, roster, nonces):
    return spec.plan_epoch(fed.provisioning, roster, party=SERVER, nonces=nonces)


def test_a_node_decodes_only_its_holders_advertisements(monkeypatch):
    # Prepare: count the advertisements decoded while each node plans its epoch
    fed, roster, nonces = _advertised()
    decoded: list[str] = []
    real = spec.decode

    def counting(data):
        message = real(data)
        decoded.append(message.node_id)
        return message

    monkeypatch.setattr(spec, "decode", counting)
    # Execute
    refused, bundles = _run(fed, roster, nonces)
    # Assert: everyone shares keys, and node v decoded exactly its DEGREE neighbours' advertisements
    assert refused == {"roster": {}, "seeds": {}} and len(bundles) == len(IDS)
    plan = _plan(fed, roster, nonces)
    assert len(decoded) == DEGREE * len(IDS)
    assert sorted(decoded) == sorted(u for v in IDS for u in plan.neighbours(v))


def test_an_undecodable_advertisement_stops_its_holders_only():
    # Prepare: the victim's advertisement replaced by bytes of the same size that are not a message
    fed, roster, nonces = _advertised()
    size = len(roster.advertisements[roster.members.index(VICTIM)])
    bad = _with(roster, blob=b"GFSA\x02" + bytes(size - 5))
    # Execute
    refused, bundles = _run(fed, bad, nonces)
    # Assert: the victim refuses its altered entry, its holders the undecodable one; the rest go on (availability)
    plan = _plan(fed, bad, nonces)
    assert set(refused["roster"]) == {VICTIM}
    assert set(refused["seeds"]) == set(plan.neighbours(VICTIM))
    assert all("malformed" in why for why in refused["seeds"].values())
    assert set(bundles) == set(IDS) - {VICTIM} - set(plan.neighbours(VICTIM))
    assert all(isinstance(b, ShareBundle) for b in bundles.values())


def test_another_members_advertisement_in_an_entry_stops_its_holders():
    # Prepare: the victim's entry holds n08's advertisement (validly signed, by n08)
    fed, roster, nonces = _advertised()
    members = roster.members
    other = decode(roster.advertisements[members.index("n08")])
    assert isinstance(other, KeyAdvertisement)
    bad = _with(roster, blob=other.encode())
    # Execute
    refused, _ = _run(fed, bad, nonces)
    # Assert
    plan = _plan(fed, bad, nonces)
    assert set(refused["roster"]) == {VICTIM}
    assert set(refused["seeds"]) == set(plan.neighbours(VICTIM))
    assert all("another node's advertisement" in why for why in refused["seeds"].values())


def test_a_graph_commitment_the_server_chose_is_refused_by_the_owner_and_its_holders():
    # Prepare: the server lists, for the victim, a commitment to a nonce of its own and reveals that nonce: it
    # would steer the graph if the victim's holders did not compare it with the victim's signed advertisement
    fed, roster, nonces = _advertised()
    steer = bytes(range(32))
    listed = crypto.commitment(steer, roster.federation_id, roster.epoch, VICTIM, purpose="graph-commit")
    bad = _with(roster, commitment=listed)
    # Execute
    refused, _ = _run(fed, bad, {**nonces, VICTIM: steer})
    # Assert
    plan = _plan(fed, bad, {**nonces, VICTIM: steer})
    assert set(refused["roster"]) == {VICTIM}
    assert set(refused["seeds"]) == set(plan.neighbours(VICTIM))
    assert all("graph commitment" in why for why in refused["seeds"].values())


def test_a_roster_needs_one_advertisement_per_member():
    _, roster, _ = _advertised()
    with pytest.raises(MessageError, match="one per member"):
        KeyRoster(federation_id=roster.federation_id, epoch=roster.epoch, graph_commitments=roster.graph_commitments,
                  advertisements=roster.advertisements[:-1])
