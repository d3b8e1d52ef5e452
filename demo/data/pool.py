"""The demo's image-text pool: ten open emoji and icon sets, split by concept, plus Fluent Emoji
as a style never trained on.

``build.py`` calls :func:`pool_dataset` for ``--source pool`` (the default; digits when npm
cannot fetch the packages). Steps:

1. fetch the pinned tarballs (``packages.py``) into ``build/cache`` with ``npm pack``;
2. read each (``pool_readers.py``): concept, caption (CLDR names and keywords, icon names and
   tags, never a set or style word: ``captions.py``), raw PNG or SVG;
3. rasterise (``raster.py``, cached per package and size, progress bar; broken SVGs counted);
4. split the training sets' concepts, stratified by set family (emoji concepts, which several
   sets share, form one stratum; each icon set its own): ~10% **concept held-out** (every image
   of the concept, in every style, removed from training), ~5% **validation** (tuning only), the
   rest train. **Style held-out**: Fluent Emoji images (flat, high contrast, modern) of train
   concepts, never trained on.

Skin tones: only the default (yellow) tone of each emoji is kept. The five tone variants of an
emoji are the same drawing with one patch recoloured and captions that differ only in the tone
words; keeping them would make about half of the emoji rows near-duplicates and turn part of
retrieval into a colour test. They are counted in the manifest ("skin-tone variant").

Evaluation sets (clip_benchmark wds layout, one image per concept so every caption has exactly
one right image; concepts whose caption repeats another's are dropped, counted):
``style_retrieval`` (Fluent, the three styles in turn), ``concept_retrieval`` and its halves
``concept_emoji_retrieval`` / ``concept_icons_retrieval``, ``concept_zeroshot`` (every held-out
image classified among the held-out concepts' captions) and ``val_retrieval``.
"""
import json
import math
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from demo.data.cldr import Cldr
from demo.data.packages import PACKAGES, TRAIN_PACKAGES
from demo.data.pool_readers import FLUENT_STYLES, read_package
from demo.data.raster import rasterise_package
from demo.data.shards import CaptionedImage, write_img2dataset_shards
from eval.wds_sets import write_classification_set, write_retrieval_set

HELDOUT_FRACTION, VAL_FRACTION = 0.10, 0.05
SAMPLES_PER_SHARD = 5_000
ZEROSHOT_TEMPLATES = ("{c}",)
EVAL_SETS = ("style_retrieval", "concept_retrieval", "concept_emoji_retrieval",
             "concept_icons_retrieval", "concept_zeroshot", "val_retrieval")


def family_of(image):
    return PACKAGES[image.package].family


def stratum_of(concept):
    """Emoji concepts are one stratum (shared by five sets); each icon set is its own."""
    prefix = concept.split(":", 1)[0]
    return "emoji" if prefix in ("emoji", "openmoji") else prefix


def sampled(concept, one_in):
    """Keep one concept in ``one_in``, by a hash of its name: the same concepts in every set."""
    return one_in is None or zlib.crc32(concept.encode()) % one_in == 0


def read_all(tarballs, cldr, size, cache_dir, jobs, show_progress, one_in=None):
    """{package: [(RawImage, array)]} for every drawable image, and the counts left out.
    ``one_in`` keeps a hashed subset of the concepts (tests)."""
    drawn, left_out = {}, {}
    for key, tarball in tarballs.items():
        if PACKAGES[key].role == "text":
            continue
        raw, skipped = read_package(key, tarball, cldr)
        raw = [image for image in raw if sampled(image.concept, one_in)]
        arrays, broken = rasterise_package(raw, size, key, PACKAGES[key].npm.integrity,
                                           cache_dir, jobs, show_progress)
        skipped["broken image"] += len(broken)
        drawn[key] = [(image, arrays[image.name]) for image in raw if image.name in arrays]
        left_out[key] = dict(sorted(skipped.items()))
    return drawn, left_out


