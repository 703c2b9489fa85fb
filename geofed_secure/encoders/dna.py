"""SYNTHETIC STAND-IN for DNABERT: overlapping 6-mer tokens with a seeded, frozen embedding table.

Not a pretrained model. A sequence over ACGT (case-insensitive) of length n gives n - k + 1
overlapping k-mers (k = 6); k-mer ``s`` gets index ``sum_j code(s_j) 4^(k-1-j)`` (A=0, C=1, G=2,
T=3) and token ``table[index]`` from a fixed Gaussian table of shape (4^6, 32) drawn from
``seed``. To keep the shared transformer's sequence short (cost grows with L), consecutive k-mer
embeddings are mean-pooled in non-overlapping windows of ``pool`` k-mers (default 6: at most 16 tokens
for 100 bp), much as DNABERT-2 shortens sequences with BPE. Sequences are padded to ``max_bp`` bases (tokens beyond the sequence are zero with
mask False) and TRUNCATED to their first ``max_bp`` bases if longer. Any other character, or a
sequence shorter than k, is a :class:`DataError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geofed_secure.encoders.base import BatchedEncoder
from geofed_secure.errors import DataError

__all__ = ["KmerDNAEncoder", "kmer_indices"]

_TAG = 0xD1A6
_CODE = np.full(256, -1, dtype=np.int64)
for _i, _ch in enumerate("ACGT"):
    _CODE[ord(_ch)] = _i
    _CODE[ord(_ch.lower())] = _i


def kmer_indices(seq: str, k: int = 6) -> np.ndarray:
    """Indices (0 .. 4^k - 1) of the overlapping k-mers of ``seq``."""
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _CODE[raw]
    if (codes < 0).any():
        bad = sorted({seq[i] for i in np.flatnonzero(codes < 0)[:5]})
        raise DataError(f"DNA sequence contains characters other than ACGT: {bad}")
    if len(codes) < k:
        raise DataError(f"DNA sequence of length {len(codes)} is shorter than k = {k}")
    windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    return windows @ (4 ** np.arange(k - 1, -1, -1, dtype=np.int64))


class KmerDNAEncoder(BatchedEncoder):
    """ACGT strings -> ceil((max_bp - 5) / pool) tokens of d = 32 (pooled overlapping 6-mers), padded + masked."""

    modality = "dna"
    batch_size = 1024

    def __init__(self, *, seed: int = 0, k: int = 6, dim: int = 32, max_bp: int = 100, pool: int = 6) -> None:
        super().__init__()
        if not 1 <= k <= 8:
            raise DataError(f"k must be in 1..8, got {k}")
        if max_bp < k:
            raise DataError(f"max_bp ({max_bp}) must be >= k ({k})")
        if pool < 1:
            raise DataError(f"pool must be >= 1, got {pool}")
        self.seed, self.k, self.dim, self.max_bp, self.pool = int(seed), int(k), int(dim), int(max_bp), int(pool)
        self.seq_len = -(-(self.max_bp - self.k + 1) // self.pool)
        self.name = f"kmer-dna-synthetic/seed{self.seed}/k{self.k}/d{self.dim}/maxbp{self.max_bp}/pool{self.pool}/v2"
        rng = np.random.default_rng([self.seed, _TAG])
        self.table = rng.standard_normal((4 ** self.k, self.dim)).astype(np.float32)
        self.table.setflags(write=False)

    def _prepare(self, samples: Any) -> list[np.ndarray]:
        if isinstance(samples, str) or not isinstance(samples, (list, tuple, np.ndarray)):
            raise DataError(f"{self.name}: samples must be a list of strings, got {type(samples).__name__}")
        out = []
        for s in samples:
            if not isinstance(s, str):
                raise DataError(f"{self.name}: every sample must be a str, got {type(s).__name__}")
            out.append(kmer_indices(s[: self.max_bp], self.k))
        return out

    def _encode_batch(self, state: Any, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.zeros((len(batch), self.seq_len, self.dim), dtype=np.float32)
        mask = np.zeros((len(batch), self.seq_len), dtype=np.bool_)
        for i, idx in enumerate(batch):
            kmers = self.table[idx]
            n_tokens = -(-len(idx) // self.pool)
            for t in range(n_tokens):
                tokens[i, t] = kmers[t * self.pool:(t + 1) * self.pool].mean(axis=0)
            mask[i, :n_tokens] = True
        return tokens, mask
