"""Tests of geofed_secure.data: sources, Dirichlet partitioning, anchor digests, demo loading."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofed_secure.data import (
    AnchorManifest,
    anchor_digest,
    dirichlet_partition,
    load_source,
    verify_anchor_digest,
)
from geofed_secure.data import sources as S
from geofed_secure.demo import load_modality, split_indices
from geofed_secure.encoders import FeatureCache, get_encoder
from geofed_secure.errors import AnchorDigestMismatch, ConfigError, DataError, GeofedError

# ============================================================================================
# Dirichlet partition
# ============================================================================================


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=300),
    n_parts=st.integers(1, 9),
    alpha=st.floats(0.01, 1000.0, allow_nan=False, allow_infinity=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_disjoint_and_covering(labels, n_parts, alpha, seed):
    y = np.asarray(labels, dtype=np.int64)
    parts = dirichlet_partition(y, n_parts, alpha, np.random.default_rng(seed), min_size=0)
    assert len(parts) == n_parts
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a part
    allidx = np.concatenate(parts)
    assert len(allidx) == len(y)  # no index in two parts ...
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))  # ... and every index somewhere


@settings(max_examples=25, deadline=None)
@given(n_parts=st.integers(2, 6), min_size=st.integers(1, 30), seed=st.integers(0, 1000))
def test_partition_min_size_respected_or_error(n_parts, min_size, seed):
    y = np.repeat(np.arange(10), 20)
    try:
        parts = dirichlet_partition(y, n_parts, 0.5, np.random.default_rng(seed), min_size=min_size)
    except DataError:
        return
    assert min(len(p) for p in parts) >= min_size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))


def _label_skew(labels, parts, n_classes):
    """Mean total-variation distance between each part's label histogram and the global one."""
    glob = np.bincount(labels, minlength=n_classes) / len(labels)
    tv = []
    for p in parts:
        h = np.bincount(labels[p], minlength=n_classes) / max(len(p), 1)
        tv.append(0.5 * np.abs(h - glob).sum())
    return float(np.mean(tv))


def test_partition_skew_grows_as_alpha_shrinks():
    y = np.repeat(np.arange(10), 200)
    skews = []
    for alpha in (0.05, 0.5, 5.0, 500.0):
        s = [
            _label_skew(y, dirichlet_partition(y, 8, alpha, np.random.default_rng(seed), min_size=10), 10)
            for seed in range(5)
        ]
        skews.append(np.mean(s))
    assert skews[0] > skews[1] > skews[2] > skews[3]
    assert skews[0] > 0.5 and skews[3] < 0.05


def test_partition_single_part_min_size_and_reproducible():
    y = np.repeat(np.arange(10), 30)
    (only,) = dirichlet_partition(y, 1, 0.1, np.random.default_rng(0))
    assert np.array_equal(only, np.arange(300))
    a = dirichlet_partition(y, 5, 0.3, np.random.default_rng(7), min_size=20)
    b = dirichlet_partition(y, 5, 0.3, np.random.default_rng(7), min_size=20)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert min(len(p) for p in a) >= 20


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_partition_bad_alpha(alpha):
    with pytest.raises(ConfigError):
        dirichlet_partition(np.zeros(10, np.int64), 2, alpha, np.random.default_rng(0), min_size=0)


@pytest.mark.parametrize("n_parts", [0, -3])
def test_partition_bad_n_parts(n_parts):
    with pytest.raises(ConfigError):
        dirichlet_partition(np.zeros(10, np.int64), n_parts, 1.0, np.random.default_rng(0))


def test_partition_infeasible_min_size_is_data_error():
    y = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError):
        dirichlet_partition(y, 6, 1.0, np.random.default_rng(0), min_size=10)  # 60 > 50
    # feasible in total but (almost) never reachable with extreme skew -> bounded retries, DataError
    with pytest.raises(DataError):
        dirichlet_partition(np.repeat(np.arange(2), 50), 10, 1e-3, np.random.default_rng(0), min_size=10)


# ============================================================================================
# anchor digest + manifest
# ============================================================================================


