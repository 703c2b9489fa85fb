"""The transcript: every message that crossed a trust boundary, in order, with sender and receiver.

Stored as a folder: ``index.jsonl`` (one record per message: round, sender, receiver, type, byte range,
SHA-256) and ``messages.bin`` (the wire bytes, concatenated). Records are appended as the run goes, so a
crash loses at most the message being written; :meth:`Transcript.truncate` rolls back to a checkpoint.
The audit (a later layer) selects the view of one adversary from a transcript and attacks only that.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from geofed_secure.errors import CheckpointError, MessageError, OutputFolderError
from geofed_secure.wire.round import Message, decode_message

SERVER = "server"


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptRecord:
    index: int
    round: int
    sender: str
    receiver: str
    type: str
    offset: int
    nbytes: int
    sha256: str


class Transcript:
    """Append-only message log, in memory or backed by a folder.

    ``Transcript(folder)`` starts a NEW, empty transcript there and refuses a folder that already holds a recorded
    one (:class:`~geofed_secure.errors.OutputFolderError`: a new run never empties another run's transcript);
    :meth:`load` reads an existing one.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.records: list[TranscriptRecord] = []
        self._blobs: list[bytes] = []
        self._offset = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in ("index.jsonl", "messages.bin"):
                path = self.directory / name
                if path.is_file() and path.stat().st_size:
                    raise OutputFolderError(f"{self.directory} already holds a recorded transcript ({name}: "
                                            f"{path.stat().st_size} bytes); a new transcript never replaces one")
            (self.directory / "index.jsonl").write_text("")
            (self.directory / "messages.bin").write_bytes(b"")

    def record(self, round_: int, sender: str, receiver: str, blob: bytes, message: object) -> TranscriptRecord:
        """Append ``blob`` as sent from ``sender`` to ``receiver``; ``message`` is its decoded form (its type names the record)."""
        rec = TranscriptRecord(index=len(self.records), round=round_, sender=sender, receiver=receiver,
                               type=type(message).__name__, offset=self._offset, nbytes=len(blob),
                               sha256=hashlib.sha256(blob).hexdigest())
        if self.directory is not None:
            with open(self.directory / "messages.bin", "ab") as fh:
                fh.write(blob)
            with open(self.directory / "index.jsonl", "a") as fh:
                fh.write(json.dumps(asdict(rec)) + "\n")
        self.records.append(rec)
        self._blobs.append(bytes(blob))
        self._offset += len(blob)
        return rec

    def __len__(self) -> int:
        return len(self.records)

    def blob(self, record: TranscriptRecord) -> bytes:
        return self._blobs[record.index]

    def messages(self, *, round_: int | None = None) -> Iterator[tuple[TranscriptRecord, Message]]:
        """Decoded messages, optionally of one round (decoding re-validates every message)."""
        for rec in self.records:
            if round_ is None or rec.round == round_:
                yield rec, decode_record(self._blobs[rec.index], rec)

    def check_wire_versions(self, where: str | os.PathLike) -> None:
        """Refuse to append to a transcript holding secure-aggregation messages of another wire version.

        A resumed run appends to its transcript; mixing, say, secagg-v1 wire version 1 records (written before the
        roster change) with version 2 ones would leave a transcript that no single release can decode or audit.
        """
        from geofed_secure.secagg.ckks.spec import MAGIC as CKKS_MAGIC
        from geofed_secure.secagg.ckks.spec import VERSION as CKKS_VERSION
        from geofed_secure.secagg.masking.messages import MAGIC as SECAGG_MAGIC
        from geofed_secure.secagg.masking.messages import VERSION as SECAGG_VERSION

        wanted = {SECAGG_MAGIC: ("secagg-v1", SECAGG_VERSION), CKKS_MAGIC: ("ckks-v1", CKKS_VERSION)}
        for rec, blob in zip(self.records, self._blobs, strict=True):
            family = wanted.get(blob[:4])
            if family is not None and len(blob) > 4 and blob[4] != family[1]:
                raise CheckpointError(
                    f"{where}: transcript record {rec.index} ({rec.type}, round {rec.round}) is {family[0]} wire version "
                    f"{blob[4]}, and this geofed-secure writes version {family[1]}: resuming would mix both in one "
                    "transcript, which no single release can decode or audit. Start a new run (--out elsewhere), or "
                    "resume with the geofed-secure release that began this run")

    def truncate(self, n_records: int) -> None:
        """Drop every record after the first ``n_records`` (roll back to a checkpoint)."""
        if n_records > len(self.records):
            raise CheckpointError(f"transcript holds {len(self.records)} records, checkpoint expects {n_records}")
        del self.records[n_records:], self._blobs[n_records:]
        self._offset = sum(r.nbytes for r in self.records)
        if self.directory is not None:
            with open(self.directory / "messages.bin", "r+b") as fh:
                fh.truncate(self._offset)
            _atomic_write_text(self.directory / "index.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in self.records))

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "messages.bin").write_bytes(b"".join(self._blobs))
        _atomic_write_text(directory / "index.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in self.records))

    @classmethod
    def load(cls, directory: str | os.PathLike, *, attach: bool = False) -> Transcript:
        """Read a saved transcript, checking every record's byte range and SHA-256.

        A trailing partial record (crash while appending) is ignored. ``attach=True`` keeps appending to the folder;
        it is refused (:class:`CheckpointError`, the folder unchanged) when the transcript holds secure-aggregation
        messages of another wire version (:meth:`check_wire_versions`).
        """
        directory = Path(directory)
        try:
            lines = (directory / "index.jsonl").read_bytes().decode().splitlines()
            data = (directory / "messages.bin").read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(f"transcript folder {directory} is incomplete: {exc.filename} missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"transcript folder {directory} is unreadable ({type(exc).__name__})") from None
        out = cls(None)
        for number, line in enumerate(lines):
            try:
                rec = _record(json.loads(line))
            except (ValueError, TypeError) as exc:
                if number == len(lines) - 1:
                    break  # torn last line from a crash
                raise CheckpointError(f"{directory / 'index.jsonl'} line {number + 1} is corrupt: {exc}") from None
            if rec.index != len(out.records) or rec.offset != out._offset:
                raise CheckpointError(f"{directory / 'index.jsonl'} line {number + 1}: record {rec.index} at byte {rec.offset} "
                                      f"does not follow record {len(out.records) - 1} (out of order or edited)")
            blob = data[rec.offset:rec.offset + rec.nbytes]
            if len(blob) != rec.nbytes or hashlib.sha256(blob).hexdigest() != rec.sha256:
                if number == len(lines) - 1:
                    break
                raise CheckpointError(f"{directory}: message {rec.index} does not match its recorded SHA-256")
            out.records.append(rec)
            out._blobs.append(blob)
            out._offset = rec.offset + rec.nbytes
        if attach:
            out.check_wire_versions(directory)
            out.directory = directory
            out.truncate(len(out.records))
        return out


_RECORD_TYPES = {"index": int, "round": int, "sender": str, "receiver": str, "type": str, "offset": int, "nbytes": int,
                 "sha256": str}


def _record(fields: object) -> TranscriptRecord:
    """A record from one index line, its fields checked (TypeError names what is wrong)."""
    if not isinstance(fields, dict) or set(fields) != set(_RECORD_TYPES):
        raise TypeError("not a transcript record")
    for key, kind in _RECORD_TYPES.items():
        if not isinstance(fields[key], kind) or isinstance(fields[key], bool) or (kind is int and fields[key] < 0):
            raise TypeError(f"field {key} must be a{'n integer >= 0' if kind is int else ' string'}")
    return TranscriptRecord(**fields)


def decode_record(blob: bytes, record: TranscriptRecord):
    """:func:`decode_any` of one transcript record; a :class:`MessageError` names the record it came from."""
    try:
        return decode_any(blob)
    except MessageError as exc:
        raise MessageError(f"transcript record {record.index} ({record.type}, round {record.round}, {record.sender} -> "
                           f"{record.receiver}): {exc}") from None


def decode_any(blob: bytes):
    """Decode a transcript record of any protocol: round messages, secagg-v1 or ckks-v1 (by magic bytes)."""
    if blob[:4] == b"GFSA":
        from geofed_secure.secagg.masking.messages import decode
        return decode(blob)
    if blob[:4] == b"GFCK":
        from geofed_secure.secagg.ckks import decode_ckks_message
        return decode_ckks_message(blob)
    return decode_message(blob)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
