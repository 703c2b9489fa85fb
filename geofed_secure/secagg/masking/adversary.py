"""A named catalogue of dishonest-server behaviours that drive the REAL secagg-v1 state machines.

Each :class:`Adversary` sits between the honest :class:`~geofed_secure.secagg.masking.MaskingServer` and the
nodes: it may rewrite what the server sends (:meth:`Adversary.tamper`), swallow what nodes answer
(:meth:`Adversary.intercept`) and replace the server's next stage (:meth:`Adversary.override`). Honest nodes
must refuse every entry with :class:`~geofed_secure.errors.ProtocolAborted` before revealing anything that
would expose an individual input. Users' attack suites reuse the catalogue through
``simulate_aggregation(..., adversary="<name>")`` or by driving :data:`CATALOGUE` entries themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geofed_secure.secagg.masking import primitives as crypto
from geofed_secure.secagg.masking.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    GraphSeeds,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    Message,
    RoundStart,
    ShareDelivery,
    UnmaskRequest,
    advertisement_signed_bytes,
)
from geofed_secure.secagg.masking.server import MaskingServer


@dataclass
class AttackContext:
    """What the dishonest server has: its honest twin's state, everything it saw, and its own randomness."""

    server: MaskingServer
    round: int
    rng: crypto.Randomness
    sent: list[tuple[int, str, Message]] = field(default_factory=list)  # (round, receiver, message) of earlier stages
    intercepted: dict[str, Message] = field(default_factory=dict)


class Adversary:
    """Base: behaves honestly. Subclasses override one or more hooks."""

    name = "honest"
    description = "follows the protocol"
    refused_at = ""  # the stage at which honest nodes refuse ("a|b": either, depending on the graph)
    rounds = 1  # rounds the simulation must run for the behaviour to apply
    sparse_only = False  # the behaviour needs a SecAgg+ graph (graph-seed stage)

    def tamper(self, outgoing: Mapping[str, Message], ctx: AttackContext) -> dict[str, Message]:
        return dict(outgoing)

    def intercept(self, reply: Message, ctx: AttackContext) -> bool:
        """True: the adversary keeps this node reply instead of passing it to the honest server."""
        return False

    def override(self, ctx: AttackContext) -> dict[str, Message] | None:
        """Messages to send instead of the honest server's next stage (None: let the server close the stage)."""
        return None


def _view_target(outgoing: Mapping[str, Message]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    first = next(iter(outgoing.values()), None)
    if isinstance(first, ConsistencyRequest | UnmaskRequest):
        return first.alive, first.dropped
    return None


class _ViewAdversary(Adversary):
    """Rewrites the first message set that carries a survivor view (ConsistencyRequest or UnmaskRequest)."""

    def tamper(self, outgoing, ctx):
        view = _view_target(outgoing)
        if view is None:
            return dict(outgoing)
        return self.rewrite(*view, outgoing, ctx.server.provisioning.federation_id, ctx)

    def rewrite(self, alive: tuple[str, ...], dropped: tuple[str, ...], outgoing: Mapping[str, Message], fed: str,
                ctx: AttackContext) -> dict[str, Message]:
        raise NotImplementedError


class AliveAndDropped(_ViewAdversary):
    name = "alive_and_dropped"
    description = ("lists one survivor both alive and dropped to every node, to collect its self-mask share AND its "
                   "mask-key share (the flwr 1.41 SecAgg+ defect that recovers one node's update)")
    refused_at = "consistency_check"

    def rewrite(self, alive, dropped, outgoing, fed, ctx):
        victim = alive[0]
        request = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=alive, dropped=tuple(sorted({*dropped, victim})))
        return {v: request for v in outgoing}


class SplitViews(Adversary):
    name = "split_views"
    description = ("shows half of the survivors the true view and the other half a view in which one survivor dropped, "
                   "then asks the second half to unmask with every signature it collected")
    refused_at = "unmask"

    def __init__(self) -> None:
        self._groups: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._views: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def tamper(self, outgoing, ctx):
        view = _view_target(outgoing)
        if view is None or self._groups is not None:
            return dict(outgoing)
        alive, dropped = view
        receivers = tuple(sorted(outgoing))
        half = len(receivers) // 2
        self._groups = (receivers[:half], receivers[half:])
        victim = self._groups[0][0]  # a survivor the second group is told dropped
        fed = ctx.server.provisioning.federation_id
        true_view = (alive, dropped)
        false_view = (tuple(v for v in alive if v != victim), tuple(sorted({*dropped, victim})))
        out = {}
        for v in receivers:
            a, d = true_view if v in self._groups[0] else false_view
            self._views[v] = (a, d)
            out[v] = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=a, dropped=d)
        return out

    def intercept(self, reply, ctx):
        if isinstance(reply, ConsistencySignature):
            ctx.intercepted[reply.node_id] = reply
            return True
        return False

    def override(self, ctx):
        if self._groups is None or not ctx.intercepted:
            return None
        fed = ctx.server.provisioning.federation_id
        signatures = {v: m.signature for v, m in ctx.intercepted.items() if isinstance(m, ConsistencySignature)}
        out = {}
        for v in self._groups[1]:
            alive, dropped = self._views[v]
            out[v] = UnmaskRequest(federation_id=fed, round=ctx.round, alive=alive, dropped=dropped,
                                   signatures={s: sig for s, sig in signatures.items() if s in alive})
        ctx.intercepted.clear()
        return out