def split_concepts(concepts, seed, heldout_fraction=HELDOUT_FRACTION, val_fraction=VAL_FRACTION):
    """{concept: "train" | "val" | "heldout"}, a seeded permutation per stratum."""
    by_stratum = defaultdict(list)
    for concept in sorted(concepts):
        by_stratum[stratum_of(concept)].append(concept)
    split = {}
    for stratum, members in by_stratum.items():
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        order = [members[i] for i in rng.permutation(len(members))]
        n_heldout = int(round(heldout_fraction * len(order)))
        n_val = int(round(val_fraction * len(order)))
        for position, concept in enumerate(order):
            split[concept] = ("heldout" if position < n_heldout else
                              "val" if position < n_heldout + n_val else "train")
    return split


def one_image_per_concept(pairs, seed, styles=None):
    """[(RawImage, array)] -> one pair per concept, chosen by a seeded draw (or, with ``styles``,
    the styles in turn over a seeded concept order); then drop repeated captions (counted)."""
    by_concept = defaultdict(list)
    for pair in pairs:
        by_concept[pair[0].concept].append(pair)
    concepts = sorted(by_concept)
    rng = np.random.default_rng(seed)
    chosen = []
    for turn, index in enumerate(rng.permutation(len(concepts))):
        options = by_concept[concepts[index]]
        if styles:
            wanted = styles[turn % len(styles)]
            options = [p for p in options if p[0].style == wanted] or options
        chosen.append(options[int(rng.integers(len(options)))])
    chosen.sort(key=lambda pair: pair[0].concept)
    unique, seen = [], set()
    for pair in chosen:
        if pair[0].caption not in seen:
            seen.add(pair[0].caption)
            unique.append(pair)
    return unique, len(chosen) - len(unique)


def as_pil(array):
    return Image.fromarray(array, mode="RGB")


def write_pairs_index(path, pairs):
    """``pairs.jsonl`` beside a set: concept, package, style and caption of sample i, line i."""
    path.write_text("".join(json.dumps({"concept": i.concept, "package": i.package,
                                        "style": i.style, "caption": i.caption}) + "\n"
                            for i, _ in pairs))


def write_retrieval(out_dir, name, pairs):
    write_retrieval_set(out_dir / name, [as_pil(a) for _, a in pairs],
                        [image.caption for image, _ in pairs])
    write_pairs_index(out_dir / name / "pairs.jsonl", pairs)
    return {"pairs": len(pairs),
            "by_package": dict(sorted(Counter(i.package for i, _ in pairs).items()))}


def write_zeroshot(out_dir, name, pairs):
    """Every image of the held-out concepts, classified among their (unique) captions."""
    classnames = sorted({image.caption for image, _ in pairs})
    index = {caption: i for i, caption in enumerate(classnames)}
    write_classification_set(out_dir / name, [as_pil(a) for _, a in pairs],
                             [index[image.caption] for image, _ in pairs], classnames,
                             list(ZEROSHOT_TEMPLATES))
    write_pairs_index(out_dir / name / "pairs.jsonl", pairs)
    return {"images": len(pairs), "classes": len(classnames)}


def train_items(pairs, train_pairs, seed):
    """The training pairs as shard items; ``train_pairs`` draws a seeded subset (``make demo``)."""
    pairs = sorted(pairs, key=lambda pair: (pair[0].concept, pair[0].package, pair[0].name))
    if train_pairs is not None and train_pairs < len(pairs):
        keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(pairs))[:train_pairs])
        pairs = [pairs[i] for i in keep]
    order = np.random.default_rng([seed, 2]).permutation(len(pairs))  # mix sets across shards
    return [CaptionedImage(as_pil(pairs[i][1]), pairs[i][0].caption, {
        "concept": pairs[i][0].concept, "package": pairs[i][0].package,
        "style": pairs[i][0].style, "family": family_of(pairs[i][0])}) for i in order]


