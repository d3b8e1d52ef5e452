"""Demo data: Twemoji caption pairs (or a scikit-learn digits fallback) for the end-to-end demo.

Commands (run from the repository root)::

    python -m open_clip_patch.demo_data demo --out build/demo/data [--source auto] [--force]
    python -m open_clip_patch.demo_data twemoji --out build/demo/data [--image-size 32] [--force]
    python -m open_clip_patch.demo_data digits --out build/digits [--num-shards 2]

``demo`` with ``--source auto`` (the default) uses Twemoji and falls back to digits, with one
line on stderr and ``"source": "digits-fallback"`` in the manifest, when ``npm pack`` cannot
fetch the package. ``twemoji`` insists on Twemoji. ``digits`` writes only the train shards the
trainer tests use (see ``digits_data.py``).

Twemoji comes from the npm package ``emoji-datasource-twitter@16.0.0``, fetched by ``npm pack``
into ``build/cache`` and checked against the sha512 integrity pinned below. Every emoji image
(base and skin-tone variants, 3,786 PNGs at 64 px) is composited onto white, resized, and
captioned from its name ("an emoji of crossed swords", "an emoji of waving hand sign, dark skin
tone"). Emoji are split by base emoji, so an emoji and all its skin-tone variants land on the
same side, stratified by category: held-out (~20%, final evaluation only), validation (~10%, for
tuning) and train (the rest). The demo directory holds::

    train/{00000..N}.tar, sizes.json   img2dataset-style train shards (keys = per-sample ids)
    heldout_retrieval/                 clip_benchmark wds retrieval set (held-out pairs)
    heldout_zeroshot/                  clip_benchmark wds classification set: emoji categories
    val_retrieval/                     clip_benchmark wds retrieval set (validation pairs)
    splits.json                        which base emoji (group) went to which split
    ATTRIBUTION.txt, manifest.json     licence line; counts, paths, source and build stamp

A directory whose manifest carries the same stamp (builder version + source + settings) is
reused as is; ``--force`` rebuilds. Builds go to a temporary sibling and replace the directory
only when complete, so an interrupted build never looks finished.
"""
import argparse
import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from open_clip_patch.digits_data import (CaptionedImage, load_digit_items, write_digits_shards,
                                         write_img2dataset_shards)

BUILDER_VERSION = 1  # bump when the output of a build changes for the same inputs
DEFAULT_OUT_DIR = Path("build/demo/data")
DEFAULT_CACHE_DIR = Path("build/cache")
SOURCES = ("auto", "twemoji", "digits")
SPLITS = ("train", "val", "heldout")

TWEMOJI_PACKAGE = "emoji-datasource-twitter@16.0.0"
TWEMOJI_TARBALL = "emoji-datasource-twitter-16.0.0.tgz"
# npm's published integrity for the tarball; `npm view emoji-datasource-twitter@16.0.0 dist`.
TWEMOJI_INTEGRITY = ("sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZ"
                     "ewWg8jBbuL2eyELQ==")
TWEMOJI_IMAGE_DIR = "package/img/twitter/64/"
TWEMOJI_ATTRIBUTION = (
    "Emoji images: Twemoji (c) Twitter, Inc. and other contributors, CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), from the npm package "
    "emoji-datasource-twitter@16.0.0, composited onto white and resized; emoji names and "
    "categories: emoji-datasource (c) Cal Henderson, MIT licence.")
DIGITS_ATTRIBUTION = (
    "Digit images: scikit-learn's load_digits, a copy of the UCI ML 'Optical Recognition of "
    "Handwritten Digits' test set (E. Alpaydin, C. Kaynak), CC-BY 4.0; upscaled, captioned.")
SKIN_TONE_WORDS = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
                   "1F3FE": "medium-dark", "1F3FF": "dark"}
EMOJI_TEMPLATES = ("an emoji of {c}.", "an emoji in the category {c}.", "a {c} emoji.")
DIGIT_TEMPLATES = ("a photo of the digit {c}.", "a handwritten digit {c}.")


class DataUnavailable(RuntimeError):
    """The source cannot be obtained here (no npm, no network); the caller may fall back."""


@dataclass
class DemoSource:
    """Items carry ``meta["group"]`` (the unit of splitting) and ``meta["label"]`` (a class)."""
    name: str
    items: list
    classnames: list
    templates: tuple
    attribution: str
    provenance: dict


# ---------------------------------------------------------------- fetching the npm tarball

