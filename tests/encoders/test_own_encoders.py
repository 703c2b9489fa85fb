"""Tests of the encoders operators bring: local HF checkpoints, user callables, numeric columns, precomputed tokens."""

from __future__ import annotations

import pickle
import shutil
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

from geofed_secure.config import EncoderSpec
from geofed_secure.encoders import (
    CallableEncoder,
    EfficientNetLite0Encoder,
    FeatureCache,
    FrozenEncoder,
    HFEncoder,
    KmerDNAEncoder,
    MiniLMTextEncoder,
    NumericColumnsEncoder,
    PeriodicTabularEncoder,
    PrecomputedEncoder,
    checkpoint_digest,
    encoder_from_spec,
    serialize_rows,
)
from geofed_secure.errors import DataError

torch.set_num_threads(1)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789", ":", ";", ".", "-",
         "hello", "world", "cat", "dog", "age", "weight", "the", "on", "mat"]


# ============================================================================================
# tiny checkpoints (random weights, built offline)
# ============================================================================================
def _save_bert(path, *, pooler: bool = True):
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)  # transformers 5: vocab=, not vocab_file=
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _save_bert(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="module")
def bert_nopool_dir(tmp_path_factory):
    return _save_bert(tmp_path_factory.mktemp("ckpt") / "tiny-bert-nopool", pooler=False)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("ckpt") / "tiny-vit"
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


TEXTS = ["hello world", "the cat on the mat", "dog", "a b c d e f g h i j k l m n o p q r s t u v w x y z"]


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (20, 30), (32, 32), (64, 17)]
    out = [rng.integers(0, 256, size=(*sizes[i % 4], 3), dtype=np.uint8) for i in range(n)]
    out.append(rng.integers(0, 256, size=(24, 24), dtype=np.uint8))  # grey
    return out


# ============================================================================================
# HFEncoder: text
# ============================================================================================
def test_hf_text_hidden_patch_pooled(bert_dir):
    hidden = HFEncoder(bert_dir, modality="notes", max_length=16)
    assert isinstance(hidden, FrozenEncoder) and hidden.input == "text" and hidden.modality == "notes"
    assert hidden.dim == 32 and hidden.seq_len == 16 and hidden._state is None  # known from config.json: no load
    digest = checkpoint_digest(bert_dir)
    assert hidden.name == f"hf/tiny-bert/{digest[:16]}/text/hidden/len16/v1"
    t, m = hidden.encode(TEXTS)
    assert t.shape == (4, 16, 32) and t.dtype == np.float32 and m.shape == (4, 16) and m.dtype == np.bool_
    assert m[0].sum() == 4 and m[3].all()  # [CLS] hello world [SEP]; the alphabet fills all 16
    assert not t[~m].any() and np.abs(t[m]).sum(axis=-1).min() > 0  # zero at padding only
    t2, m2 = hidden.encode(TEXTS)
    assert np.array_equal(t, t2) and np.array_equal(m, m2)  # deterministic

    patch = HFEncoder(bert_dir, modality="notes", layout="patch", max_length=16)
    tp, mp = patch.encode(TEXTS)
    assert patch.seq_len == 15 and tp.shape == (4, 15, 32)
    np.testing.assert_array_equal(tp, t[:, 1:])
    np.testing.assert_array_equal(mp, m[:, 1:])

    pooled = HFEncoder(bert_dir, modality="notes", layout="pooled", max_length=16, batch_size=3)
    assert "/pooled-pooler/" in pooled.name and pooled.seq_len == 1
    tq, mq = pooled.encode(TEXTS)
    assert tq.shape == (4, 1, 32) and mq.all() and np.abs(tq).max() <= 1.0  # BERT's pooler ends in tanh
    assert len({hidden.name, patch.name, pooled.name}) == 3