def _reference_digest(modality, samples, labels):
    """Independent implementation of the canonical encoding documented in anchors.py."""
    u64 = lambda n: struct.pack("<Q", n)
    blob = b"geofed-secure/anchor-digest/v1\x00" + u64(len(modality.encode())) + modality.encode()
    if isinstance(samples, np.ndarray):
        a = samples.astype(samples.dtype.newbyteorder("<"))
        ds = a.dtype.str.encode()
        blob += u64(a.shape[0]) + b"A" + u64(len(ds)) + ds + u64(a.ndim)
        blob += b"".join(u64(s) for s in a.shape) + a.tobytes()
    else:
        blob += u64(len(samples)) + b"S"
        for s in samples:
            blob += u64(len(s.encode("utf-8"))) + s.encode("utf-8")
    blob += b"".join(struct.pack("<q", int(v)) for v in labels)
    return hashlib.sha256(blob).hexdigest()


def test_anchor_digest_matches_documented_encoding():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert anchor_digest("image", img, np.array([4, 7])) == _reference_digest("image", img, [4, 7])
    txt = ["zwei plus drei", "åtta"]
    assert anchor_digest("text", txt, np.array([5, 8])) == _reference_digest("text", txt, [5, 8])
    f = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    assert anchor_digest("tabular", f, np.array([0, 1])) == _reference_digest("tabular", f, [0, 1])


def test_anchor_digest_stable_and_sensitive():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
    d = anchor_digest("image", img, y)
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    # stable across calls, copies, memory layout, byte order and label dtype
    assert anchor_digest("image", img.copy(), y.copy()) == d
    assert anchor_digest("image", np.asfortranarray(img), y.astype(np.int32)) == d
    f = rng.random((3, 4)).astype(np.float32)
    assert anchor_digest("tabular", f, y[:3]) == anchor_digest("tabular", f.astype(">f4"), y[:3])

    changed = img.copy()
    changed[3, 2, 1] ^= 1
    assert anchor_digest("image", changed, y) != d  # one sample, one bit
    y2 = y.copy()
    y2[4] = 9
    assert anchor_digest("image", img, y2) != d  # one label
    order = np.array([1, 0, 2, 3, 4, 5])
    assert anchor_digest("image", img[order], y[order]) != d  # order
    assert anchor_digest("tabular", img, y) != d  # modality
    assert anchor_digest("image", img.astype(np.int16), y) != d  # dtype is part of the encoding

    txt = ["one", "two", "three"]
    dt = anchor_digest("text", txt, y[:3])
    assert anchor_digest("text", list(txt), y[:3]) == dt
    assert anchor_digest("text", ["one", "two", "threE"], y[:3]) != dt
    assert anchor_digest("text", ["two", "one", "three"], y[:3]) != dt
    # string boundaries are unambiguous
    assert anchor_digest("text", ["ab", "c"], y[:2]) != anchor_digest("text", ["a", "bc"], y[:2])


def test_anchor_digest_rejects_bad_input():
    with pytest.raises(DataError):
        anchor_digest("image", np.zeros((3, 2)), np.zeros(2, np.int64))
    with pytest.raises(DataError):
        anchor_digest("text", ["a", 3], np.zeros(2, np.int64))
    with pytest.raises(DataError):
        anchor_digest("text", ["a"], np.zeros(1, np.float64))


def test_verify_anchor_digest():
    d = anchor_digest("text", ["x"], np.array([1]))
    verify_anchor_digest(d, d, where="round 3")
    other = anchor_digest("text", ["y"], np.array([1]))
    with pytest.raises(AnchorDigestMismatch) as info:
        verify_anchor_digest(d, other, where="round 3")
    assert info.value.expected == d and info.value.got == other
    assert "round 3" in str(info.value)
    assert isinstance(info.value, GeofedError)


def test_anchor_manifest_digest_and_json():
    a = anchor_digest("text", ["x"], np.array([1]))
    b = anchor_digest("dna", ["ACGTAC"], np.array([1]))
    m1 = AnchorManifest({"text": a, "dna": b})
    m2 = AnchorManifest({"dna": b, "text": a})
    assert m1.digest == m2.digest and m1 == m2
    # independent: sha256 over the sorted pairs
    ref = hashlib.sha256(b"geofed-secure/anchor-manifest/v1\x00" + struct.pack("<Q", 2))
    for mod, dig in sorted({"text": a, "dna": b}.items()):
        for s in (mod, dig):
            ref.update(struct.pack("<Q", len(s)) + s.encode())
    assert m1.digest == ref.hexdigest()
    assert AnchorManifest({"text": a, "dna": a}).digest != m1.digest
    back = AnchorManifest.from_json(m1.to_json())
    assert back == m1 and back.digest == m1.digest
    tampered = json.loads(m1.to_json())
    tampered["per_modality"]["dna"] = a
    with pytest.raises(AnchorDigestMismatch):
        AnchorManifest.from_json(json.dumps(tampered))
    with pytest.raises(DataError):
        AnchorManifest({"text": "not-a-digest"})
    with pytest.raises(DataError):
        AnchorManifest.from_json("{not json")