class InjectKey(Adversary):
    name = "inject_key"
    description = "adds keys of a node that was never provisioned (a server-controlled sybil) to the roster"
    refused_at = "share_keys"

    def tamper(self, outgoing, ctx):
        first = next(iter(outgoing.values()), None)
        if not isinstance(first, KeyRoster):
            return dict(outgoing)
        identity, _ = crypto.ed25519_keypair(ctx.rng)
        _, channel = crypto.x25519_keypair(ctx.rng)
        adverts = first.decoded()
        keys = tuple(crypto.x25519_keypair(ctx.rng)[1] for _ in adverts[0].mask_keys)
        commitments = tuple(crypto.commitment(ctx.rng.token(32), "sybil") for _ in keys)
        fed, sybil = first.federation_id, "zz-sybil"
        fields: dict[str, Any] = {"federation_id": fed, "epoch": first.epoch, "node_id": sybil, "channel_key": channel, "mask_keys": keys,
                      "commitments": commitments, "graph_commitment": crypto.commitment(ctx.rng.token(32), "sybil")}
        fake = KeyAdvertisement(**fields, signature=crypto.sign(identity, advertisement_signed_bytes(**fields)))
        roster = KeyRoster.of(fed, first.epoch, (*adverts, fake))
        return {v: roster for v in outgoing}


class ReplaceKey(Adversary):
    name = "replace_key"
    description = "replaces one node's advertised mask key with a key the server knows (man in the middle)"
    refused_at = "share_keys"

    def tamper(self, outgoing, ctx):
        first = next(iter(outgoing.values()), None)
        if not isinstance(first, KeyRoster):
            return dict(outgoing)
        victim, *others = first.decoded()
        _, server_key = crypto.x25519_keypair(ctx.rng)
        forged = dataclasses.replace(victim, mask_keys=(server_key, *victim.mask_keys[1:]))
        roster = KeyRoster.of(first.federation_id, first.epoch, (forged, *others))
        return {v: roster for v in outgoing}


class ForgedShares(Adversary):
    name = "forged_shares"
    description = "flips one byte of a sealed share in transit (the server tries to plant its own share values)"
    refused_at = "masked_input"

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        for v, message in out.items():
            if isinstance(message, ShareDelivery) and message.sealed:
                sender = next(iter(message.sealed))
                blob = bytearray(message.sealed[sender])
                blob[0] ^= 1
                out[v] = dataclasses.replace(message, sealed={**message.sealed, sender: bytes(blob)})
                break
        return out


class CohortBelowFloor(_ViewAdversary):
    name = "cohort_below_floor"
    description = "claims all but two nodes dropped, so the 'sum' would be one other node's input"
    refused_at = "consistency_check"

    def rewrite(self, alive, dropped, outgoing, fed, ctx):
        out = {}
        for v in outgoing:
            kept = tuple(sorted({v, next(a for a in alive if a != v)}))
            out[v] = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=kept,
                                        dropped=tuple(sorted(set(alive) - set(kept) | set(dropped))))
        return out


class UnmaskWithoutCheck(_ViewAdversary):
    name = "unmask_without_check"
    description = "declares a node dropped and asks for its mask-key shares without the consistency check"
    refused_at = "unmask"

    def rewrite(self, alive, dropped, outgoing, fed, ctx):
        victim = alive[-1]
        forged_sig = {alive[0]: bytes(64)}
        request = UnmaskRequest(federation_id=fed, round=ctx.round, alive=tuple(a for a in alive if a != victim),
                                dropped=tuple(sorted({*dropped, victim})), signatures=forged_sig)
        return {v: request for v in outgoing if v != victim}


class AnchorDigestChanged(Adversary):
    name = "anchor_digest_changed"
    description = "starts a round with a different anchor set (e.g. candidate private records posing as public anchors)"
    refused_at = "advertise_keys"

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        for v, message in out.items():
            if isinstance(message, RoundStart):
                out[v] = dataclasses.replace(message, anchor_digest=hashlib.sha256(b"other anchors").hexdigest())
        return out


