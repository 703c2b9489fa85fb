"""geofed-secagg-v1 written from protocols/secagg-v1/SPEC.md alone (no code from geofed_secure).

A second, spec-derived implementation of the node side and of the server's pure functions and reconstruction,
kept as an interoperability check against the published vectors. Section numbers refer to the SPEC.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from fractions import Fraction

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL_ID = "geofed-secagg-v1"
P521 = 2**521 - 1
SHARE_LEN = 66


class MessageError(Exception):
    """Bytes that do not decode under section 4 (5.7); raised before any rule of section 5 is checked."""


class ProtocolAborted(Exception):
    """A party refuses a message or cannot complete a stage (5.7); names the party, the stage and the reason."""

    def __init__(self, party: str, stage: str, reason: str):
        super().__init__(f"{party} aborted at {stage}: {reason}")
        self.party, self.stage, self.reason = party, stage, reason


class ConfigError(Exception):
    """Parameters refused at provisioning (section 1) or by the fixed-point rule (section 3)."""


class DataError(Exception):
    """An input the node cannot mask (section 3): NaN/inf, a length other than `vector_length`, a weight above clip;
    refused on the node before encoding, the session unchanged (5.7)."""


# ---------------------------------------------------------------- 2.1-2.4 encodings, KDF, hashes, PRG

def _b(v) -> bytes:
    if isinstance(v, int):
        v = str(v)
    return v.encode("ascii") if isinstance(v, str) else bytes(v)


def field(v) -> bytes:
    v = _b(v)
    return len(v).to_bytes(4, "big") + v


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def kdf(ikm: bytes, purpose: str, *ctx) -> bytes:
    info = field(PROTOCOL_ID) + field(purpose) + b"".join(field(c) for c in ctx)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def H(purpose: str, *parts) -> bytes:
    return hashlib.sha256(field(PROTOCOL_ID) + field(purpose) + b"".join(field(p) for p in parts)).digest()


def commit(s: bytes, purpose: str, *ctx) -> bytes:
    return hashlib.sha256(field(PROTOCOL_ID) + field(purpose) + b"".join(field(c) for c in ctx) + s).digest()


def prg(key: bytes, d: int, bits: int) -> list[int]:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(d * bits // 8)) + enc.finalize()
    w = bits // 8
    return [int.from_bytes(stream[j * w:(j + 1) * w], "little") for j in range(d)]


def x25519(priv: bytes, pub: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))


def x25519_pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def ed25519_verify(pub: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------- 2.5 Shamir over p = 2^521 - 1

def shamir_coefficient(rng: DeterministicRandomness, log: list) -> int:
    while True:
        raw = rng.token(SHARE_LEN)
        log.append(raw)
        c = int.from_bytes(raw, "big") & P521
        if c != P521:
            return c


def shamir_eval(coeffs: list[int], x: int) -> bytes:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % P521
    return acc.to_bytes(SHARE_LEN, "big")


def shamir_reconstruct(points: list[tuple[int, bytes]]) -> bytes:
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num, den = num * xm % P521, den * (xm - xj) % P521
        secret = (secret + int.from_bytes(yj, "big") * num * pow(den, -1, P521)) % P521
    if secret >= 2**256:
        raise ProtocolAborted("server", "unmask", "rebuilt secret out of range")
    return secret.to_bytes(32, "big")


# ---------------------------------------------------------------- 2.6-2.8 share transport, signatures

def share_ad(fed: str, epoch: int, owner: str, holder: str, roster_digest: bytes) -> bytes:
    return f"{PROTOCOL_ID}|shares|{fed}|{epoch}|{owner}|{holder}|{roster_digest.hex()}".encode("ascii")


def advert_payload(header: dict) -> bytes:
    body = {k: v for k, v in header.items() if k not in ("type", "signature")}
    return f"{PROTOCOL_ID}|advertise|".encode() + canonical_json(body)


def view_payload(fed: str, rnd: int, alive, dropped, roster_digest: bytes) -> bytes:
    view = {"alive": list(alive), "dropped": list(dropped), "federation_id": fed,
            "roster": roster_digest.hex(), "round": rnd}
    return f"{PROTOCOL_ID}|view|".encode() + canonical_json(view)


# ---------------------------------------------------------------- 2.9 deterministic randomness

class DeterministicRandomness:
    def __init__(self, seed, label: str):
        key = hashlib.sha256(f"{PROTOCOL_ID}|rng|{label}|".encode() + _b(seed)).digest()
        self._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def token(self, k: int) -> bytes:
        return self._enc.update(bytes(k))

    def child(self, label: str) -> DeterministicRandomness:
        return DeterministicRandomness(self.token(32), label)


def simulation_randomness(seed: int, nodes: list[str]):
    """(identity seeds, node rngs, server rng) of a vector case, in the order of 2.9."""
    root = DeterministicRandomness(str(seed), "simulation")
    ids = {v: root.child("identity/" + v).token(32) for v in sorted(nodes)}
    rngs = {v: root.child("node/" + v) for v in sorted(nodes)}
    return ids, rngs, root.child("server")


# ---------------------------------------------------------------- section 1 parameters, section 3 fixed point

def check_provisioning(threshold, degree, z: int) -> None:
    """Section 1: what provisioning refuses (ConfigError)."""
    if z < 0:
        raise ConfigError("z < 0")
    if threshold is not None and threshold < 3 + z:
        raise ConfigError("t < 3 + z")
    if degree is not None and 2 * math.ceil(degree / 2) + 1 < 3 + z:
        raise ConfigError("m < 3 + z for this degree")


def default_threshold(n: int, degree, z: int) -> int:
    m_p = 2 * math.ceil(degree / 2) + 1 if degree is not None and degree < n - 1 else n
    return max(3 + z, (m_p + z) // 2 + 1)


def is_sparse(degree, members: int) -> bool:
    return degree is not None and degree < members - 1


def holders_per_owner(degree, members: int) -> int:
    return 2 * math.ceil(degree / 2) + 1 if is_sparse(degree, members) else members


def view_quorum(holders: int, z: int) -> int:
    """q of section 1: more than (m + z) / 2 of one owner's m holders, at least 3."""
    return max(3, (holders + z) // 2 + 1)


def signature_scope(holders: dict[str, list[str]], node: str) -> set[str]:
    """5.5 rule 4: the holders of every owner the node holds, and of those owners' neighbours (three hops)."""
    near = {p for o in holders[node] for p in holders[o]}
    return {h for p in near for h in holders[p]}


def fractional_bits(members: int, clip: float, bits: int) -> int:
    """Largest f <= 30 (32-bit) or 62 (64-bit) with M (clip 2^f + 1) <= 2^(b-1) - 1, exact on clip's binary value."""
    limit, c = 2 ** (bits - 1) - 1, Fraction(clip)
    for f in range(30 if bits == 32 else 62, -1, -1):
        if members * (c * 2**f + 1) <= limit:
            return f
    raise ConfigError("parameters refused: f = 0 does not fit")


def error_bound(contributors: int, f: int, clip: float) -> float:
    """Bound on the decoded sum of c contributors (section 3): c 2^-f + c clip 2^-52."""
    return contributors * 2.0**-f + contributors * clip * 2.0**-52


def rounding_key(seed: bytes, fed: str, rnd: int, owner: str) -> bytes:
    """Section 3 / 2.2: the key of the rounding keystream, KDF(rounding seed, "rounding", federation, r, u)."""
    return kdf(seed, "rounding", fed, rnd, owner)


def uniform(word: int) -> float:
    """U_j from one little-endian 64-bit keystream word: shifted right by 11 bits, times 2^-53 (exact in binary64)."""
    return (word >> 11) * 2.0**-53


def rounding_uniforms(key: bytes, d: int) -> list[float]:
    """Section 3: U_0 .. U_{d-1} from the first d little-endian 64-bit words of the AES-256-CTR keystream (2.4) under
    `key`, read in 8-byte words whatever the ring."""
    return [uniform(w) for w in prg(key, d, 64)]


def clip_value(x: float, clip: float) -> float:
    return min(max(x, -clip), clip)


def encode(x: float, clip: float, f: int, u: float, bits: int) -> int:
    """e = floor(fl(clip(x) 2^f + U)) mod 2^b, all in binary64: the product by 2^f is exact, the sum is rounded
    to nearest, ties to even (Python float addition), and only then floored (section 3)."""
    scaled = clip_value(float(x), float(clip)) * 2.0**f  # exact: a power-of-two scaling
    return math.floor(scaled + u) % 2**bits


def decode(word: int, f: int, bits: int) -> float:
    """A sum of encodings read as two's complement, divided by 2^f (correctly rounded to binary64)."""
    signed = word - 2**bits if word >= 2 ** (bits - 1) else word
    return signed / 2**f


def weighted_input(x: list[float], w: float, clip: float) -> list[float]:
    """Section 3: the d + 1 values (w x_1, ..., w x_d, w), binary64 products, the weight last; a weight above clip
    is refused (DataError) rather than clipped silently."""
    if not (math.isfinite(w) and w > 0):
        raise DataError(f"weight {w!r} is not positive and finite (section 3)")
    if w > clip:
        raise DataError(f"weight {w} above clip {clip}: rescale the weights or raise clip")
    return [w * v for v in x] + [w]


# ---------------------------------------------------------------- section 4 messages

_FED, _ID, _INT = "federation", "id", "int"
_HEX32, _HEX64, _SHARE, _HEXANY = "hex32", "hex64", "share", "hex"  # 32-byte, 64-byte, 66-byte (2.5), any length
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # section 1, matched in full (no trailing newline)
FIELDS = {
    "RoundStart": {"federation_id": _FED, "round": _INT, "epoch": _INT, "anchor_digest": _HEX32, "vector_length": _INT},
    "KeyAdvertisement": {"federation_id": _FED, "epoch": _INT, "node_id": _ID, "channel_key": _HEX32,
                         "mask_keys": [_HEX32], "commitments": [_HEX32], "graph_commitment": _HEX32,
                         "signature": _HEX64},
    "KeyRoster": {"federation_id": _FED, "epoch": _INT, "graph_commitments": {_HEX32}, "advertisement_bytes": "sizes"},
    "GraphSeedReveal": {"federation_id": _FED, "epoch": _INT, "node_id": _ID, "nonce": _HEX32},
    "GraphSeeds": {"federation_id": _FED, "epoch": _INT, "nonces": {_HEX32}},
    "ShareBundle": {"federation_id": _FED, "epoch": _INT, "node_id": _ID, "sealed": {_HEXANY}},
    "ShareDelivery": {"federation_id": _FED, "epoch": _INT, "receiver": _ID, "sealed": {_HEXANY}},
    "MaskedInput": {"federation_id": _FED, "round": _INT, "node_id": _ID, "words": "words"},
    "ConsistencyRequest": {"federation_id": _FED, "round": _INT, "alive": "ids", "dropped": "ids"},
    "ConsistencySignature": {"federation_id": _FED, "round": _INT, "node_id": _ID, "signature": _HEX64},
    "UnmaskRequest": {"federation_id": _FED, "round": _INT, "alive": "ids", "dropped": "ids",
                      "signatures": {_HEX64}},
    "UnmaskResponse": {"federation_id": _FED, "round": _INT, "node_id": _ID, "self_mask_shares": {_SHARE},
                       "mask_key_shares": {_SHARE}},
}
_HEXLEN = {_HEX32: 64, _HEX64: 128, _SHARE: 2 * SHARE_LEN}


def _check(kind, v) -> None:
    ok = True
    if kind == _FED:
        ok = isinstance(v, str) and 0 < len(v) and v.isascii()
    elif kind == _ID:
        ok = isinstance(v, str) and _ID_PATTERN.fullmatch(v) is not None
    elif kind == _INT:
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
    elif kind in (_HEX32, _HEX64, _SHARE, _HEXANY):
        ok = (isinstance(v, str) and len(v) % 2 == 0 and all(c in "0123456789abcdef" for c in v)
              and (kind == _HEXANY or len(v) == _HEXLEN[kind]))
    elif kind == "ids":
        ok = isinstance(v, list) and all(isinstance(i, str) for i in v) and v == sorted(set(v))
        for item in v if ok else []:
            _check(_ID, item)
    elif isinstance(kind, list):
        ok = isinstance(v, list)
        for item in v if ok else []:
            _check(kind[0], item)
    elif isinstance(kind, set):
        ok = isinstance(v, dict)  # {id: bytes}: the keys are ids (the canonical JSON sorts them)
        for key, item in v.items() if ok else []:
            _check(_ID, key)
            _check(next(iter(kind)), item)
    elif kind == "words":
        ok = isinstance(v, dict) and set(v) == {"length", "ring_bits"} and v["ring_bits"] in (32, 64)
        if ok:
            _check(_INT, v["length"])
    elif kind == "sizes":  # a roster's advertisement sizes (section 4): 1 to 2^20 of them, each 1 to 2^20 bytes
        ok = isinstance(v, list) and 1 <= len(v) <= 2**20 and all(
            isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 2**20 for x in v)
    if not ok:
        raise MessageError(f"bad field value {v!r}")


def _check_fields(mtype: str, header: dict) -> None:
    spec = FIELDS.get(mtype)
    if spec is None:
        raise MessageError(f"unknown type {mtype!r}")
    if set(header) != set(spec) | {"type"}:
        raise MessageError("missing or extra field")
    for name, kind in spec.items():
        _check(kind, header[name])


def encode_message(mtype: str, fields: dict, body: bytes = b"") -> bytes:
    header = canonical_json({"type": mtype, **fields})
    return b"GFSA" + b"\x02" + struct.pack(">I", len(header)) + header + body


def decode_message(wire: bytes) -> tuple[str, dict, bytes]:
    if len(wire) < 9 or wire[:4] != b"GFSA" or wire[4] != 2:
        raise MessageError("bad magic or version")
    (hlen,) = struct.unpack(">I", wire[5:9])
    if hlen > 64 * 2**20 or len(wire) < 9 + hlen:
        raise MessageError("bad header length")
    try:
        header = json.loads(wire[9:9 + hlen].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError("header is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise MessageError("header without type")
    mtype, body = header["type"], wire[9 + hlen:]
    _check_fields(mtype, header)
    expected_body = 0
    if mtype == "MaskedInput":
        expected_body = header["words"]["length"] * header["words"]["ring_bits"] // 8
    if mtype == "KeyRoster":
        expected_body = sum(header["advertisement_bytes"])
        if len(header["advertisement_bytes"]) != len(header["graph_commitments"]):
            raise MessageError("one advertisement per member")
    if len(body) != expected_body:
        raise MessageError("bad body length")
    fields = {k: v for k, v in header.items() if k != "type"}
    if encode_message(mtype, fields, body) != wire:
        raise MessageError("not the canonical encoding")
    return mtype, fields, body


def roster_advertisements(fields: dict, body: bytes) -> list[bytes]:
    """A decoded roster's body, cut into its members' advertisement messages (section 4), in member order."""
    out, at = [], 0
    for size in fields["advertisement_bytes"]:
        out.append(body[at:at + size])
        at += size
    return out


def decode_roster(wire: bytes) -> tuple[dict, list[dict]]:
    """A roster's fields and every member's advertisement fields (for tests: a node decodes only its holders')."""
    _, fields, body = decode_message(wire)
    return fields, [decode_message(ad)[1] for ad in roster_advertisements(fields, body)]


def words_body(words: list[int], bits: int) -> bytes:
    return b"".join(w.to_bytes(bits // 8, "little") for w in words)


def body_words(body: bytes, bits: int) -> list[int]:
    w = bits // 8
    return [int.from_bytes(body[i:i + w], "little") for i in range(0, len(body), w)]


# ---------------------------------------------------------------- section 5.2 graph

def graph_seed(fed: str, epoch: int, roster_digest: bytes, nonces: dict[str, bytes]) -> bytes:
    return H("graph-seed", fed, epoch, roster_digest, *(nonces[v] for v in sorted(nonces)))


def ring_order(seed: bytes, members: list[str]) -> list[str]:
    return sorted(members, key=lambda v: hashlib.sha256(seed + v.encode("ascii")).digest())


def graph_holders(members: list[str], degree, seed: bytes | None) -> dict[str, list[str]]:
    """owner -> its share holders (itself and its neighbours), sorted."""
    if not is_sparse(degree, len(members)):
        return {u: sorted(members) for u in members}
    ring, h = ring_order(seed, members), math.ceil(degree / 2)
    pos = {v: i for i, v in enumerate(ring)}
    return {u: sorted({ring[(pos[u] + j) % len(ring)] for j in range(-h, h + 1)}) for u in members}


# ---------------------------------------------------------------- section 5 node

# Section 10: a node message belongs to the stage of that reply; a server message to the stage whose replies the
# server collects next. A node refusing a server message names that stage (5.7).
_STAGE = {"KeyAdvertisement": "advertise_keys", "GraphSeedReveal": "graph_seed", "GraphSeeds": "share_keys",
          "ShareBundle": "share_keys", "ShareDelivery": "masked_input", "MaskedInput": "masked_input",
          "ConsistencyRequest": "consistency_check", "ConsistencySignature": "consistency_check",
          "UnmaskRequest": "unmask", "UnmaskResponse": "unmask"}


def message_stage(mtype: str, msg: dict, degree) -> str:
    if mtype == "RoundStart":  # a new epoch starts with the advertisements; the steady state with the inputs
        return "advertise_keys" if msg["epoch"] == msg["round"] else "masked_input"
    if mtype == "KeyRoster":
        return "graph_seed" if is_sparse(degree, len(msg["graph_commitments"])) else "share_keys"
    return _STAGE[mtype]


class Node:
    """One node's state machine (sections 5 and 8).

    `handle(wire)` returns the reply's wire bytes. Undecodable bytes raise MessageError and change nothing; a refused
    message raises ProtocolAborted and aborts the session for good; an input it cannot mask raises DataError (5.7).
    `inputs` is the vector the node masks in every round (the vectors use the same inputs in every round).
    """

    def __init__(self, node_id: str, *, federation: str, identity_seed: bytes, identity_keys: dict[str, bytes],
                 anchor_digest: str, ring_bits: int, clip: float, threshold, degree, rounds_per_epoch: int,
                 colluders: int, rng: DeterministicRandomness, inputs: list[float]):
        check_provisioning(threshold, degree, colluders)
        n = len(identity_keys)
        fractional_bits(n, clip, ring_bits)  # f for M <= n members is at least f for n: refuse here, once
        if not all(math.isfinite(v) for v in inputs):
            raise DataError("NaN or infinite value in the input (section 3)")
        self.id, self.fed, self.rng, self.x = node_id, federation, rng, list(inputs)
        self.identity = Ed25519PrivateKey.from_private_bytes(identity_seed)
        self.identity_keys = identity_keys  # provisioned: node id -> Ed25519 public key
        self.anchor, self.bits, self.clip = anchor_digest, ring_bits, clip
        self.degree, self.K, self.z = degree, rounds_per_epoch, colluders
        self.t = threshold if threshold is not None else default_threshold(n, degree, colluders)
        self.state, self.last_round, self.epoch, self.stage = "ready", 0, None, None
        self.draws: dict = {}           # the epoch's draws (2.9 items 1-2), named as in the vectors' intermediates
        self.share_channels: dict = {}  # per holder, from this owner's side (intermediates `share_channels`)
        self.rounds: dict = {}          # per round: its rounding seed (2.9 item 3) and the values derived from it

    # -- helpers
    def _refuse(self, why: str):
        self.state = "aborted"
        raise ProtocolAborted(self.id, self.stage, why)

    def _require(self, cond: bool, why: str) -> None:
        if not cond:
            self._refuse(why)

    def handle(self, wire: bytes) -> bytes:
        mtype, msg, body = decode_message(wire)  # MessageError before any rule is checked
        self.stage = message_stage(mtype, msg, self.degree)
        self._require(self.state != "aborted", "session aborted: a new session is needed")
        self._require(msg["federation_id"] == self.fed, "other federation")
        handler = {("ready", "RoundStart"): self._on_round_start, ("advertised", "KeyRoster"): self._on_roster,
                   ("revealed", "GraphSeeds"): self._on_graph_seeds, ("shared", "ShareDelivery"): self._on_delivery,
                   ("masked", "ConsistencyRequest"): self._on_consistency,
                   ("masked", "UnmaskRequest"): self._on_unmask, ("signed", "UnmaskRequest"): self._on_unmask,
                   }.get((self.state, mtype))
        if handler is None:
            self._refuse(f"{mtype} in state {self.state}")
        return handler(msg, body) if mtype == "KeyRoster" else handler(msg)

    # -- 5.1
    def _on_round_start(self, msg):
        self._require(msg["round"] > self.last_round, "round does not increase")
        self._require(msg["anchor_digest"] == self.anchor, "anchor digest changed")
        new_epoch = msg["epoch"] == msg["round"]
        if not new_epoch:
            self._require(msg["epoch"] == self.epoch and msg["round"] < self.epoch + self.K, "unknown epoch")
        if msg["vector_length"] != len(self.x):
            raise DataError(f"input of length {len(self.x)} for vector_length {msg['vector_length']}")
        self.round, self.d = msg["round"], msg["vector_length"]
        self.last_round = self.round
        if not new_epoch:  # steady state (5.4): answer with the masked input, with the peers of the set-up
            return self._masked_input()
        self.epoch, rng = msg["epoch"], self.rng
        self.c = rng.token(32)
        self.s, self.b = [], []
        for _ in range(self.K):
            self.s.append(rng.token(32))
            self.b.append(rng.token(32))
        self.nonce = rng.token(32)
        self.draws = {"channel_private_key": self.c, "mask_private_keys": self.s, "self_mask_seeds": self.b,
                      "graph_nonce": self.nonce}
        fields = {"federation_id": self.fed, "epoch": self.epoch, "node_id": self.id,
                  "channel_key": x25519_pub(self.c).hex(), "mask_keys": [x25519_pub(s).hex() for s in self.s],
                  "commitments": [commit(b, "commit", self.fed, self.epoch + i, self.id).hex()
                                  for i, b in enumerate(self.b)],
                  "graph_commitment": commit(self.nonce, "graph-commit", self.fed, self.epoch, self.id).hex()}
        fields["signature"] = self.identity.sign(advert_payload(fields)).hex()
        self.my_advert, self.my_advert_wire = {"type": "KeyAdvertisement", **fields}, encode_message("KeyAdvertisement", fields)
        self.state = "advertised"
        return self.my_advert_wire

    def _on_roster(self, msg, body):
        self._require(msg["epoch"] == self.epoch, "roster for another epoch")
        self.members = sorted(msg["graph_commitments"])
        for v in self.members:
            self._require(v in self.identity_keys, "non-provisioned node in roster")
        self._require(len(self.members) >= 3, "fewer than 3 members")
        # section 4: the advertisements stay wire bytes; only the holders' are decoded (5.3)
        self.ad_wire = dict(zip(self.members, roster_advertisements(msg, body)))
        self.graph_commitments = msg["graph_commitments"]
        self._require(self.ad_wire.get(self.id) == self.my_advert_wire
                      and self.graph_commitments[self.id] == self.my_advert["graph_commitment"],
                      "own advertisement altered")
        self.f = fractional_bits(len(self.members), self.clip, self.bits)
        self.roster_digest = H("roster", encode_message("KeyRoster", msg, body))
        if is_sparse(self.degree, len(self.members)):
            self.state = "revealed"
            return encode_message("GraphSeedReveal", {"federation_id": self.fed, "epoch": self.epoch,
                                                      "node_id": self.id, "nonce": self.nonce.hex()})
        return self._share_keys(None)

    # -- 5.2
    def _on_graph_seeds(self, msg):
        self._require(msg["epoch"] == self.epoch, "graph seeds for another epoch")
        nonces = {v: bytes.fromhex(h) for v, h in msg["nonces"].items()}
        self._require(sorted(nonces) == self.members, "a member's nonce missing or a stranger's added")
        self._require(nonces[self.id] == self.nonce, "own nonce changed")
        for v, nonce in nonces.items():
            self._require(commit(nonce, "graph-commit", self.fed, self.epoch, v).hex()
                          == self.graph_commitments[v], "nonce does not match its commitment")
        return self._share_keys(graph_seed(self.fed, self.epoch, self.roster_digest, nonces))

    # -- 5.3
    def _share_keys(self, seed):
        self.holders = graph_holders(self.members, self.degree, seed)
        self.neighbours = [v for v in self.holders[self.id] if v != self.id]
        m = holders_per_owner(self.degree, len(self.members))
        self._require(self.t <= m and 2 * self.t > m + self.z, "threshold does not fit the graph")
        self.ads = {}
        for v in self.holders[self.id]:  # 5.1: each holder's advertisement, decoded and checked here
            try:
                mtype, a, _ = decode_message(self.ad_wire[v])
            except MessageError:
                self._refuse(f"advertisement of {v} does not decode")
            self._require(mtype == "KeyAdvertisement" and a["node_id"] == v, "roster entry is not that member's advertisement")
            self._require(a["federation_id"] == self.fed and a["epoch"] == self.epoch, "replayed advertisement")
            self._require(len(a["mask_keys"]) == self.K == len(a["commitments"]), "wrong number of round keys")
            self._require(a["graph_commitment"] == self.graph_commitments[v], "graph commitment differs from the roster's")
            self._require(ed25519_verify(self.identity_keys[v], bytes.fromhex(a["signature"]), advert_payload(a)),
                          "bad advertisement signature")
            self.ads[v] = a
        log, polys, coefficient_bytes = [], [], []
        for i in range(self.K):  # s^i's polynomial, then b^i's (2.9 item 2)
            entry = {}
            for name, secret in (("mask_key", self.s[i]), ("self_mask_seed", self.b[i])):
                start = len(log)
                coeffs = [int.from_bytes(secret, "big")] + [shamir_coefficient(self.rng, log)
                                                            for _ in range(self.t - 1)]
                entry[name] = log[start:]
                polys.append(coeffs)
            coefficient_bytes.append(entry)
        self.draws["shamir_coefficient_bytes"] = coefficient_bytes
        x_of = {v: i + 1 for i, v in enumerate(self.members)}
        self.held = {self.id: self._shares_for(polys, x_of[self.id])}
        sealed, self.share_channels = {}, {}
        for v in self.neighbours:
            shared = x25519(self.c, bytes.fromhex(self.ads[v]["channel_key"]))
            key = kdf(shared, "share-channel", self.fed, self.epoch, self.id, v)
            ad = share_ad(self.fed, self.epoch, self.id, v, self.roster_digest)
            sealed[v] = ChaCha20Poly1305(key).encrypt(bytes(12), self._shares_for(polys, x_of[v]), ad).hex()
            self.share_channels[v] = {"x25519_shared": shared, "channel_key": key, "associated_data": ad}
        self.state = "shared"
        return encode_message("ShareBundle", {"federation_id": self.fed, "epoch": self.epoch,
                                              "node_id": self.id, "sealed": sealed})

    def _shares_for(self, polys, x) -> bytes:
        """The 132 K plaintext bytes of 2.6: share of s^0, of b^0, of s^1, of b^1, ..."""
        return b"".join(shamir_eval(p, x) for p in polys)

    # -- 5.4
    def _on_delivery(self, msg):
        self._require(msg["receiver"] == self.id and msg["epoch"] == self.epoch, "delivery for another node/epoch")
        for owner, blob in msg["sealed"].items():
            self._require(owner in self.neighbours, "blob from a non-neighbour")
            key = kdf(x25519(self.c, bytes.fromhex(self.ads[owner]["channel_key"])), "share-channel",
                      self.fed, self.epoch, owner, self.id)
            ad = share_ad(self.fed, self.epoch, owner, self.id, self.roster_digest)
            try:
                plain = ChaCha20Poly1305(key).decrypt(bytes(12), bytes.fromhex(blob), ad)
            except InvalidTag:
                self._refuse("share blob does not open")
            self._require(len(plain) == 2 * SHARE_LEN * self.K, "share blob of wrong length")
            self.held[owner] = plain
        self._require(len(msg["sealed"]) >= self.t - 1, "fewer than t - 1 blobs")
        self.peers = sorted(msg["sealed"])  # P(u): the nodes it masks with, for every round of the epoch
        return self._masked_input()

    def _masked_input(self):
        r, i, bits, d = self.round, self.round - self.epoch, self.bits, self.d
        mod = 2**bits
        seed = self.rng.token(32)  # 2.9 item 3: one rounding seed per masked input
        rkey = rounding_key(seed, self.fed, r, self.id)
        us = rounding_uniforms(rkey, d)
        enc = [encode(x, self.clip, self.f, u, bits) for x, u in zip(self.x, us)]
        self_key = kdf(self.b[i], "self-mask", self.fed, r, self.id)
        y = [(e + m) % mod for e, m in zip(enc, prg(self_key, d, bits))]
        pairwise = {}
        for v in self.peers:
            shared = x25519(self.s[i], bytes.fromhex(self.ads[v]["mask_keys"][i]))
            key = kdf(shared, "pairwise-mask", self.fed, r, min(self.id, v), max(self.id, v))
            sign = 1 if self.id < v else -1
            mask = prg(key, d, bits)
            y = [(a + sign * w) % mod for a, w in zip(y, mask)]
            pairwise[v] = {"x25519_shared": shared, "mask_key": key, "sign": "+" if sign > 0 else "-",
                           "mask_prefix": mask[:4]}
        self.rounds[r] = {"rounding_seed": seed, "rounding_key": rkey, "rounding_uniforms": us, "encoded_input": enc,
                          "clipped_coordinates": sum(abs(x) > self.clip for x in self.x),
                          "self_mask_key": self_key, "self_mask_prefix": prg(self_key, 4, bits),
                          "pairwise": pairwise}
        self.state = "masked"
        return encode_message("MaskedInput", {"federation_id": self.fed, "round": r, "node_id": self.id,
                                              "words": {"length": d, "ring_bits": bits}}, words_body(y, bits))

    # -- 5.5
    def _check_view(self, alive, dropped):
        self._require(not set(alive) & set(dropped) and self.id in alive, "alive and dropped, or not alive")
        self._require(set(alive) | set(dropped) <= set(self.members), "view lists a non-member")
        m = holders_per_owner(self.degree, len(self.members))
        q = view_quorum(m, self.z)
        self._require(len(alive) >= max(3, self.t, q), "too few survivors")
        self._require(set(alive) & set(self.neighbours) <= set(self.peers), "alive neighbour I did not mask with")
        self._require(set(self.peers) <= set(alive) | set(dropped), "a peer is not listed")
        self._require(len(set(self.peers) & set(alive)) >= self.t - 1, "fewer than t - 1 peers alive")
        owners = {o for o in self.holders[self.id] if o in alive or o in dropped}
        owners |= {p for o in self.holders[self.id] if o in alive for p in self.holders[o] if p in alive}
        for o in owners:  # rule 4 (trivially the check above in the complete graph, where holders are all members)
            self._require(len(set(self.holders[o]) & set(alive)) >= q, "an owner's holders are listed too thinly")

    def _on_consistency(self, msg):
        self._require(msg["round"] == self.round, "view for another round")
        self._check_view(msg["alive"], msg["dropped"])
        self.view = (msg["alive"], msg["dropped"])
        sig = self.identity.sign(view_payload(self.fed, self.round, *self.view, self.roster_digest))
        self.state = "signed"
        return encode_message("ConsistencySignature", {"federation_id": self.fed, "round": self.round,
                                                       "node_id": self.id, "signature": sig.hex()})

    def _on_unmask(self, msg):
        self._require(msg["round"] == self.round, "request for another round")
        alive, dropped, sigs = msg["alive"], msg["dropped"], msg["signatures"]
        if self.state == "masked":  # unchecked fast path: complete graph, dropped = [], signatures = {}
            self._check_view(alive, dropped)
            self._require(not is_sparse(self.degree, len(self.members)), "SecAgg+ has no unchecked fast path")
            self._require(not dropped, "a dropout needs the consistency check")
            self._require(not sigs, "signatures without a consistency check")
        else:
            self._require((alive, dropped) == self.view, "not the view I signed")
            scope = signature_scope(self.holders, self.id)
            self._require(set(sigs) <= set(alive), "a signature of a node not listed alive")
            self._require(set(alive) & scope <= set(sigs), "a survivor's signature in my scope is missing")
            payload = view_payload(self.fed, self.round, alive, dropped, self.roster_digest)
            for v in set(alive) & scope:
                self._require(ed25519_verify(self.identity_keys[v], bytes.fromhex(sigs[v]), payload),
                              "bad view signature")
        base = 2 * SHARE_LEN * (self.round - self.epoch)  # round key i = r - e
        seed_shares, key_shares = {}, {}
        for owner, plain in self.held.items():
            if owner in alive:
                seed_shares[owner] = plain[base + SHARE_LEN:base + 2 * SHARE_LEN].hex()
            elif owner in dropped:
                key_shares[owner] = plain[base:base + SHARE_LEN].hex()
        self.state = "ready"
        return encode_message("UnmaskResponse", {"federation_id": self.fed, "round": self.round, "node_id": self.id,
                                                 "self_mask_shares": seed_shares, "mask_key_shares": key_shares})


# ---------------------------------------------------------------- section 5 server: pure functions of what it received

def server_round_start(fed: str, rnd: int, epoch: int, anchor_digest: str, d: int) -> bytes:
    return encode_message("RoundStart", {"federation_id": fed, "round": rnd, "epoch": epoch,
                                         "anchor_digest": anchor_digest, "vector_length": d})


def server_roster(fed: str, epoch: int, adverts: list[dict]) -> bytes:
    ads = sorted(adverts, key=lambda a: a["node_id"])
    wires = [encode_message("KeyAdvertisement", {k: v for k, v in a.items() if k != "type"}) for a in ads]
    return encode_message("KeyRoster", {"federation_id": fed, "epoch": epoch,
                                        "graph_commitments": {a["node_id"]: a["graph_commitment"] for a in ads},
                                        "advertisement_bytes": [len(w) for w in wires]}, b"".join(wires))


def server_graph_seeds(fed: str, epoch: int, reveals: list[dict]) -> bytes:
    return encode_message("GraphSeeds", {"federation_id": fed, "epoch": epoch,
                                         "nonces": {r["node_id"]: r["nonce"] for r in reveals}})


def server_delivery(fed: str, epoch: int, receiver: str, bundles: list[dict]) -> bytes:
    sealed = {b["node_id"]: b["sealed"][receiver] for b in bundles if receiver in b["sealed"]}
    return encode_message("ShareDelivery", {"federation_id": fed, "epoch": epoch, "receiver": receiver,
                                            "sealed": sealed})


def server_peers(bundles: list[dict]) -> dict[str, set[str]]:
    """P(u) as the server knows it: the senders of the bundles that addressed a blob to u (delivered to u)."""
    peers: dict[str, set[str]] = {}
    for b in bundles:
        for holder in b["sealed"]:
            peers.setdefault(holder, set()).add(b["node_id"])
    return peers


def server_view(bundles: list[dict], inputs: list[dict]) -> tuple[list[str], list[str]]:
    """5.5: alive = masked inputs that arrived this round; dropped = shares went out, masked input did not."""
    alive = sorted(m["node_id"] for m in inputs)
    return alive, sorted({b["node_id"] for b in bundles} - set(alive))


def server_after_inputs(fed: str, rnd: int, alive, dropped, sparse: bool) -> bytes:
    """5.5: the unchecked fast path for a complete graph with nobody dropped, else the consistency check."""
    if dropped or sparse:
        return encode_message("ConsistencyRequest", {"federation_id": fed, "round": rnd, "alive": alive,
                                                     "dropped": dropped})
    return encode_message("UnmaskRequest", {"federation_id": fed, "round": rnd, "alive": alive, "dropped": [],
                                            "signatures": {}})


def server_unmask_request(fed: str, rnd: int, alive, dropped, signatures: list[dict],
                          scope: set[str] | None = None) -> bytes:
    """5.5 check path: the view repeated with the signatures of the survivors in the receiver's scope (all of them
    in the complete graph); a survivor that did not sign aborts."""
    sigs = {s["node_id"]: s["signature"] for s in signatures}
    if set(sigs) != set(alive):
        raise ProtocolAborted("server", "consistency_check", "a survivor did not sign the view")
    if scope is not None:
        sigs = {v: sig for v, sig in sigs.items() if v in scope}
    return encode_message("UnmaskRequest", {"federation_id": fed, "round": rnd, "alive": alive, "dropped": dropped,
                                            "signatures": sigs})


def server_reconstruct(*, fed: str, rnd: int, epoch: int, adverts: dict[str, dict], peers: dict[str, set[str]],
                       t: int, z: int, m: int, clip: float, bits: int, masked: dict[str, list[int]], alive, dropped,
                       responses: list[dict]) -> list[float]:
    """5.6: unmask the sum of the alive inputs and decode it (section 3); m: holders per owner."""
    members, mod, i = sorted(adverts), 2**bits, rnd - epoch
    if len(alive) < max(3, t, view_quorum(m, z)):
        raise ProtocolAborted("server", "masked_input", "too few inputs")
    x_of = {v: k + 1 for k, v in enumerate(members)}
    d = len(next(iter(masked.values())))

    def rebuild(owner: str, kind: str) -> bytes:  # the first t responders holding a share, in sorted id order
        got = sorted((r["node_id"], r[kind][owner]) for r in responses if owner in r[kind])
        if len(got) < t:
            raise ProtocolAborted("server", "unmask", f"fewer than t shares of {owner}")
        return shamir_reconstruct([(x_of[h], bytes.fromhex(s)) for h, s in got[:t]])

    total = [sum(masked[u][j] for u in alive) % mod for j in range(d)]
    for u in alive:
        b = rebuild(u, "self_mask_shares")
        if commit(b, "commit", fed, rnd, u).hex() != adverts[u]["commitments"][i]:
            raise ProtocolAborted("server", "unmask", f"self-mask seed of {u} fails its commitment")
        total = [(a - w) % mod for a, w in zip(total, prg(kdf(b, "self-mask", fed, rnd, u), d, bits))]
    for v in dropped:
        s = rebuild(v, "mask_key_shares")
        if x25519_pub(s).hex() != adverts[v]["mask_keys"][i]:
            raise ProtocolAborted("server", "unmask", f"mask key of {v} fails its public key")
        for u in alive:
            if v in peers.get(u, ()):  # the pairwise mask u added for v
                shared = x25519(s, bytes.fromhex(adverts[u]["mask_keys"][i]))
                mask = prg(kdf(shared, "pairwise-mask", fed, rnd, min(u, v), max(u, v)), d, bits)
                sign = 1 if u < v else -1
                total = [(a - sign * w) % mod for a, w in zip(total, mask)]
    f = fractional_bits(len(members), clip, bits)
    return [decode(w, f, bits) for w in total]


def server_result(*, rnd: int, aggregate: list[float], alive, members: int, clip: float, bits: int,
                  weighted: bool) -> dict:
    """The published result fields the server knows (section 10); a weighted case's total weight is the decoded
    last coordinate, sum w."""
    result = {"round": rnd, "contributors": list(alive), "aggregate": aggregate,
              "max_abs_error": error_bound(len(alive), fractional_bits(members, clip, bits), clip)}
    if weighted:
        result["total_weight"] = aggregate[-1]
    return result
