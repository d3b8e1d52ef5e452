"""scikit-learn digits as img2dataset-style webdataset shards, for the trainer tests.

``load_digits`` ships inside the scikit-learn wheel (1,797 8×8 images), so these shards build
offline in about a second. They follow the layout OpenCLIP reads after img2dataset::

    OUT/00000.tar, 00001.tar, ...   samples <key>.png (RGB), <key>.txt (caption),
                                    <key>.json {"key", "caption", "label", "row"}
    OUT/sizes.json                  {"00000.tar": count, ...}: OpenCLIP's dataset size
    OUT/00000_stats.json, ...       img2dataset's per-shard counts (input rows vs written)

Keys follow img2dataset: a 9-digit string equal to ``shard * 10**4 + row_in_shard``, and the
same integer is the per-sample id (design §5). The id space (what ``--data-size`` should be)
counts every planned row, written or not, so it is larger than the number of samples.

The three broken-data cases the trainer must reject or survive are arguments of
:func:`write_digits_shards`: ``skip_every`` (gaps in the id space, like download failures),
``rogue_key`` (one sample whose id lies outside the id space) and ``truncate_shard``
(a shard cut off mid-sample). ``python -m open_clip_patch.demo_data digits --out DIR`` writes
the plain version. The Twemoji demo (``demo_data.py``) reuses the shard writer below.
"""
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

KEY_WIDTH = 9  # img2dataset: 4 digits of row (10,000 samples per shard) + 5 digits of shard
ROWS_PER_SHARD_STRIDE = 10_000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# A little variety so a class is not a single caption; chosen by row, so it is deterministic.
DIGIT_CAPTION_TEMPLATES = (
    "a photo of the digit {digit}",
    "a handwritten digit {digit}",
    "a photo of the number {word}",
    "the number {word}, written by hand",
)


@dataclass(frozen=True)
class CaptionedImage:
    """One training pair plus the extra fields its ``.json`` carries (label, name, ...)."""
    image: Image.Image
    caption: str
    meta: dict = field(default_factory=dict)


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


def digit_caption(label, row):
    template = DIGIT_CAPTION_TEMPLATES[row % len(DIGIT_CAPTION_TEMPLATES)]
    return template.format(digit=label, word=DIGIT_WORDS[label])


def digit_image(pixels_8x8, image_size):
    """Dark ink on white (like the emoji), RGB, upscaled smoothly to image_size."""
    ink = np.asarray(pixels_8x8, dtype=np.float64) / 16.0  # load_digits values are 0..16
    gray = Image.fromarray(np.round(255 * (1 - ink)).astype(np.uint8), mode="L")
    return gray.convert("RGB").resize((image_size, image_size), Image.BILINEAR)


def load_digit_items(image_size=32, num_samples=None, unique_captions=False):
    """The first ``num_samples`` (default all 1,797) digits as CaptionedImage in dataset order.

    ``unique_captions`` appends the row number, so every caption names exactly one sample.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    total = len(digits.target)
    count = total if num_samples is None else num_samples
    if not 1 <= count <= total:
        raise ValueError(f"num_samples must be in [1, {total}], got {num_samples}")
    items = []
    for row in range(count):
        label = int(digits.target[row])
        caption = digit_caption(label, row) + (f", sample {row}" if unique_captions else "")
        items.append(CaptionedImage(digit_image(digits.images[row], image_size), caption,
                                    {"label": label, "row": row}))
    return items


def write_digits_shards(out_dir, num_shards=2, image_size=32, *, num_samples=None, skip_every=0,
                        rogue_key=None, truncate_shard_index=None, unique_captions=False):
    """Write digits shards into ``out_dir`` and return their :class:`ShardSet`.

    Failure cases for tests: ``skip_every`` (id gaps), ``rogue_key`` (one id outside the id
    space; ``record.id_space`` is a convenient choice) and ``truncate_shard_index`` (that shard
    is cut mid-sample after writing; sizes.json still states its full count).
    """
    items = load_digit_items(image_size, num_samples, unique_captions)
    record = write_img2dataset_shards(out_dir, items, num_shards, skip_every=skip_every,
                                      rogue_key=rogue_key)
    if truncate_shard_index is not None:
        truncate_shard(record.paths[truncate_shard_index])
    return record
