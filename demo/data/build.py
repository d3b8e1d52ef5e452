"""Demo data: a source's captioned images split into train shards and clip_benchmark eval sets.

``build_demo_data`` turns a source into the demo directory. ``--source auto`` (the default)
builds the ten-set pool (``pool.py``, which documents its own layout) and falls back to digits,
with a banner on stderr and ``"source": "digits-fallback"`` in the manifest, when ``npm pack``
cannot fetch the packages; ``pool`` and ``twemoji`` insist on their data. For the Twemoji and
digits sources, groups (an emoji with all its skin-tone variants) are split stratified by label
(category): held-out (~20%, final evaluation only), validation (~10%, for tuning) and train (the
rest). Their demo directory holds::

    train/{00000..N}.tar, sizes.json   img2dataset-style train shards (keys = per-sample ids)
    heldout_retrieval/                 clip_benchmark wds retrieval set (held-out pairs)
    heldout_zeroshot/                  clip_benchmark wds classification set: the labels
    val_retrieval/                     clip_benchmark wds retrieval set (validation pairs)
    splits.json                        which group went to which split
    ATTRIBUTION.txt, manifest.json     licence line; counts, paths, source and build stamp

A directory whose manifest carries the same stamp (builder version + source + settings) is
reused as is; ``--force`` rebuilds. Builds go to a temporary sibling and replace the directory
only when complete, so an interrupted build never looks finished. Commands::

    python -m demo.data demo --out build/demo/data [--source auto] [--train-pairs N] [--force]
    python -m demo.data twemoji --out build/demo/data [--image-size 32] [--force]
"""
import hashlib
import json
import shutil
import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from demo.data.digits import digits_demo_source
from demo.data.npm import DEFAULT_CACHE_DIR, DataUnavailable, fetch_npm_tarball, sri_integrity
from demo.data.packages import PACKAGES
from demo.data.pool import pool_dataset
from demo.data.shards import write_img2dataset_shards
from demo.data.twemoji import TWEMOJI, fetch_twemoji_tarball, twemoji_demo_source
from eval.wds_sets import write_classification_set, write_retrieval_set

BUILDER_VERSION = 1  # bump when the output of a build changes for the same inputs
DEFAULT_OUT_DIR = Path("build/demo/data")
SOURCES = ("auto", "pool", "twemoji", "digits")
DEFAULT_POOL_IMAGE_SIZE = 64
SPLITS = ("train", "val", "heldout")


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


def write_demo_dataset(out_dir, source, *, num_shards=4, seed=0, heldout_fraction=0.2,
                       val_fraction=0.1):
    """Split ``source`` and write train shards, the three eval sets and metadata; -> manifest."""
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


def _build(out_dir, stamp, write):
    """Run ``write(staging_dir) -> manifest`` in a temporary sibling, then swap it in."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    started = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = write(staging)
        manifest.update(stamp=stamp, build_seconds=round(time.perf_counter() - started, 1))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**manifest, "root": str(out_dir.resolve()), "rebuilt": True}


def _source_writer(make_source, settings):
    return lambda staging: write_demo_dataset(staging, make_source(), **settings)


def _build_or_reuse(out_dir, stamp, write, force):
    current = None if force else read_current_manifest(out_dir, stamp)
    return current or _build(out_dir, stamp, write)


def announce_fallback(wanted, error):
    """The loud notice of the digits fallback: a banner on stderr, not a line lost in a log."""
    rule = "!" * 78
    print(f"{rule}\ndemo data: {wanted} unavailable ({error})\n"
          "demo data: FALLING BACK TO THE SCIKIT-LEARN DIGITS; the figures will not be the "
          f"demo's\n{rule}", file=sys.stderr)


def _digits_fallback(out_dir, wanted, error, image_size, settings, stamp_settings, force):
    announce_fallback(wanted, error)
    stamp = demo_stamp("digits-fallback", "load_digits", stamp_settings)
    return _build_or_reuse(out_dir, stamp, _source_writer(lambda: digits_demo_source(
        image_size, "digits-fallback", str(error)), settings), force)


def _pool_build(out_dir, source, pool_options, settings, force, cache_dir, npm):
    """The pool (pool.py) from the pinned npm packages, or the digits fallback for "auto"."""
    image_size = pool_options["image_size"]
    stamp_settings = {"seed": settings["seed"], "image_size": image_size,
                      "train_pairs": pool_options["train_pairs"]}
    stamp = demo_stamp("pool", {k: p.npm.integrity for k, p in PACKAGES.items()}, stamp_settings)
    current = None if force else read_current_manifest(out_dir, stamp)
    if current:
        return current
    try:
        tarballs = {key: fetch_npm_tarball(package.npm, cache_dir, npm=npm)
                    for key, package in PACKAGES.items()}
    except DataUnavailable as error:
        if source == "pool":
            raise
        return _digits_fallback(out_dir, "the npm image sets", error, image_size, settings,
                                stamp_settings, force)
    return _build(out_dir, stamp, lambda staging: pool_dataset(
        staging, tarballs, seed=settings["seed"], cache_dir=cache_dir, **pool_options))


def build_demo_data(out_dir=DEFAULT_OUT_DIR, source="auto", *, image_size=None, num_shards=4,
                    seed=0, heldout_fraction=0.2, val_fraction=0.1, force=False,
                    cache_dir=DEFAULT_CACHE_DIR, npm="npm", twemoji_tarball=None,
                    train_pairs=None, jobs=2, show_progress=True):
    """Build (or reuse) the demo data under ``out_dir``; returns the manifest plus ``root``.

    ``source``: "pool" (pool.py, 64 px), "twemoji" (32 px), "digits", or "auto" (the pool, else
    the digits fallback with a loud notice). ``train_pairs`` draws that many training pairs of
    the pool (``make demo``'s subset); ``jobs`` rasterising processes. ``twemoji_tarball``
    replaces the npm fetch with a given tarball (tests). Fractions and ``num_shards`` are the
    Twemoji / digits builds' (the pool fixes its own, pool.py).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    image_size = image_size or (DEFAULT_POOL_IMAGE_SIZE if source in ("auto", "pool") else 32)
    settings = dict(num_shards=num_shards, seed=seed, heldout_fraction=heldout_fraction,
                    val_fraction=val_fraction)
    stamp_settings = {**settings, "image_size": image_size}
    if source in ("auto", "pool"):
        pool_options = dict(image_size=image_size, train_pairs=train_pairs, jobs=jobs,
                            show_progress=show_progress)
        return _pool_build(out_dir, source, pool_options, settings, force, cache_dir, npm)
    if source == "twemoji":
        identity = TWEMOJI.integrity if twemoji_tarball is None else sri_integrity(twemoji_tarball)
        stamp = demo_stamp("twemoji", identity, stamp_settings)
        current = None if force else read_current_manifest(out_dir, stamp)
        if current:
            return current
        tarball = twemoji_tarball or fetch_twemoji_tarball(cache_dir, npm=npm)
        return _build(out_dir, stamp, _source_writer(
            lambda: twemoji_demo_source(tarball, image_size), settings))
    stamp = demo_stamp("digits", "load_digits", stamp_settings)
    return _build_or_reuse(out_dir, stamp, _source_writer(lambda: digits_demo_source(image_size),
                                                          settings), force)