def sri_integrity(path):
    """npm's subresource-integrity string (sha512, base64) of a file."""
    digest = hashlib.sha512(Path(path).read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _npm_error_summary(stderr, returncode):
    errors = [line.strip() for line in stderr.splitlines() if "error" in line.lower()]
    return "; ".join(errors[:2]) if errors else f"exit status {returncode}"


def fetch_twemoji_tarball(cache_dir=DEFAULT_CACHE_DIR, npm="npm", timeout_s=300):
    """Return the cached, integrity-checked Twemoji tarball, running ``npm pack`` if needed.

    Raises DataUnavailable when npm is missing or cannot fetch, ValueError when the fetched
    tarball does not match the pinned integrity (never a silent fallback for that).
    """
    cache_dir = Path(cache_dir).resolve()  # npm runs inside it, so relative paths would move
    target = cache_dir / TWEMOJI_TARBALL
    if target.exists():
        if sri_integrity(target) == TWEMOJI_INTEGRITY:
            return target
        target.unlink()  # a partial or altered file: fetch it again
    executable = shutil.which(npm)
    if executable is None:
        raise DataUnavailable(f"'{npm}' is not on PATH")
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [executable, "pack", TWEMOJI_PACKAGE, "--pack-destination", str(cache_dir),
               "--fetch-retries=1", "--loglevel=error"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              cwd=cache_dir)
    except subprocess.TimeoutExpired:
        raise DataUnavailable(f"npm pack {TWEMOJI_PACKAGE} timed out after {timeout_s} s")
    if done.returncode != 0 or not target.exists():
        summary = _npm_error_summary(done.stderr, done.returncode)
        raise DataUnavailable(f"npm pack {TWEMOJI_PACKAGE} failed: {summary}")
    actual = sri_integrity(target)
    if actual != TWEMOJI_INTEGRITY:
        target.unlink()
        raise ValueError(f"{TWEMOJI_TARBALL} from npm has integrity {actual}, not the pinned "
                         f"{TWEMOJI_INTEGRITY}; refusing to use it")
    return target


# ---------------------------------------------------------------- Twemoji items

def read_twemoji_tarball(tarball):
    """(emoji.json entries, {image file name: 64 px PNG bytes}) from the npm tarball."""
    emoji, images = None, {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.name == "package/emoji.json":
                emoji = json.load(tar.extractfile(member))
            elif member.name.startswith(TWEMOJI_IMAGE_DIR) and member.name.endswith(".png"):
                images[member.name[len(TWEMOJI_IMAGE_DIR):]] = tar.extractfile(member).read()
    if emoji is None:
        raise ValueError(f"{tarball}: no package/emoji.json; not an emoji-datasource tarball")
    return emoji, images


def skin_tone_phrase(variation_code):
    """'1F3FB' -> 'light skin tone'; '1F3FB-1F3FF' (two people) -> 'light skin tone, dark ...'."""
    try:
        tones = [SKIN_TONE_WORDS[code.upper()] for code in variation_code.split("-")]
    except KeyError as error:
        raise ValueError(f"unknown skin-tone modifier {error} in {variation_code!r}") from None
    return ", ".join(f"{tone} skin tone" for tone in dict.fromkeys(tones))


def emoji_caption(name, variation_code=None):
    caption = f"an emoji of {' '.join(name.lower().split())}"
    return caption if variation_code is None else f"{caption}, {skin_tone_phrase(variation_code)}"


def emoji_classname(category):
    return category.lower().replace("&", "and")


def emoji_image(png, image_size):
    """Composite the RGBA emoji onto white first, so resizing never blends in hidden colours."""
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, "white")
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.LANCZOS)
    return rgb


def _emoji_variants(entry):
    """(variation code or None, image file name) for the base emoji and each skin variant."""
    variants = [(None, entry)] + sorted((entry.get("skin_variations") or {}).items())
    return [(code, info["image"]) for code, info in variants if info.get("has_img_twitter")]


def twemoji_demo_source(tarball, image_size=32):
    """Every Twemoji image of the tarball as a captioned item, in emoji sort order."""
    emoji, images = read_twemoji_tarball(tarball)
    emoji = sorted(emoji, key=lambda entry: (entry["sort_order"], entry["unified"]))
    categories = list(dict.fromkeys(entry["category"] for entry in emoji))
    items = []
    for entry in emoji:
        for code, file_name in _emoji_variants(entry):
            if file_name not in images:
                raise ValueError(f"{tarball}: emoji.json lists {file_name} but the tarball lacks it")
            meta = {"group": entry["unified"], "label": categories.index(entry["category"]),
                    "name": entry["name"], "category": entry["category"],
                    "subcategory": entry["subcategory"], "skin_tone": code,
                    "image_file": file_name}
            items.append(CaptionedImage(emoji_image(images[file_name], image_size),
                                        emoji_caption(entry["name"], code), meta))
    provenance = {"package": TWEMOJI_PACKAGE, "integrity": sri_integrity(tarball),
                  "emoji": len(emoji)}
    return DemoSource("twemoji", items, [emoji_classname(c) for c in categories],
                      EMOJI_TEMPLATES, TWEMOJI_ATTRIBUTION, provenance)


