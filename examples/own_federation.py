"""A federation of your own, from a blank folder: three sites, three kinds of files, three encoders.

    python examples/own_federation.py FOLDER          # writes the files, the models and FOLDER/federation.toml
    geofed run --config FOLDER/federation.toml --out FOLDER/run
    geofed audit --config FOLDER/federation.toml --threat-model threat_models/hbc-server.toml \\
        --plan FOLDER/audit-plan.toml --out FOLDER/audit

The concepts are three shapes (circle, square, triangle). Every site holds one kind of record about them, none of
them paired with another site's:

========================= ============================================ ========================================
site                      its records (written here)                    its frozen encoder (written here)
========================= ============================================ ========================================
imaging-site              a folder of 32 x 32 PNG drawings, one          a tiny ViT checkpoint (random weights),
                          subfolder per shape                            patch tokens
report-site               a JSONL file of short free-text descriptions   a tiny BERT checkpoint (random weights)
                                                                         with its own WordPiece vocabulary
registry-site             a CSV table of measurements (corners, area,    the built-in numeric-columns encoder;
                          perimeter, compactness); its task is its OWN   its head predicts small / large
                          label set: small or large
========================= ============================================ ========================================

Each site also holds its copy of the PUBLIC anchors (files of the same kind, with a concept column, the same concept
sequence in every modality). The shared transformer is a tiny BERT too. The models are randomly initialised so the
example runs offline in seconds; put your own checkpoint directories in their place (see docs/own-federation.md).
Everything is seeded: running the script twice writes the same files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

CONCEPTS = ("circle", "square", "triangle")
RECORDS_PER_SITE = 150
ANCHORS_PER_CONCEPT = 10
WORDS = {
    "circle": ["round", "curved", "ring", "smooth", "no", "corners", "disc", "oval", "loop"],
    "square": ["four", "equal", "sides", "right", "angles", "box", "tile", "block", "straight"],
    "triangle": ["three", "corners", "pointed", "tip", "slanted", "edges", "wedge", "peak", "sharp"],
}
FILLER = ["the", "a", "shape", "looks", "like", "with", "outline", "seen", "in", "sample", "drawing", "object"]


def _draw(concept: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    size = 32
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, size=3)))
    draw = ImageDraw.Draw(image)
    r = float(rng.uniform(6, 13))
    cx, cy = rng.uniform(r, size - r, size=2)
    colour = tuple(int(v) for v in rng.integers(150, 256, size=3))
    if concept == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif concept == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _describe(concept: str, rng: np.random.Generator) -> str:
    words = list(rng.choice(WORDS[concept], size=3, replace=False)) + list(rng.choice(FILLER, size=4))
    return " ".join(str(w) for w in rng.permutation(words))


def _measure(concept: str, rng: np.random.Generator) -> dict[str, float]:
    r = float(rng.uniform(2, 10))
    area, perimeter, corners = {"circle": (math.pi * r * r, 2 * math.pi * r, 0),
                                "square": (4 * r * r, 8 * r, 4),
                                "triangle": (1.3 * r * r, 5.2 * r, 3)}[concept]
    noisy = {k: float(v * rng.normal(1, 0.05)) for k, v in (("area", area), ("perimeter", perimeter))}
    return {"corners": corners, "area": round(noisy["area"] / 100, 4), "perimeter": round(noisy["perimeter"] / 40, 4),
            "compactness": round(4 * math.pi * noisy["area"] / noisy["perimeter"] ** 2, 4)}


def _concepts(n: int, rng: np.random.Generator) -> list[str]:
    return [CONCEPTS[int(i)] for i in rng.integers(0, len(CONCEPTS), size=n)]


def write_images(folder: Path, concepts: list[str], rng: np.random.Generator) -> None:
    from PIL import Image

    for i, concept in enumerate(concepts):
        (folder / concept).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_draw(concept, rng)).save(folder / concept / f"{i:04d}.png")


def write_texts(path: Path, concepts: list[str], rng: np.random.Generator, *, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for concept in concepts:
            fh.write(json.dumps({"text": _describe(concept, rng), key: concept}) + "\n")


def write_table(path: Path, concepts: list[str], rng: np.random.Generator, *, key: str, task: bool) -> None:
    import pandas as pd

    rows = []
    for concept in concepts:
        row = _measure(concept, rng)
        row[key] = ("large" if row["area"] > 1.0 else "small") if task else concept
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def write_models(folder: Path) -> None:
    """A tiny ViT (image encoder), a tiny BERT with its own vocabulary (text encoder) and a tiny BERT backbone."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer, ViTConfig, ViTImageProcessor, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    vit = folder / "image-encoder"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    text = folder / "text-encoder"
    text.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))]
    (text / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(text / "vocab.txt")).save_pretrained(text)  # transformers 5 takes vocab=, not vocab_file=
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(text)
    BertModel(BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder / "backbone")