# ============================================================================================
# sources
# ============================================================================================


def test_image_source_is_mnist5k():
    src = load_source("image", seed=0)
    assert src.modality == "image" and not src.synthetic
    assert src.samples.shape == (5000, 28, 28) and src.samples.dtype == np.uint8
    assert src.labels.dtype == np.int64 and np.array_equal(np.bincount(src.labels), [500] * 10)
    # independent read of the first rows with the csv module
    with gzip.open(S._mnist_path(), "rt") as fh:
        reader = csv.reader(fh)
        rows = [next(reader) for _ in range(3)]
    for i, row in enumerate(rows):
        vals = [int(float(v)) for v in row]
        assert np.array_equal(src.samples[i].ravel(), vals[:-1]) and src.labels[i] == vals[-1]
    assert not src.samples.flags.writeable


def test_tabular_source_is_sklearn_digits_and_subset_is_stratified():
    from sklearn.datasets import load_digits

    src = load_source("tabular", seed=0)
    ref = load_digits()
    assert not src.synthetic and src.samples.shape == (1797, 8, 8)
    assert np.array_equal(src.samples, ref.images) and np.array_equal(src.labels, ref.target)
    sub = load_source("tabular", seed=3, max_samples=100)
    assert np.array_equal(np.bincount(sub.labels, minlength=10), [10] * 10)
    # every subset sample is a real row of the full source, with its label
    full = {(s.tobytes(), int(y)) for s, y in zip(src.samples, src.labels)}
    assert all((s.tobytes(), int(y)) in full for s, y in zip(sub.samples, sub.labels))
    assert not np.array_equal(load_source("tabular", seed=4, max_samples=100).samples, sub.samples)


def test_unknown_modality():
    with pytest.raises(DataError, match="image"):
        load_source("audio", seed=0)
    with pytest.raises(DataError):
        load_source("image", seed=0, max_samples=0)


_LANG_MARKERS = {  # words that occur in exactly one of the languages' vocabularies
    "en": {"seven", "eight", "what", "answer", "twice", "counted", "guess", "half"},
    "de": {"sieben", "acht", "Hälfte", "Doppelte", "Ergebnis", "Antwort", "gezählt", "zwölf"},
    "fr": {"sept", "huit", "moitié", "résultat", "réponse", "compté", "fois", "moins"},
    "es": {"siete", "ocho", "mitad", "resultado", "respuesta", "conté", "menos", "cuánto"},
    "sv": {"sju", "åtta", "hälften", "resultatet", "svaret", "gånger", "räknade", "gissning"},
    "it": {"sette", "otto", "metà", "risultato", "risposta", "contato", "doppio"},
    "nl": {"zeven", "negen", "helft", "uitkomst", "antwoord", "telde", "gok", "keer"},
}
_EN_WORDS = S.NUMBER_WORDS["en"]


def test_text_generator_reproducible_multilingual_and_correct():
    a = load_source("text", seed=0, max_samples=600)
    b = load_source("text", seed=0, max_samples=600)
    c = load_source("text", seed=1, max_samples=600)
    assert a.synthetic and a.samples == b.samples and np.array_equal(a.labels, b.labels)
    assert a.samples != c.samples
    assert np.array_equal(np.bincount(a.labels), [60] * 10)
    # prefix stability: sample i depends only on (seed, i)
    assert load_source("text", seed=0, max_samples=50).samples == a.samples[:50]
    assert all(isinstance(t, str) and t for t in a.samples)
    assert len(set(a.samples)) > 400  # varied, not a handful of templates

    words = [set(re.findall(r"[\wåäöéèàíóúñü-]+", t)) for t in a.samples]
    langs_seen = {lang for lang, mk in _LANG_MARKERS.items() if any(w & mk for w in words)}
    assert len(langs_seen) >= 5, langs_seen

    # independent check of the labels: evaluate symbolic arithmetic and plain English numbers
    n_checked = 0
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "×": lambda x, y: x * y, "/": lambda x, y: x / y}
    for t, y in zip(a.samples, a.labels):
        m = re.search(r"(\d+) ([+\-×/]) (\d+)", t)
        if m:
            assert ops[m.group(2)](int(m.group(1)), int(m.group(3))) == y, t
            n_checked += 1
        elif t in _EN_WORDS[:10] or t in "0123456789":
            assert (_EN_WORDS.index(t) if t in _EN_WORDS else int(t)) == y, t
            n_checked += 1
    assert n_checked >= 50
    # "hard": most texts are not just the digit itself
    assert sum(str(y) == t for t, y in zip(a.samples, a.labels)) < 60