def digits_demo_source(image_size=32, name="digits", fallback_reason=None):
    """The 1,797 digits as demo items; each digit image is its own group."""
    items = [CaptionedImage(item.image, item.caption,
                            {**item.meta, "group": f"digit-{item.meta['row']:04d}"})
             for item in load_digit_items(image_size)]
    provenance = {"dataset": "sklearn.datasets.load_digits", "fallback_reason": fallback_reason}
    return DemoSource(name, items, [str(d) for d in range(10)], DIGIT_TEMPLATES,
                      DIGITS_ATTRIBUTION, provenance)


# ---------------------------------------------------------------- splitting and writing

def _round_half_up(value):
    return int(np.floor(value + 0.5))


def split_groups(group_strata, heldout_fraction=0.2, val_fraction=0.1, seed=0):
    """Assign each group to "train", "val" or "heldout", stratified by its stratum (category).

    Each stratum draws its own permutation from (seed, crc32 of the stratum), so the split of
    one category does not depend on the others; every stratum keeps at least one train group.
    """
    by_stratum = defaultdict(list)
    for group, stratum in group_strata.items():
        by_stratum[stratum].append(group)
    assignment = {}
    for stratum, groups in by_stratum.items():
        groups = sorted(groups)
        rng = np.random.default_rng([seed, zlib.crc32(str(stratum).encode())])
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        n_heldout = min(_round_half_up(heldout_fraction * len(groups)), len(groups) - 1)
        n_val = max(0, min(_round_half_up(val_fraction * len(groups)),
                           len(groups) - 1 - n_heldout))
        for position, group in enumerate(shuffled):
            split = "heldout" if position < n_heldout else (
                "val" if position < n_heldout + n_val else "train")
            assignment[group] = split
    return assignment


def _wds_set_writers():
    try:
        from eval.wds_sets import write_classification_set, write_retrieval_set
    except ImportError as error:
        raise ImportError("demo data needs eval/wds_sets.py: run from the repository root "
                          f"({error})") from None
    return write_classification_set, write_retrieval_set


def write_demo_dataset(out_dir, source, *, num_shards=4, seed=0, heldout_fraction=0.2,
                       val_fraction=0.1):
    """Split ``source`` and write train shards, the three eval sets and metadata; -> manifest."""
    write_classification_set, write_retrieval_set = _wds_set_writers()
    out_dir = Path(out_dir)
    strata = {item.meta["group"]: item.meta["label"] for item in source.items}
    split_of = split_groups(strata, heldout_fraction, val_fraction, seed)
    parts = {split: [item for item in source.items if split_of[item.meta["group"]] == split]
             for split in SPLITS}
    train = write_img2dataset_shards(out_dir / "train", parts["train"], num_shards)
    for split, set_name in (("heldout", "heldout_retrieval"), ("val", "val_retrieval")):
        write_retrieval_set(out_dir / set_name, [item.image for item in parts[split]],
                            [item.caption for item in parts[split]])
    write_classification_set(out_dir / "heldout_zeroshot", [i.image for i in parts["heldout"]],
                             [i.meta["label"] for i in parts["heldout"]], source.classnames,
                             list(source.templates))
    groups = {split: sorted(g for g, s in split_of.items() if s == split) for split in SPLITS}
    (out_dir / "splits.json").write_text(json.dumps(groups, indent=1))
    (out_dir / "ATTRIBUTION.txt").write_text(source.attribution + "\n")
    return {
        "source": source.name, "provenance": source.provenance, "attribution": source.attribution,
        "image_size": source.items[0].image.size[0], "seed": seed,
        "counts": {split: {"groups": len(groups[split]), "samples": len(parts[split])}
                   for split in SPLITS},
        "train": {"pattern": str(Path(train.pattern).relative_to(out_dir)),
                  "num_samples": train.num_samples, "id_space": train.id_space,
                  "num_shards": num_shards},
        "eval_sets": {"heldout_retrieval": "heldout_retrieval",
                      "heldout_zeroshot": "heldout_zeroshot", "val_retrieval": "val_retrieval"},
        "classnames": source.classnames, "templates": list(source.templates),
    }


# ---------------------------------------------------------------- cached builds