CONFIG = """# A federation of three sites on their own files (written by examples/own_federation.py).
# Relative paths are read from this file's folder. docs/own-federation.md explains every key.
[federation]
id = "shapes"
rounds = 3

[model]
backbone = "models/backbone"          # any local Hugging Face checkpoint directory

[training]
local_steps = 4
batch_size = 16
anchor_batch = 0                      # all 18 training anchors in every step

[secure]
protocol = "masking"                  # pairwise-mask secure aggregation (secagg-v1)

[privacy]
epsilon = 8.0                         # record-level DP-SGD on every site, for the whole run

[anchors]
concepts = ["circle", "square", "triangle"]   # every anchor file's concept column, in this order
holdout_per_concept = 4               # the last 4 anchors of each concept are held out for evaluation

[[nodes]]
id = "imaging-site"
modality = "drawing"
data = { kind = "image-folder", path = "imaging-site/records" }
anchors = { kind = "image-folder", path = "imaging-site/anchors" }
encoder = { kind = "hf", path = "models/image-encoder", layout = "patch" }

[[nodes]]
id = "report-site"
modality = "report"
data = { kind = "jsonl", path = "report-site/records.jsonl", text_column = "text", label_column = "shape" }
anchors = { kind = "jsonl", path = "report-site/anchors.jsonl", text_column = "text", label_column = "concept" }
encoder = { kind = "hf", path = "models/text-encoder", max_length = 12 }

[[nodes]]
id = "registry-site"
modality = "measurements"
labels = ["small", "large"]           # its own task; its head is local
data = { kind = "table", path = "registry-site/records.csv", label_column = "size" }
anchors = { kind = "table", path = "registry-site/anchors.csv", label_column = "concept" }
encoder = { kind = "builtin", name = "numeric-columns" }
"""

AUDIT_PLAN = """# geofed audit --config federation.toml --threat-model threat_models/hbc-server.toml --plan audit-plan.toml --out audit
target = "registry-site"
runs = 4
protections = ["none", "masking"]
epsilons = [8.0]
rounds = 2
local_steps = 4
batch_size = 16
extraction_anchors = [6, 18]
extraction_draws = 1
canaries = 20
bootstrap = 50
"""


def write_example(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the whole example into ``folder``; returns the path of its federation.toml."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    anchor_order = [c for c in CONCEPTS for _ in range(ANCHORS_PER_CONCEPT)]  # the same sequence in every modality
    write_images(root / "imaging-site" / "records", _concepts(RECORDS_PER_SITE, rng), rng)
    write_images(root / "imaging-site" / "anchors", anchor_order, rng)
    write_texts(root / "report-site" / "records.jsonl", _concepts(RECORDS_PER_SITE, rng), rng, key="shape")
    write_texts(root / "report-site" / "anchors.jsonl", anchor_order, rng, key="concept")
    write_table(root / "registry-site" / "records.csv", _concepts(RECORDS_PER_SITE, rng), rng, key="size", task=True)
    write_table(root / "registry-site" / "anchors.csv", anchor_order, rng, key="concept", task=False)
    write_models(root / "models")
    (root / "audit-plan.toml").write_text(AUDIT_PLAN)
    config = root / "federation.toml"
    config.write_text(CONFIG)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the example (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = write_example(args.folder, seed=args.seed)
    print(f"wrote {config}\nnext: geofed run --config {config} --out {args.folder / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
