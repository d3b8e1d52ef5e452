"""scikit-learn digits: train shards for the trainer tests, and the demo's offline fallback.

``load_digits`` ships inside the scikit-learn wheel (1,797 8×8 images), so these build offline in
about a second. The shards follow ``shards.py``'s img2dataset layout; each ``.json`` carries
``{"key", "caption", "label", "row"}``. The three broken-data cases the trainer must reject or
survive are arguments of :func:`write_digits_shards`: ``skip_every`` (gaps in the id space, like
download failures), ``rogue_key`` (one sample whose id lies outside the id space) and
``truncate_shard_index`` (a shard cut off mid-sample). The plain version::

    python -m demo.data digits --out build/digits [--num-shards 2] [--num-samples N]
"""
import numpy as np
from PIL import Image

from demo.data.shards import (CaptionedImage, DemoSource, truncate_shard,
                              write_img2dataset_shards)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# A little variety so a class is not a single caption; chosen by row, so it is deterministic.
DIGIT_CAPTION_TEMPLATES = (
    "a photo of the digit {digit}",
    "a handwritten digit {digit}",
    "a photo of the number {word}",
    "the number {word}, written by hand",
)
# Zero-shot templates of the demo's held-out classification set.
DIGIT_TEMPLATES = ("a photo of the digit {c}.", "a handwritten digit {c}.")
DIGITS_ATTRIBUTION = (
    "Digit images: scikit-learn's load_digits, a copy of the UCI ML 'Optical Recognition of "
    "Handwritten Digits' test set (E. Alpaydin, C. Kaynak), CC-BY 4.0; upscaled, captioned.")


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


def digits_demo_source(image_size=32, name="digits", fallback_reason=None):
    """The 1,797 digits as demo items; each digit image is its own group."""
    items = [CaptionedImage(item.image, item.caption,
                            {**item.meta, "group": f"digit-{item.meta['row']:04d}"})
             for item in load_digit_items(image_size)]
    provenance = {"dataset": "sklearn.datasets.load_digits", "fallback_reason": fallback_reason}
    return DemoSource(name, items, [str(d) for d in range(10)], DIGIT_TEMPLATES,
                      DIGITS_ATTRIBUTION, provenance)