class ReplayRound(Adversary):
    name = "replay_round"
    description = "in round 2, replays round 1's unmask request to collect round-1 shares again"
    refused_at = "unmask"
    rounds = 2

    def tamper(self, outgoing, ctx):
        if ctx.round < 2 or _view_target(outgoing) is None:
            return dict(outgoing)
        old = {v: m for r, v, m in ctx.sent if r == 1 and isinstance(m, UnmaskRequest | ConsistencyRequest)}
        return {v: old.get(v, m) for v, m in outgoing.items()}


class _CollectSignatures(Adversary):
    """Keeps every consistency signature and then asks each signer to unmask with all of them."""

    def intercept(self, reply, ctx):
        if isinstance(reply, ConsistencySignature):
            ctx.intercepted[reply.node_id] = reply
            return True
        return False

    def signed_view(self, ctx: AttackContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The view the signers were shown (the honest twin's, unless a subclass showed another)."""
        return ctx.server._view

    def override(self, ctx):
        if not ctx.intercepted:
            return None
        fed = ctx.server.provisioning.federation_id
        alive, dropped = self.signed_view(ctx)
        signatures = {v: m.signature for v, m in ctx.intercepted.items() if isinstance(m, ConsistencySignature)}
        request = UnmaskRequest(federation_id=fed, round=ctx.round, alive=alive, dropped=dropped, signatures=signatures)
        ctx.intercepted.clear()
        return {v: request for v in signatures}


class WithheldShares(_CollectSignatures):
    name = "withheld_shares"
    description = ("delivers to one node the shares of only t - 1 of its neighbours (it then masks with those alone), "
                   "discards those peers' masked inputs so they count as dropped, shows every node that one consistent "
                   "view and asks the signers to unmask: the victim's self-mask seed (alive) and its peers' mask keys "
                   "(dropped) would give its input (issue 12.1; Bonawitz et al. 2017 require survivors within the "
                   "masked-with set)")
    refused_at = "consistency_check"

    def __init__(self) -> None:
        self.victim: str | None = None
        self.peers: set[str] = set()

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        if self.victim is None and any(isinstance(m, ShareDelivery) for m in out.values()):
            self.victim = min(out)
            delivery = out[self.victim]
            plan = ctx.server.plan
            assert isinstance(delivery, ShareDelivery) and plan is not None
            self.peers = set(sorted(delivery.sealed)[:plan.threshold - 1])
            out[self.victim] = dataclasses.replace(delivery, sealed={k: v for k, v in delivery.sealed.items() if k in self.peers})
        return out

    def intercept(self, reply, ctx):
        if isinstance(reply, MaskedInput) and reply.node_id in self.peers:
            return True  # the server "lost" them: they count as dropped
        return super().intercept(reply, ctx)


class WithheldSharesFastPath(WithheldShares):
    name = "withheld_shares_fast_path"
    description = ("withholds shares from one node as withheld_shares, keeps every masked input and asks for the "
                   "unchecked fast-path unmask, which lists alive nodes the victim never masked with")
    refused_at = "unmask"

    def tamper(self, outgoing, ctx):
        out = super().tamper(outgoing, ctx)
        view = _view_target(out)
        if view is None or isinstance(next(iter(out.values())), UnmaskRequest):
            return out
        everyone = tuple(sorted({*view[0], *view[1]}))  # a check was due (dropout, or SecAgg+): skip it
        request = UnmaskRequest(federation_id=ctx.server.provisioning.federation_id, round=ctx.round, alive=everyone,
                                dropped=(), signatures={})
        return {v: request for v in out}

    def intercept(self, reply, ctx):
        return False


class SplitFastPathAndCheck(Adversary):
    name = "split_fast_path_and_check"
    description = ("half of the nodes get the unchecked fast-path unmask (self-mask seeds of all); the other half is "
                   "shown a view in which the first half dropped (their mask keys), to be signed and unmasked among "
                   "themselves")
    refused_at = "consistency_check|unmask"  # SecAgg+ epochs have no unchecked unmask: refused there first

    def __init__(self) -> None:
        self.done = False

    def tamper(self, outgoing, ctx):
        view = _view_target(outgoing)
        if self.done or view is None:
            return dict(outgoing)
        self.done = True
        fed = ctx.server.provisioning.federation_id
        everyone = tuple(sorted({*view[0], *view[1]}))
        receivers = sorted(outgoing)
        fast, rest = receivers[:(len(receivers) + 1) // 2], receivers[(len(receivers) + 1) // 2:]
        unchecked = UnmaskRequest(federation_id=fed, round=ctx.round, alive=everyone, dropped=(), signatures={})
        check = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=tuple(rest),
                                   dropped=tuple(v for v in everyone if v not in rest))
        return {v: unchecked if v in fast else check for v in receivers}


class _GraphSeedAdversary(Adversary):
    sparse_only = True
    refused_at = "share_keys"

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        for v, message in out.items():
            if isinstance(message, GraphSeeds):
                target = next(u for u in sorted(message.nonces) if u != v)
                out[v] = dataclasses.replace(message, nonces=self.rewrite(dict(message.nonces), target, ctx))
        return out

    def rewrite(self, nonces: dict[str, bytes], target: str, ctx: AttackContext) -> dict[str, bytes]:
        raise NotImplementedError


class SteerGraphSeed(_GraphSeedAdversary):
    name = "steer_graph_seed"
    description = ("replaces one member's revealed graph-seed nonce with one of its choice, to steer which nodes become "
                   "neighbours (e.g. a victim between two colluders)")

    def rewrite(self, nonces, target, ctx):
        nonces[target] = ctx.rng.token(32)
        return nonces


class OmitGraphReveal(_GraphSeedAdversary):
    name = "omit_graph_reveal"
    description = "leaves one member's nonce out of the graph seed (choosing a subset of reveals is a way to grind the graph)"

    def rewrite(self, nonces, target, ctx):
        del nonces[target]
        return nonces


class SparseFastPathSplit(_CollectSignatures):
    name = "sparse_fast_path_split"
    description = ("on a SecAgg+ ring of degree 4: victim v masks only with v-2 and v+2 (shares withheld), v-2 and v+2 "
                   "are kept from masking with v-1 and v+1; v-2, v, v+2 get the unchecked fast path (v's self-mask seed), "
                   "the others a check view, signed by all of them, in which v-2, v and v+2 dropped (the mask keys of "
                   "v-2 and v+2). Holder sets differ between owners in a sparse graph, so a per-owner majority does not "
                   "keep the two groups apart; with 9 nodes this recovered v's input before SecAgg+ epochs lost the "
                   "unchecked fast path")
    refused_at = "consistency_check|unmask"
    sparse_only = True

    def __init__(self):
        self.order: list[str] | None = None
        self.done = False

    def at(self, k):
        assert self.order is not None, "the ring order is read from the first share delivery"
        return self.order[(self.order.index(self.victim) + k) % len(self.order)]

    def tamper(self, outgoing, ctx):
        out = dict(outgoing)
        first = next(iter(out.values()), None)
        if isinstance(first, ShareDelivery) and self.order is None:
            plan = self.plan = ctx.server.plan
            self.order = sorted(plan.members, key=lambda v: hashlib.sha256(plan.graph_seed + v.encode()).digest())
            self.victim = self.order[0]
            keep = {self.at(0): {self.at(-2), self.at(2)}, self.at(-2): set(plan.neighbours(self.at(-2))) - {self.at(-1)},
                    self.at(2): set(plan.neighbours(self.at(2))) - {self.at(1)}}
            for v, senders in keep.items():
                out[v] = dataclasses.replace(out[v], sealed={k: b for k, b in out[v].sealed.items() if k in senders})
        view = next((m for m in out.values() if isinstance(m, ConsistencyRequest | UnmaskRequest)), None)
        if view is not None and not self.done:
            self.done = True
            fed = ctx.server.provisioning.federation_id
            fast = {self.at(-2), self.at(0), self.at(2)}
            everyone = tuple(sorted({*view.alive, *view.dropped}))
            unchecked = UnmaskRequest(federation_id=fed, round=ctx.round, signatures={}, dropped=(),
                                      alive=tuple(v for v in everyone if v not in (self.at(-1), self.at(1))))
            rest = tuple(v for v in everyone if v not in fast)
            self.check = ConsistencyRequest(federation_id=fed, round=ctx.round, alive=rest, dropped=tuple(sorted(fast)))
            out = {v: unchecked if v in fast else self.check for v in everyone}
        return out

    def signed_view(self, ctx):
        return self.check.alive, self.check.dropped


CATALOGUE: dict[str, type[Adversary]] = {cls.name: cls for cls in (
    AliveAndDropped, SplitViews, InjectKey, ReplaceKey, ForgedShares, CohortBelowFloor, UnmaskWithoutCheck,
    AnchorDigestChanged, ReplayRound, WithheldShares, WithheldSharesFastPath, SplitFastPathAndCheck, SteerGraphSeed,
    OmitGraphReveal, SparseFastPathSplit)}
