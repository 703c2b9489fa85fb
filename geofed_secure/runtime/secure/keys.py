"""What a deployed federation provisions out of band, before any round: secure-aggregation keys as files.

:func:`write_keys` makes one folder per party:

- ``server/public.json``: the public half every party may see (format, protocol, federation id; masking: each node's
  Ed25519 identity public key; CKKS: the public context's digest) and, for CKKS, ``server/public.context`` (no
  secret key);
- ``sites/<node id>/public.json`` (the same file) and the node's secret: ``identity.key`` (masking: its Ed25519
  identity private key, hex) or ``secret.context`` (CKKS: the context WITH the secret key, the same for every node).

Secret files are written with mode 0600. Copy ``sites/<node id>`` to that node's machine only, ``server`` to the
server's. Masking: identities are what stop a server from injecting keys (SPEC 5.1), so ``public.json`` must reach
each site from the operator, never from the server. CKKS: every node holds the one secret key, so any node that
colludes with the server reads every upload (protocols/ckks-v1/SPEC.md section 6); the operator who runs this
command holds it too (a dealer).

:func:`server_aggregator` and :func:`node_session` load the folders back, checking them against the configuration.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geofed_secure.config import RunConfig
from geofed_secure.errors import ConfigError
from geofed_secure.runtime.secure.ckks import CkksAggregator, CkksNodeSession
from geofed_secure.runtime.secure.masking import MaskingAggregator, MaskingNodeSession, provisioning_for
from geofed_secure.runtime.secure.session import NodeSession, SecureAggregator
from geofed_secure.secagg import ckks
from geofed_secure.secagg.masking import primitives as crypto

FORMAT = "geofed-secure-keys-v1"
PUBLIC = "public.json"
IDENTITY = "identity.key"
SECRET_CONTEXT = "secret.context"
PUBLIC_CONTEXT = "public.context"


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mkstemp creates the file with mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not secret:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_keys(config: RunConfig, folder: str | Path) -> Path:
    """Provision ``config.secure.protocol``'s keys for every node of ``config`` into ``folder``; returns it."""
    protocol = config.secure.protocol
    if protocol not in ("masking", "ckks"):
        raise ConfigError("secure.protocol", f"{protocol!r} needs no keys (uploads travel in clear)")
    out = Path(folder)
    public: dict[str, Any] = {"format": FORMAT, "protocol": protocol, "federation_id": config.federation.id}
    secrets: dict[str, tuple[str, bytes]] = {}
    if protocol == "masking":
        identities = {}
        rng = crypto.SystemRandomness()
        for node in config.nodes:
            private, identities[node.id] = crypto.ed25519_keypair(rng)
            secrets[node.id] = (IDENTITY, private.hex().encode())
        public["identities"] = {k: v.hex() for k, v in sorted(identities.items())}
    else:
        keys = ckks.provision_ckks_keys()
        public["context_digest"] = keys.context_digest
        _write(out / "server" / PUBLIC_CONTEXT, keys.public_context, secret=False)
        secrets = {node.id: (SECRET_CONTEXT, keys.secret_context) for node in config.nodes}
    text = (json.dumps(public, indent=1, sort_keys=True) + "\n").encode()
    _write(out / "server" / PUBLIC, text, secret=False)
    for node_id, (name, data) in secrets.items():
        _write(out / "sites" / node_id / PUBLIC, text, secret=False)
        _write(out / "sites" / node_id / name, data, secret=True)
    return out


def _public(config: RunConfig, folder: Path) -> dict[str, Any]:
    path = folder / PUBLIC
    try:
        public = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("keys", f"{path} is missing; make the keys with `geofed deploy keys` and copy this party's "
                                  "folder here") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("keys", f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(public, dict) or public.get("format") != FORMAT:
        raise ConfigError("keys", f"{path} is not a {FORMAT} file")
    for key, want in (("protocol", config.secure.protocol), ("federation_id", config.federation.id)):
        if public.get(key) != want:
            raise ConfigError("keys", f"{path} holds keys for {key} {public.get(key)!r}, but the configuration says {want!r}")
    if config.secure.protocol == "masking":
        identities = public.get("identities")
        wanted = sorted(n.id for n in config.nodes)
        if not isinstance(identities, dict) or sorted(identities) != wanted:
            raise ConfigError("keys", f"{path} must hold one identity per node of the configuration ({', '.join(wanted)})")
    return public


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("keys", f"{path} is unreadable ({type(exc).__name__}); this party's key folder is incomplete") from None


def _identities(public: dict[str, Any], path: Path) -> dict[str, bytes]:
    try:
        return {k: bytes.fromhex(v) for k, v in public["identities"].items()}
    except (TypeError, ValueError):
        raise ConfigError("keys", f"{path}: an identity is not hex") from None


def server_aggregator(config: RunConfig, anchor_digest: str, folder: str | Path) -> SecureAggregator:
    """THE SERVER's aggregator for ``config`` from its key folder (public material only)."""
    where = Path(folder)
    public = _public(config, where)
    if config.secure.protocol == "masking":
        return MaskingAggregator(provisioning_for(config, anchor_digest, _identities(public, where / PUBLIC)))
    context = _read(where / PUBLIC_CONTEXT)
    if ckks.context_digest(context) != public.get("context_digest"):
        raise ConfigError("keys", f"{where / PUBLIC_CONTEXT} does not match the digest in {where / PUBLIC}")
    return CkksAggregator(config, anchor_digest, context)


def node_session(config: RunConfig, node_id: str, anchor_digest: str, folder: str | Path) -> NodeSession:
    """ON THE NODE: a new secure-aggregation session of ``node_id`` from its own key folder."""
    where = Path(folder)
    public = _public(config, where)
    if config.secure.protocol == "masking":
        try:
            private = bytes.fromhex(_read(where / IDENTITY).decode().strip())
        except (UnicodeDecodeError, ValueError):
            raise ConfigError("keys", f"{where / IDENTITY} is not a hex identity key") from None
        identities = _identities(public, where / PUBLIC)
        try:
            own = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
        except ValueError:
            raise ConfigError("keys", f"{where / IDENTITY} is not a 32-byte Ed25519 private key") from None
        if own != identities[node_id]:
            raise ConfigError("keys", f"{where / IDENTITY} is not the identity of node {node_id!r} in {where / PUBLIC}")
        return MaskingNodeSession.for_site(node_id, private, provisioning_for(config, anchor_digest, identities))
    secret = where / SECRET_CONTEXT
    return CkksNodeSession.for_site(config, node_id, _read(secret), anchor_digest, secret_path=str(secret.resolve()))
