"""Captioned images and the img2dataset-style shard writer every demo data source uses.

Shards follow the layout OpenCLIP reads after img2dataset::

    OUT/00000.tar, 00001.tar, ...   samples <key>.png (RGB), <key>.txt (caption),
                                    <key>.json {"key", "caption", **meta}
    OUT/sizes.json                  {"00000.tar": count, ...}: OpenCLIP's dataset size
    OUT/00000_stats.json, ...       img2dataset's per-shard counts (input rows vs written)

Keys follow img2dataset: a 9-digit string equal to ``shard * 10**4 + row_in_shard``, and the
same integer is the per-sample id (docs/algorithm.md §6). The id space (what ``--data-size``
should be) counts every planned row, written or not, so it is larger than the number of samples.

A source family (``digits.py``, ``twemoji.py``) turns its raw data into a :class:`DemoSource`
of :class:`CaptionedImage` items; ``build.py`` splits it and writes it with
:func:`write_img2dataset_shards`. ``skip_every``, ``rogue_key`` and :func:`truncate_shard` make
the broken-data cases the trainer must reject or survive (see ``digits.write_digits_shards``).
"""
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

KEY_WIDTH = 9  # img2dataset: 4 digits of row (10,000 samples per shard) + 5 digits of shard
ROWS_PER_SHARD_STRIDE = 10_000


@dataclass(frozen=True)
class CaptionedImage:
    """One training pair plus the extra fields its ``.json`` carries (label, name, ...)."""
    image: Image.Image
    caption: str
    meta: dict = field(default_factory=dict)


@dataclass
class DemoSource:
    """What a source family hands the builder. Items carry ``meta["group"]`` (the unit of
    splitting: an emoji with all its skin tones) and ``meta["label"]`` (a class index)."""
    name: str
    items: list
    classnames: list
    templates: tuple
    attribution: str
    provenance: dict


@dataclass
class ShardSet:
    """What :func:`write_img2dataset_shards` wrote; ``id_space`` is the ``--data-size`` to use."""
    out_dir: Path
    paths: list
    num_samples: int
    id_space: int
    captions: dict  # integer id -> caption, for every sample written (rogue one included)
    labels: dict  # integer id -> integer label
    rogue_key: int = None

    @property
    def pattern(self):
        """Brace pattern for ``--train-data``, e.g. ``DIR/{00000..00001}.tar``."""
        names = sorted(p.stem for p in self.paths)
        inner = names[0] if len(names) == 1 else "{%s..%s}" % (names[0], names[-1])
        return str(self.out_dir / f"{inner}.tar")


def img2dataset_key(shard_index, row):
    if not 0 <= row < ROWS_PER_SHARD_STRIDE:
        raise ValueError(f"row {row} does not fit img2dataset's {ROWS_PER_SHARD_STRIDE} per shard")
    return f"{shard_index * ROWS_PER_SHARD_STRIDE + row:0{KEY_WIDTH}d}"


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _add_member(tar, name, data):
    # Fixed metadata so rebuilding the same data gives byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path, keyed_items):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, item in keyed_items:
            record = {"key": key, "caption": item.caption, **item.meta}
            _add_member(tar, f"{key}.png", png_bytes(item.image))
            _add_member(tar, f"{key}.txt", item.caption.encode())
            _add_member(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode())


def _balanced_row_counts(num_items, num_shards):
    if num_shards < 1 or num_items < num_shards:
        raise ValueError(f"cannot spread {num_items} samples over {num_shards} shards")
    base, extra = divmod(num_items, num_shards)
    counts = [base + (i < extra) for i in range(num_shards)]
    if counts[0] > ROWS_PER_SHARD_STRIDE:
        raise ValueError(f"{counts[0]} samples per shard exceeds {ROWS_PER_SHARD_STRIDE}")
    return counts


def write_img2dataset_shards(out_dir, items, num_shards, *, skip_every=0, rogue_key=None):
    """Write ``items`` (CaptionedImage, in order) as img2dataset-style shards into ``out_dir``.

    Items are spread evenly over the shards; item i keeps its planned key whether or not it is
    written, so ``skip_every=k`` (drop every k-th item, as failed downloads) leaves gaps and the
    id space still counts them. ``rogue_key`` appends one extra sample (a copy of item 0) with
    that integer key to the last shard; it must lie outside the id space.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = _balanced_row_counts(len(items), num_shards)
    id_space = (num_shards - 1) * ROWS_PER_SHARD_STRIDE + counts[-1]
    if rogue_key is not None and 0 <= rogue_key < id_space:
        raise ValueError(f"rogue_key {rogue_key} lies inside the id space [0, {id_space})")
    record = ShardSet(out_dir, [], 0, id_space, {}, {}, rogue_key)
    sizes, start = {}, 0
    for shard_index, count in enumerate(counts):
        planned = [(img2dataset_key(shard_index, row), items[start + row]) for row in range(count)]
        kept = [p for i, p in enumerate(planned, start) if not skip_every or (i + 1) % skip_every]
        written = list(kept)
        if rogue_key is not None and shard_index == num_shards - 1:
            written.append((f"{rogue_key:0{KEY_WIDTH}d}", items[0]))
        path = out_dir / f"{shard_index:05d}.tar"
        _write_shard(path, written)
        stats = {"count": count, "successes": len(kept), "failed_to_download": count - len(kept),
                 "failed_to_resize": 0}
        (out_dir / f"{shard_index:05d}_stats.json").write_text(json.dumps(stats, indent=1))
        sizes[path.name] = len(written)
        for key, item in written:
            record.captions[int(key)] = item.caption
            record.labels[int(key)] = item.meta.get("label")
        record.paths.append(path)
        start += count
    record.num_samples = sum(sizes.values())
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
    return record


def truncate_shard(path):
    """Cut a tar shard off in the middle of one sample's data, as an interrupted copy would."""
    path = Path(path)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    middle = members[len(members) // 2]
    cut = middle.offset_data + max(1, middle.size // 2)
    with open(path, "r+b") as handle:
        handle.truncate(cut)
    return cut