def write_eval_sets(out_dir, split, train_side, heldout, val, fluent, seed):
    """The evaluation sets of EVAL_SETS; -> their counts."""
    style_pool = [p for p in fluent if split.get(p[0].concept) == "train"]
    style, style_dups = one_image_per_concept(style_pool, seed, styles=FLUENT_STYLES)
    concept, concept_dups = one_image_per_concept(heldout, seed)
    captions = {image.caption for image, _ in concept}
    val_pairs, val_dups = one_image_per_concept(val, seed)
    counts = {
        "style_retrieval": write_retrieval(out_dir, "style_retrieval", style),
        "concept_retrieval": write_retrieval(out_dir, "concept_retrieval", concept),
        "concept_emoji_retrieval": write_retrieval(
            out_dir, "concept_emoji_retrieval", [p for p in concept if family_of(p[0]) == "emoji"]),
        "concept_icons_retrieval": write_retrieval(
            out_dir, "concept_icons_retrieval", [p for p in concept if family_of(p[0]) == "icons"]),
        "concept_zeroshot": write_zeroshot(out_dir, "concept_zeroshot",
                                           [p for p in heldout if p[0].caption in captions]),
        "val_retrieval": write_retrieval(out_dir, "val_retrieval", val_pairs),
    }
    counts["repeated captions dropped"] = {"style": style_dups, "concept": concept_dups,
                                           "val": val_dups}
    counts["style_retrieval"]["by_style"] = dict(Counter(i.style for i, _ in style))
    return counts


def write_attribution(path, packages):
    lines = ["Attribution and licences of the images and texts in this directory.", "",
             "The captions are built from names, keywords and tags in these packages; the "
             "images are rasterised or resized copies.", ""]
    for key in packages:
        package = PACKAGES[key]
        lines += [f"- {package.npm.spec} ({package.role}, {package.family}) — {package.licence}",
                  f"  {package.credit}"]
    path.write_text("\n".join(lines) + "\n")
    return " ".join(PACKAGES[k].credit for k in packages)


def pool_dataset(out_dir, tarballs, *, image_size=64, seed=0, train_pairs=None,
                 cache_dir=Path("build/cache"), jobs=2, show_progress=True, one_in=None):
    """Write the pool's train shards and evaluation sets into ``out_dir``; -> manifest.
    ``tarballs``: {PACKAGES key: path}, emojibase required, any subset of the others."""
    out_dir = Path(out_dir)
    cldr = Cldr.from_tarball(tarballs["emojibase"])
    drawn, left_out = read_all(tarballs, cldr, image_size, cache_dir, jobs, show_progress,
                               one_in)
    training = [pair for key in TRAIN_PACKAGES if key in drawn for pair in drawn[key]]
    split = split_concepts({image.concept for image, _ in training}, seed)
    sides = defaultdict(list)
    for pair in training:
        sides[split[pair[0].concept]].append(pair)
    items = train_items(sides["train"], train_pairs, seed)
    shards = write_img2dataset_shards(out_dir / "train", items,
                                      max(1, math.ceil(len(items) / SAMPLES_PER_SHARD)))
    eval_counts = write_eval_sets(out_dir, split, sides["train"], sides["heldout"], sides["val"],
                                  drawn.get("fluent", []), seed)
    attribution = write_attribution(out_dir / "ATTRIBUTION.txt", list(tarballs))
    (out_dir / "splits.json").write_text(json.dumps(
        {s: sorted(c for c, side in split.items() if side == s) for s in ("train", "val",
                                                                            "heldout")}, indent=1))
    concepts = Counter(split.values())
    return {
        "source": "pool", "image_size": image_size, "seed": seed, "attribution": attribution,
        "provenance": {k: PACKAGES[k].npm.spec for k in tarballs},
        "left_out": left_out,
        "counts": {side: {"concepts": concepts[side], "samples": len(sides[side])}
                   for side in ("train", "val", "heldout")} | {
            "train_shards": {"samples": len(items)},
            "train_by_package": dict(sorted(Counter(i.meta["package"] for i in items).items())),
            "eval": eval_counts},
        "train": {"pattern": str(Path(shards.pattern).relative_to(out_dir)),
                  "num_samples": shards.num_samples, "id_space": shards.id_space,
                  "num_shards": len(shards.paths)},
        "eval_sets": {name: name for name in EVAL_SETS},
    }