def _hamming_min(seq, motif):
    L = len(motif)
    return min(sum(p != q for p, q in zip(seq[i : i + L], motif)) for i in range(len(seq) - L + 1))


def test_dna_motif_present():
    src = load_source("dna", seed=0, max_samples=300)
    assert src.synthetic and np.array_equal(np.bincount(src.labels), [30] * 10)
    motifs = S.dna_motifs(0)
    assert len(set(motifs)) == 10
    lo, hi = S.DNA_LENGTH_RANGE
    correct = 0
    for seq, y in zip(src.samples, src.labels):
        assert set(seq) <= set("ACGT") and lo <= len(seq) <= hi
        dists = [_hamming_min(seq, m) for m in motifs]
        assert dists[y] <= S.DNA_MAX_MUTATIONS  # own motif is there (up to point mutations)
        correct += int(np.argmin(dists) == y)
    assert correct >= 0.97 * len(src.labels)
    # and it is not there by chance: random sequences rarely contain any motif
    rng = np.random.default_rng(99)
    rand = ["".join("ACGT"[i] for i in rng.integers(0, 4, 90)) for _ in range(50)]
    assert sum(min(_hamming_min(s, m) for m in motifs) <= S.DNA_MAX_MUTATIONS for s in rand) <= 2
    # reproducible, seed-dependent
    assert load_source("dna", seed=0, max_samples=300).samples == src.samples
    assert load_source("dna", seed=1, max_samples=300).samples != src.samples
    seqs, labels, pos = S.generate_dna(20, seed=0)
    for s, y, p in zip(seqs, labels, pos):
        seg = s[p : p + S.DNA_MOTIF_LENGTH]
        assert sum(a != b for a, b in zip(seg, motifs[y])) <= S.DNA_MAX_MUTATIONS


# ============================================================================================
# split + load_modality
# ============================================================================================


def test_split_indices_disjoint_and_ordered():
    y = np.repeat(np.arange(10), 40)[np.random.default_rng(0).permutation(400)]
    sp = split_indices(y, seed=1, modality="x", anchors_per_class=3, eval_per_class=4, max_pool=100)
    assert np.array_equal(y[sp.anchors], np.repeat(np.arange(10), 3))
    assert np.array_equal(y[sp.eval_anchors], np.repeat(np.arange(10), 4))
    a, e, p = set(sp.anchors.tolist()), set(sp.eval_anchors.tolist()), set(sp.pool.tolist())
    assert len(a) == 30 and len(e) == 40 and len(p) == 100
    assert not (a & e) and not (a & p) and not (e & p)
    full = split_indices(y, seed=1, modality="x", anchors_per_class=3, eval_per_class=4, max_pool=None)
    assert len(full.pool) == 400 - 70
    with pytest.raises(DataError):
        split_indices(y, seed=1, modality="x", anchors_per_class=20, eval_per_class=20)
    with pytest.raises(ConfigError):
        split_indices(y, seed=1, modality="x", anchors_per_class=0)


