"""Write test sets in the webdataset layout that clip_benchmark 1.6.2 reads offline.

clip_benchmark's ``build_wds_dataset`` (``--dataset wds/<name> --dataset_root DIR``) reads::

    DIR/<split>/nshards.txt                 number of shards N
    DIR/<split>/0.tar ... (N-1).tar         samples: <key>.png + <key>.cls (classification)
                                                     or <key>.png + <key>.txt (retrieval)
    DIR/classnames.txt                      one class name per line, line i = label i
    DIR/zeroshot_classification_templates.txt   one template per line, "{c}" marks the class
    DIR/dataset_type.txt                    "retrieval" for caption sets (absent = classification)

This is also the layout of DataComp's ``wds_<task>_test`` directories. Use::

    write_classification_set("out/digits", images, labels, ["zero", ...], ["a photo of {c}."])
    write_retrieval_set("out/captions", images, ["a photo of the digit 3", ...])
    write_winogavil_set("out/wino", cues, candidate_image_lists, association_index_lists)

``images`` are PIL images (or bytes already encoded in ``image_format``); keys are ``s0000000``,
``s0000001``, ... in input order, so sample i of the set is ``images[i]``.
"""
import io
import json
import os
from pathlib import Path

import numpy as np
import webdataset as wds

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def _encode_image(image, image_format):
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    buffer = io.BytesIO()
    save_kwargs = {"lossless": True} if image_format == "webp" else {}
    image.save(buffer, format=IMAGE_FORMATS[image_format], **save_kwargs)
    return buffer.getvalue()


def _encode_npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_lines(path, lines):
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path.name}: entry {line!r} contains a newline")
    path.write_text("".join(line + "\n" for line in lines))


def _write_shards(root, split, samples, max_count):
    """Write (key -> payload dict) samples into <root>/<split>/{0..N-1}.tar and nshards.txt."""
    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob("*.tar"):
        stale.unlink()
    n_shards, writer, in_shard = 0, None, max_count
    for sample in samples:
        if in_shard == max_count:
            if writer is not None:
                writer.close()
            writer = wds.TarWriter(str(split_dir / f"{n_shards}.tar"), encoder=False)
            n_shards, in_shard = n_shards + 1, 0
        writer.write(sample)
        in_shard += 1
    if writer is None:
        raise ValueError(f"no samples to write under {split_dir}")
    writer.close()
    (split_dir / "nshards.txt").write_text(f"{n_shards}\n")
    return n_shards


def write_classification_set(root, images, labels, classnames, templates, *, split="test",
                             image_format="png", max_count=10_000, metadata=None):
    """Write a zero-shot classification set; returns the number of shards written.

    labels[i] is the integer class of images[i], an index into classnames.
    templates are strings with "{c}" where the class name goes, e.g. "a photo of a {c}.".
    metadata (optional): one integer row per image, stored as <key>.npy, the way DataComp's
    WILDS and fairness sets carry group ids (e.g. FMoW [region, year, label]).
    """
    images, labels = list(images), [int(label) for label in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if metadata is not None and len(metadata) != len(images):
        raise ValueError(f"{len(images)} images but {len(metadata)} metadata rows")
    bad = [label for label in labels if not 0 <= label < len(classnames)]
    if bad:
        raise ValueError(f"labels {sorted(set(bad))[:5]} outside [0, {len(classnames)})")
    missing = [t for t in templates if "{c}" not in t]
    if not templates or missing:
        raise ValueError(f"templates must be non-empty and contain '{{c}}'; bad: {missing[:3]}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r} not in {sorted(IMAGE_FORMATS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_lines(root / "classnames.txt", list(classnames))
    _write_lines(root / "zeroshot_classification_templates.txt", list(templates))
    type_file = root / "dataset_type.txt"
    if type_file.exists():
        type_file.unlink()
    samples = ({"__key__": f"s{i:07d}", image_format: _encode_image(image, image_format),
                "cls": str(label).encode()}
               for i, (image, label) in enumerate(zip(images, labels)))
    if metadata is not None:
        rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in metadata]
        samples = ({**sample, "npy": _encode_npy(row)} for sample, row in zip(samples, rows))
    return _write_shards(root, split, samples, max_count)


def write_retrieval_set(root, images, captions, *, split="test", image_format="png",
                        max_count=10_000):
    """Write an image-caption retrieval set; returns the number of shards written.

    captions[i] is a caption string, or a list of caption strings, for images[i].
    """
    images = list(images)
    captions = [[c] if isinstance(c, str) else list(c) for c in captions]
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} caption entries")
    empty = [i for i, caps in enumerate(captions) if not caps]
    if empty:
        raise ValueError(f"images {empty[:5]} have no caption")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r} not in {sorted(IMAGE_FORMATS)}")
    with_newline = [c for caps in captions for c in caps if "\n" in c or "\r" in c]
    if with_newline:
        raise ValueError(f"captions contain newlines: {with_newline[:3]}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    samples = ({"__key__": f"s{i:07d}", image_format: _encode_image(image, image_format),
                "txt": "\n".join(caps).encode()}
               for i, (image, caps) in enumerate(zip(images, captions)))
    return _write_shards(root, split, samples, max_count)


def write_winogavil_set(root, cues, candidates, associations, *, split="test",
                        image_format="png", max_count=10_000):
    """Write a WinoGAViL-style association set (this project's layout; DataComp reads it from HF).

    Instance i has a text cue cues[i], candidate images candidates[i] (a list of PIL images,
    stored as <key>.<j>.png) and associations[i], the indices of the candidates that match the
    cue (stored with the count of candidates in <key>.json).
    """
    if not len(cues) == len(candidates) == len(associations):
        raise ValueError(f"{len(cues)} cues, {len(candidates)} candidate lists, "
                         f"{len(associations)} association lists: lengths differ")
    for i, (images, assoc) in enumerate(zip(candidates, associations)):
        if not assoc or any(not 0 <= j < len(images) for j in assoc):
            raise ValueError(f"instance {i}: associations {assoc} must be a non-empty subset "
                             f"of candidate indices [0, {len(images)})")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("winogavil\n")

    def sample(i):
        meta = {"cue": cues[i], "n_candidates": len(candidates[i]),
                "associations": sorted(int(j) for j in associations[i])}
        images = {f"{j}.{image_format}": _encode_image(image, image_format)
                  for j, image in enumerate(candidates[i])}
        return {"__key__": f"s{i:07d}", "json": json.dumps(meta).encode(), **images}

    return _write_shards(root, split, (sample(i) for i in range(len(cues))), max_count)


def is_wds_set(root, split="test"):
    """True if root looks like a clip_benchmark wds set (has <split>/nshards.txt)."""
    return os.path.isfile(os.path.join(root, split, "nshards.txt"))