def demo_stamp(source_name, source_identity, settings):
    """Content hash of everything that determines a build's output."""
    key = {"builder": BUILDER_VERSION, "source": source_name, "identity": source_identity,
           **settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_current_manifest(out_dir, stamp):
    """The manifest of a finished build with this stamp, else None."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("stamp") != stamp:
        return None
    return {**manifest, "root": str(Path(out_dir).resolve()), "rebuilt": False}


def _check_replaceable(out_dir):
    # Only ever delete a directory this module wrote (it has manifest.json) or an empty one.
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise FileExistsError(f"{out_dir} exists and is not a demo data directory (no "
                              "manifest.json); refusing to replace it")


def _build(out_dir, stamp, make_source, settings):
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    started = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        source = make_source()
        manifest = write_demo_dataset(staging, source, **settings)
        manifest.update(stamp=stamp, build_seconds=round(time.perf_counter() - started, 1))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, "root": str(out_dir.resolve()), "rebuilt": True}


def _build_or_reuse(out_dir, stamp, make_source, settings, force):
    current = None if force else read_current_manifest(out_dir, stamp)
    return current or _build(out_dir, stamp, make_source, settings)


def build_demo_data(out_dir=DEFAULT_OUT_DIR, source="auto", *, image_size=32, num_shards=4,
                    seed=0, heldout_fraction=0.2, val_fraction=0.1, force=False,
                    cache_dir=DEFAULT_CACHE_DIR, npm="npm", twemoji_tarball=None):
    """Build (or reuse) the demo data under ``out_dir``; returns the manifest plus ``root``.

    ``source``: "twemoji", "digits", or "auto" (Twemoji, else the digits fallback with a one-line
    notice). ``twemoji_tarball`` replaces the npm fetch with a given tarball (tests).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    settings = dict(num_shards=num_shards, seed=seed, heldout_fraction=heldout_fraction,
                    val_fraction=val_fraction)
    stamp_settings = {**settings, "image_size": image_size}
    if source in ("auto", "twemoji"):
        identity = TWEMOJI_INTEGRITY if twemoji_tarball is None else sri_integrity(twemoji_tarball)
        stamp = demo_stamp("twemoji", identity, stamp_settings)
        current = None if force else read_current_manifest(out_dir, stamp)
        if current:
            return current
        try:
            tarball = twemoji_tarball or fetch_twemoji_tarball(cache_dir, npm=npm)
        except DataUnavailable as error:
            if source == "twemoji":
                raise
            print(f"demo data: Twemoji unavailable ({error}); using the scikit-learn digits "
                  "fallback", file=sys.stderr)
            stamp = demo_stamp("digits-fallback", "load_digits", stamp_settings)
            return _build_or_reuse(out_dir, stamp, lambda: digits_demo_source(
                image_size, "digits-fallback", str(error)), settings, force)
        return _build(out_dir, stamp, lambda: twemoji_demo_source(tarball, image_size), settings)
    stamp = demo_stamp("digits", "load_digits", stamp_settings)
    return _build_or_reuse(out_dir, stamp, lambda: digits_demo_source(image_size), settings, force)


# ---------------------------------------------------------------- command line

def _add_demo_flags(parser):
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--num-shards", type=int, default=4, help="train shards to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the emoji split")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the npm tarball is kept")
    parser.add_argument("--npm", default="npm", help="npm executable")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m open_clip_patch.demo_data",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="demo data from --source (default auto)")
    _add_demo_flags(demo)
    demo.add_argument("--source", choices=SOURCES, default="auto",
                      help="auto = Twemoji, falling back to digits when npm cannot fetch it")
    _add_demo_flags(commands.add_parser("twemoji", help="demo data from Twemoji, no fallback"))
    digits = commands.add_parser("digits", help="digits train shards for the trainer tests")
    digits.add_argument("--out", type=Path, required=True, help="output directory")
    digits.add_argument("--num-shards", type=int, default=2, help="shards to write")
    digits.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    digits.add_argument("--num-samples", type=int, default=None, help="first N digits only")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "digits":
            shards = write_digits_shards(args.out, args.num_shards, args.image_size,
                                         num_samples=args.num_samples)
            print(json.dumps({"train_data": shards.pattern, "num_samples": shards.num_samples,
                              "data_size": shards.id_space}))
            return 0
        source = "twemoji" if args.command == "twemoji" else args.source
        manifest = build_demo_data(args.out, source, image_size=args.image_size,
                                   num_shards=args.num_shards, seed=args.seed, force=args.force,
                                   cache_dir=args.cache_dir, npm=args.npm)
    except (DataUnavailable, ValueError, FileExistsError) as error:
        print(f"demo_data: error: {error}", file=sys.stderr)
        return 1
    summary = {key: manifest[key] for key in ("root", "source", "rebuilt", "counts", "train")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