@pytest.mark.parametrize("modality", ["tabular", "dna"])
def test_load_modality_cheap_encoders(modality, tmp_path):
    cache = FeatureCache(tmp_path)
    calls = []
    md = load_modality(modality, cache=cache, seed=0, anchors_per_class=2, eval_per_class=3, max_pool=60,
                       progress=lambda m, d, t: calls.append((m, d, t)))
    src = load_source(modality, seed=0)
    assert md.modality == modality and md.synthetic == src.synthetic
    assert md.encoder_name == get_encoder(modality).name
    assert len(md.pool) == 60 and len(md.anchors) == 20 and len(md.eval_anchors) == 30
    # ordered by concept
    assert np.array_equal(md.anchors.labels, np.repeat(np.arange(10), 2))
    assert np.array_equal(md.eval_anchors.labels, np.repeat(np.arange(10), 3))
    # disjoint on raw indices; labels are those of the raw samples
    ix = md.indices
    sets = [set(ix.pool.tolist()), set(ix.anchors.tolist()), set(ix.eval_anchors.tolist())]
    assert sum(map(len, sets)) == 110 and len(set.union(*sets)) == 110
    for feats, idx in ((md.pool, ix.pool), (md.anchors, ix.anchors), (md.eval_anchors, ix.eval_anchors)):
        assert np.array_equal(feats.labels, src.labels[idx])
    # features are the encoding of exactly those raw samples; digest commits to the raw anchors
    take = (lambda idx: src.samples[idx]) if isinstance(src.samples, np.ndarray) else (lambda idx: [src.samples[i] for i in idx])
    enc = get_encoder(modality)
    tok, mask = enc.encode(take(ix.anchors))
    assert np.array_equal(md.anchors.tokens, tok) and np.array_equal(md.anchors.mask, mask)
    assert np.array_equal(md.eval_anchors.tokens, enc.encode(take(ix.eval_anchors))[0])
    assert md.anchor_digest == anchor_digest(modality, take(ix.anchors), src.labels[ix.anchors])
    # progress reached the total
    assert calls[-1] == (modality, 110, 110)
    # second call: same result, served from cache
    misses = cache.misses
    md2 = load_modality(modality, cache=cache, seed=0, anchors_per_class=2, eval_per_class=3, max_pool=60)
    assert cache.misses == misses and cache.hits >= 3
    assert np.array_equal(md2.pool.tokens, md.pool.tokens) and md2.anchor_digest == md.anchor_digest
    # another seed: other anchors
    md3 = load_modality(modality, cache=cache, seed=1, anchors_per_class=2, eval_per_class=3, max_pool=60)
    assert md3.anchor_digest != md.anchor_digest
    assert np.array_equal(md3.anchors.labels, md.anchors.labels)


def test_load_modality_errors(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(DataError, match="tabular"):
        load_modality("audio", cache=cache)
    with pytest.raises(ConfigError):
        load_modality("tabular", cache=cache, anchors_per_class=0)
    with pytest.raises(DataError):
        load_modality("tabular", cache=cache, anchors_per_class=100, eval_per_class=100)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "text"])
def test_load_modality_pretrained_encoders(modality, tmp_path):
    cache = FeatureCache(tmp_path)
    md = load_modality(modality, cache=cache, seed=0, anchors_per_class=2, eval_per_class=2, max_pool=40)
    enc = get_encoder(modality)
    assert md.pool.tokens.shape[1:] == (enc.seq_len, enc.dim)
    assert np.array_equal(md.anchors.labels, np.repeat(np.arange(10), 2))
    ix = md.indices
    assert not (set(ix.pool.tolist()) & set(ix.anchors.tolist()))
    assert not (set(ix.eval_anchors.tolist()) & (set(ix.anchors.tolist()) | set(ix.pool.tolist())))
    src = load_source(modality, seed=0)
    raw = src.samples[ix.anchors] if isinstance(src.samples, np.ndarray) else [src.samples[i] for i in ix.anchors]
    assert md.anchor_digest == anchor_digest(modality, raw, src.labels[ix.anchors])
    assert np.array_equal(md.anchors.tokens, enc.encode(raw)[0])


def test_nan_features_from_an_encoder_are_refused(tmp_path, monkeypatch):
    """An encoder that emits NaN stops load_modality with an error naming the encoder; nothing is cached."""
    from geofed_secure import demo
    from geofed_secure.encoders import get_encoder as real_get_encoder

    class NaNEncoder:
        def __init__(self) -> None:
            self._inner = real_get_encoder("tabular")
            self.name, self.modality, self.dim = self._inner.name + "/nan-test", "tabular", self._inner.dim

        def encode(self, samples):
            tokens, mask = self._inner.encode(samples)
            tokens = tokens.copy()
            tokens[0, 0, 0] = np.nan
            return tokens, mask

    monkeypatch.setattr(demo, "get_encoder", lambda modality: NaNEncoder())
    with pytest.raises(DataError, match=r"periodic-tabular.*/nan-test: encoder produced NaN"):
        demo.load_modality("tabular", cache=FeatureCache(tmp_path), max_pool=100)
    assert not list(tmp_path.glob("*.safetensors"))