def test_hf_pooled_mean_without_pooler_weights(bert_nopool_dir):
    pooled = HFEncoder(bert_nopool_dir, modality="text", layout="pooled", max_length=12)
    assert "/pooled-mean/" in pooled.name
    tq, _ = pooled.encode(TEXTS[:3])
    t, m = HFEncoder(bert_nopool_dir, modality="text", max_length=12).encode(TEXTS[:3])
    expected = t.sum(axis=1) / m.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(tq[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert pooled.encode(TEXTS[:3])[0].tobytes() == tq.tobytes()  # the randomly initialised pooler is never used


def test_hf_text_rejects_bad_samples_and_options(bert_dir):
    enc = HFEncoder(bert_dir, modality="text", max_length=8)
    for bad in ("one string", [1, 2], np.zeros((2, 3), np.float32)):
        with pytest.raises(DataError):
            enc.encode(bad)
    with pytest.raises(DataError, match="max_position_embeddings"):
        HFEncoder(bert_dir, modality="text", max_length=65)
    with pytest.raises(DataError, match="layout"):
        HFEncoder(bert_dir, modality="text", layout="cls")
    with pytest.raises(DataError, match="input"):
        HFEncoder(bert_dir, modality="text", input="audio")


def test_serialize_rows_and_tables_through_a_text_checkpoint(bert_dir):
    rows = serialize_rows(np.array([[1.5, 70.0], [2e-7, -3.0]], np.float32), ["age", "weight"])
    assert rows == ["age: 1.5; weight: 70", "age: 2e-07; weight: -3"]
    with pytest.raises(DataError):
        serialize_rows(np.zeros((2, 3)), ["a", "b"])
    enc = HFEncoder(bert_dir, modality="registry", max_length=16, columns=("age", "weight"))
    plain = HFEncoder(bert_dir, modality="registry", max_length=16)
    assert "/rows-" in enc.name and enc.name != plain.name
    table = np.array([[1.5, 70.0], [3.0, 2.0]], np.float32)
    t, _ = enc.encode(table)
    np.testing.assert_array_equal(t, plain.encode(serialize_rows(table, ["age", "weight"]))[0])
    with pytest.raises(DataError):
        enc.encode(np.zeros((2, 3), np.float32))  # 3 values, 2 column names


# ============================================================================================
# HFEncoder: images
# ============================================================================================
def test_hf_image_hidden_patch_pooled(vit_dir):
    hidden = HFEncoder(vit_dir, modality="scans", batch_size=2)
    assert hidden.input == "image" and hidden.dim == 32 and hidden._state is None
    assert hidden.seq_len == 17  # 4 x 4 patches + [CLS], from one dummy forward at load
    t, m = hidden.encode(_images())
    assert t.shape == (4, 17, 32) and m.all() and np.isfinite(t).all()
    assert np.array_equal(t, hidden.encode(_images())[0])
    patch = HFEncoder(vit_dir, modality="scans", input="image", layout="patch")
    tp, _ = patch.encode(_images())
    assert patch.seq_len == 16 and tp.shape == (4, 16, 32)
    np.testing.assert_allclose(tp, t[:, 1:], rtol=1e-5, atol=1e-6)
    pooled = HFEncoder(vit_dir, modality="scans", layout="pooled")
    assert "/image/pooled-pooler/" in pooled.name
    assert pooled.encode(_images())[0].shape == (4, 1, 32)
    stacked = np.stack([_images(1)[0]] * 2)
    assert hidden.encode(stacked)[0].shape == (2, 17, 32)  # a [N, H, W, 3] array works too
    for bad in ([np.zeros((4, 4, 4), np.uint8)], [np.full((4, 4, 3), 300.0)], "img.png"):
        with pytest.raises(DataError):
            hidden.encode(bad)


def test_hf_encoder_pickles_without_its_weights(vit_dir):
    enc = HFEncoder(vit_dir, modality="scans", layout="pooled")
    enc.encode(_images(1))
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._state is None and clone.name == enc.name
    np.testing.assert_array_equal(clone.encode(_images(1))[0], enc.encode(_images(1))[0])


# ============================================================================================
# HFEncoder: identity, detection, errors, cache
# ============================================================================================
def test_auto_detection(bert_dir, vit_dir, tmp_path):
    assert HFEncoder(bert_dir, modality="x").input == "text"
    assert HFEncoder(vit_dir, modality="x").input == "image"
    both = tmp_path / "both"
    shutil.copytree(vit_dir, both)
    shutil.copy(bert_dir / "vocab.txt", both / "vocab.txt")
    with pytest.raises(DataError, match="input"):
        HFEncoder(both, modality="x")
    assert HFEncoder(both, modality="x", input="image").input == "image"
    neither = tmp_path / "neither"
    shutil.copytree(vit_dir, neither)
    (neither / "preprocessor_config.json").unlink()
    with pytest.raises(DataError, match="set the encoder's input"):
        HFEncoder(neither, modality="x")


def test_checkpoint_digest_follows_the_weights(bert_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "tiny-bert"
    shutil.copytree(bert_dir, copy)
    before = HFEncoder(copy, modality="text", max_length=8)
    assert before.name == HFEncoder(bert_dir, modality="text", max_length=8).name  # same files, same name
    (copy / ".DS_Store").write_bytes(b"junk")  # hidden files do not count
    assert checkpoint_digest(copy) == before.digest
    weights = load_file(str(copy / "model.safetensors"))
    key = min(weights)
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] += 1.0
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    after = HFEncoder(copy, modality="text", max_length=8)
    assert after.digest != before.digest and after.name != before.name
    assert after.name.split("/")[2] == after.digest[:16]


def test_not_a_local_checkpoint(bert_dir, tmp_path):
    def fails(path, *words):
        with pytest.raises(DataError) as info:
            HFEncoder(path, modality="text")
        msg = str(info.value)
        for w in ("local Hugging Face checkpoint directory", "nothing is downloaded", *words):
            assert w in msg, msg
        return msg

    fails(tmp_path / "missing", "does not exist")
    (tmp_path / "file.bin").write_bytes(b"x")
    fails(tmp_path / "file.bin", "not a directory")
    fails(tmp_path, "no config.json")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(bert_dir / "config.json", no_weights / "config.json")
    fails(no_weights, "no weights")
    fails("bert-base-uncased", "Hub id", "--local-dir")
    fails("sentence-transformers/all-MiniLM-L6-v2", "Hub id")


def test_feature_cache_keys_on_the_checkpoint(bert_dir, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    enc = HFEncoder(bert_dir, modality="text", max_length=8)
    first = cache.get_or_encode(enc, TEXTS, data_digest="texts-v1")
    fresh = HFEncoder(bert_dir, modality="text", max_length=8)  # a new process would build a fresh encoder
    second = cache.get_or_encode(fresh, TEXTS, data_digest="texts-v1")
    assert (cache.misses, cache.hits) == (1, 1) and fresh._state is None  # served from disk, weights never loaded
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    cache.get_or_encode(HFEncoder(bert_dir, modality="text", max_length=9), TEXTS, data_digest="texts-v1")
    assert cache.misses == 2


# ============================================================================================
# CallableEncoder
# ============================================================================================
FACTORY_MODULE = '''
import numpy as np

class Enc:
    def __init__(self, mode):
        self.mode, self.name, self.dim = mode, "toy-" + mode, 4
    def encode(self, samples):
        n = len(samples)
        t = np.arange(n * 3 * 4, dtype=np.float32).reshape(n, 3, 4)
        if self.mode == "mask":
            m = np.ones((n, 3), bool); m[:, 2] = False
            return t, m
        if self.mode == "nan":
            t[0, 0, 0] = np.nan
        if self.mode == "shape":
            return t[:, :, :3]
        if self.mode == "f64":
            return t.astype(np.float64)
        if self.mode == "rows":
            return t[:-1]
        return t

def plain(): return Enc("plain")
def masked(): return Enc("mask")
def nan(): return Enc("nan")
def shape(): return Enc("shape")
def f64(): return Enc("f64")
def rows(): return Enc("rows")
def nameless(): return object()
def broken(): raise RuntimeError("no weights here")
NOT_CALLABLE = 3
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A fresh importable module of toy factories; returns its name."""
    name = f"own_encoder_factories_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_callable_encoder_wraps_and_validates(factories):
    enc = CallableEncoder(f"{factories}:plain", modality="notes")
    assert enc._obj is None  # the factory runs on first use
    assert isinstance(enc, FrozenEncoder)
    assert enc.name == f"callable/{factories}:plain/toy-plain" and enc.dim == 4
    t, m = enc.encode(["a", "b"])
    assert t.shape == (2, 3, 4) and m.dtype == np.bool_ and m.all()
    t, m = CallableEncoder(f"{factories}:masked").encode(["a", "b"])
    assert m.tolist() == [[True, True, False]] * 2
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.name == enc.name
    for fn, words in [("nan", "NaN"), ("shape", "shape"), ("f64", "float32"), ("rows", "2 samples"),
                      ("nameless", "name"), ("broken", "no weights here")]:
        with pytest.raises(DataError) as info:
            CallableEncoder(f"{factories}:{fn}").encode(["a", "b"])
        assert f"{factories}:{fn}" in str(info.value) and words in str(info.value), str(info.value)


@pytest.mark.parametrize("spec", ["", "nocolon", "a:b:c", ":f", "mod:", "1mod:f", "mod:f-g", "a..b:f", "mod :f"])
def test_malformed_factory_strings(spec):
    with pytest.raises(DataError, match="package.module:function"):
        CallableEncoder(spec)


def test_factory_import_errors(factories):
    with pytest.raises(DataError, match="cannot import module"):
        CallableEncoder("no_such_pkg_xyz.mod:make")
    with pytest.raises(DataError, match="no attribute"):
        CallableEncoder(f"{factories}:missing")
    with pytest.raises(DataError, match="not callable"):
        CallableEncoder(f"{factories}:NOT_CALLABLE")


# ============================================================================================
# NumericColumnsEncoder, PrecomputedEncoder
# ============================================================================================
def test_numeric_columns_encoder():
    x = np.random.default_rng(0).normal(size=(300, 11)).astype(np.float32)
    enc = NumericColumnsEncoder(11)
    assert isinstance(enc, FrozenEncoder) and enc.seq_len == 11 and enc.dim == 64
    t, m = enc.encode(x)
    assert t.shape == (300, 11, 64) and t.dtype == np.float32 and m.all()
    assert np.array_equal(t, NumericColumnsEncoder(11).encode(x)[0])  # seeded: bit-identical
    y = x.copy()
    y[:, 3] += 1.0
    changed = np.abs(NumericColumnsEncoder(11).encode(y)[0] - t).sum(axis=(0, 2))
    assert changed[3] > 0 and np.delete(changed, 3).max() == 0  # token c depends only on column c
    names = {enc.name, NumericColumnsEncoder(11, seed=1).name, NumericColumnsEncoder(11, scale=2).name,
             NumericColumnsEncoder(12).name, NumericColumnsEncoder(11, n_freq=4).name, NumericColumnsEncoder(11, dim=8).name}
    assert len(names) == 6 and all(n.endswith("/v1") for n in names)
    assert "seed0" in enc.name and "F11" in enc.name and "scale1" in enc.name and "d64" in enc.name
    assert NumericColumnsEncoder(2, dim=8).encode(np.array([[1, 2]], dtype=np.int64))[0].shape == (1, 2, 8)
    for bad in (np.zeros((3, 10)), np.zeros(11), np.full((2, 11), np.nan)):
        with pytest.raises(DataError):
            enc.encode(bad)
    with pytest.raises(DataError):
        NumericColumnsEncoder(0)
    with pytest.raises(DataError):
        NumericColumnsEncoder(3, scale=0)


def test_precomputed_encoder():
    enc = PrecomputedEncoder(8, 5, modality="emb")
    assert isinstance(enc, FrozenEncoder) and enc.name == "precomputed/d8/L5/v1"
    tokens = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    t, m = enc.encode(tokens)
    assert t is tokens and m.all() and m.shape == (3, 5)
    mask = np.ones((3, 5), bool)
    mask[:, 4] = False
    assert enc.encode((tokens, mask))[1] is mask
    for bad in (tokens[:, :, :7], tokens[:, :4], tokens.astype(np.float64), (tokens, mask.astype(int)),
                (tokens, np.zeros((3, 5), bool))):
        with pytest.raises(DataError):
            enc.encode(bad)


# ============================================================================================
# encoder_from_spec
# ============================================================================================
def test_encoder_from_spec_builtins():
    for name, cls, kind in [("image", EfficientNetLite0Encoder, "image"), ("text", MiniLMTextEncoder, "text"),
                            ("tabular", PeriodicTabularEncoder, "table"), ("dna", KmerDNAEncoder, "sequence")]:
        enc = encoder_from_spec(EncoderSpec(kind="builtin", name=name), modality="site-x", record_kind=kind)
        assert type(enc) is cls and enc._state is None  # type: ignore[attr-defined]
    enc = encoder_from_spec(EncoderSpec(), modality="dna", record_kind="sequence")  # name "" -> the modality
    assert isinstance(enc, KmerDNAEncoder)
    enc = encoder_from_spec(EncoderSpec(name="numeric-columns"), modality="labs", record_kind="table", n_columns=7)
    assert isinstance(enc, NumericColumnsEncoder) and enc.seq_len == 7 and enc.modality == "labs"
    for spec, kind, words in [
        (EncoderSpec(name="text"), "image", "cannot encode 'image'"),
        (EncoderSpec(name="image"), "text", "cannot encode 'text'"),
        (EncoderSpec(name="numeric-columns"), "text", "cannot encode 'text'"),
        (EncoderSpec(name="numeric-columns"), "table", "n_columns"),
        (EncoderSpec(name="tabular"), "features", "precomputed"),
        (EncoderSpec(name="audio"), "image", "unknown builtin"),
        (EncoderSpec(kind="magic"), "image", "unknown encoder kind"),
        (EncoderSpec(name="text"), "video", "unknown record kind"),
    ]:
        with pytest.raises(DataError, match=words):
            encoder_from_spec(spec, modality="m", record_kind=kind)


def test_encoder_from_spec_hf(bert_dir, vit_dir, tmp_path):
    base = bert_dir.parent
    enc = encoder_from_spec(EncoderSpec(kind="hf", path="tiny-bert", layout="pooled", max_length=10, batch_size=5),
                            modality="notes", record_kind="text", base_dir=base)
    assert isinstance(enc, HFEncoder) and enc._state is None and enc.batch_size == 5 and enc.seq_len == 1
    assert enc.modality == "notes" and enc.max_length == 10
    assert encoder_from_spec(EncoderSpec(kind="hf", path=str(vit_dir)), modality="scans", record_kind="image").input == "image"
    with pytest.raises(DataError, match="an image checkpoint"):
        encoder_from_spec(EncoderSpec(kind="hf", path=str(vit_dir)), modality="m", record_kind="text")
    with pytest.raises(DataError, match="a text checkpoint"):
        encoder_from_spec(EncoderSpec(kind="hf", path=str(bert_dir)), modality="m", record_kind="image")
    with pytest.raises(DataError, match="a text checkpoint"):
        encoder_from_spec(EncoderSpec(kind="hf", path=str(bert_dir)), modality="m", record_kind="features")
    with pytest.raises(DataError, match="column names"):
        encoder_from_spec(EncoderSpec(kind="hf", path=str(bert_dir)), modality="m", record_kind="table", n_columns=2)
    table = encoder_from_spec(EncoderSpec(kind="hf", path=str(bert_dir), max_length=12), modality="m",
                              record_kind="table", n_columns=2, columns=("age", "weight"))
    assert table.encode(np.array([[30.0, 70.5]], np.float32))[0].shape == (1, 12, 32)
    with pytest.raises(DataError, match="looked at"):
        encoder_from_spec(EncoderSpec(kind="hf", path="nope"), modality="m", record_kind="text", base_dir=tmp_path)
    with pytest.raises(DataError, match="Hub id"):
        encoder_from_spec(EncoderSpec(kind="hf", path="bert-base-uncased"), modality="m", record_kind="text")
    with pytest.raises(DataError, match="needs a path"):
        encoder_from_spec(EncoderSpec(kind="hf"), modality="m", record_kind="text")


def test_encoder_from_spec_callable_and_precomputed(factories):
    enc = encoder_from_spec(EncoderSpec(kind="callable", factory=f"{factories}:plain"), modality="m", record_kind="image")
    assert isinstance(enc, CallableEncoder) and enc.modality == "m"
    with pytest.raises(DataError, match="factory"):
        encoder_from_spec(EncoderSpec(kind="callable"), modality="m", record_kind="text")
    enc = encoder_from_spec(EncoderSpec(kind="precomputed"), modality="emb", record_kind="features", dim=8, seq_len=3)
    assert isinstance(enc, PrecomputedEncoder) and enc.name == "precomputed/d8/L3/v1"
    with pytest.raises(DataError, match="token shape"):
        encoder_from_spec(EncoderSpec(kind="precomputed"), modality="emb", record_kind="features")
    with pytest.raises(DataError, match="already are tokens"):
        encoder_from_spec(EncoderSpec(kind="precomputed"), modality="emb", record_kind="table", dim=8, seq_len=3)
