"""Twemoji caption pairs: every image of the npm package ``emoji-datasource-twitter@16.0.0``.

The tarball is fetched by ``npm pack`` into ``build/cache`` and checked against the sha512
integrity pinned below (``npm.py``). Every emoji image (base and skin-tone variants, 3,786 PNGs
at 64 px) is composited onto white, resized, and captioned from its name ("an emoji of crossed
swords", "an emoji of waving hand sign, dark skin tone"); its group is the base emoji, so an
emoji and all its skin-tone variants land on the same side of the split, and its label is the
emoji's category. ``build.py`` splits and writes it::

    python -m demo.data twemoji --out build/demo/data [--image-size 32] [--force]
"""
import io
import json
import tarfile

from PIL import Image

from demo.data.npm import DEFAULT_CACHE_DIR, NpmPackage, fetch_npm_tarball, sri_integrity
from demo.data.shards import CaptionedImage, DemoSource

TWEMOJI = NpmPackage(
    "emoji-datasource-twitter@16.0.0", "emoji-datasource-twitter-16.0.0.tgz",
    # npm's published integrity for the tarball; `npm view emoji-datasource-twitter@16.0.0 dist`.
    "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZ"
    "ewWg8jBbuL2eyELQ==")
TWEMOJI_IMAGE_DIR = "package/img/twitter/64/"
TWEMOJI_ATTRIBUTION = (
    "Emoji images: Twemoji (c) Twitter, Inc. and other contributors, CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), from the npm package "
    "emoji-datasource-twitter@16.0.0, composited onto white and resized; emoji names and "
    "categories: emoji-datasource (c) Cal Henderson, MIT licence.")
SKIN_TONE_WORDS = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
                   "1F3FE": "medium-dark", "1F3FF": "dark"}
EMOJI_TEMPLATES = ("an emoji of {c}.", "an emoji in the category {c}.", "a {c} emoji.")


def fetch_twemoji_tarball(cache_dir=DEFAULT_CACHE_DIR, npm="npm", timeout_s=300):
    """The cached, integrity-checked Twemoji tarball (see ``npm.fetch_npm_tarball``)."""
    return fetch_npm_tarball(TWEMOJI, cache_dir, npm=npm, timeout_s=timeout_s)


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
                raise ValueError(f"{tarball}: emoji.json lists {file_name} but the tarball "
                                 "lacks it")
            meta = {"group": entry["unified"], "label": categories.index(entry["category"]),
                    "name": entry["name"], "category": entry["category"],
                    "subcategory": entry["subcategory"], "skin_tone": code,
                    "image_file": file_name}
            items.append(CaptionedImage(emoji_image(images[file_name], image_size),
                                        emoji_caption(entry["name"], code), meta))
    provenance = {"package": TWEMOJI.spec, "integrity": sri_integrity(tarball),
                  "emoji": len(emoji)}
    return DemoSource("twemoji", items, [emoji_classname(c) for c in categories],
                      EMOJI_TEMPLATES, TWEMOJI_ATTRIBUTION, provenance)
