"""One reader per package layout of the pool: tarball -> raw images with concept and caption.

A :class:`RawImage` is not decoded yet: PNG bytes (emoji-datasource) or an SVG document (every
other set), rasterised later by ``raster.py``. Its ``concept`` is what the splits keep together:
``emoji:<base codepoints>`` for every emoji set (so one emoji drawn by five sets is one concept)
and ``<set>:<name without style words>`` for an icon set (Tabler's outline and filled ``home``,
or Material Design's ``home`` and ``home-outline``, are one concept). What a reader leaves out
comes back as counts by reason (skin-tone variants, names without a CLDR match, brand logos).
"""
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass

from demo.data.captions import clean_words, make_caption, names_a_set
from demo.data.cldr import has_skin_tone

SVG_NS = "http://www.w3.org/2000/svg"
TONE_SUFFIX = re.compile(r"-(light|medium-light|medium|medium-dark|dark)(-skin-tone)?(?=-|$)")
# Iconify / Fluent slugs that name an emoji differently from CLDR (rule, not a list of names).
SLUG_RULES = ((re.compile(r"^flag-for-(flag-)?"), "flag-"),
              (re.compile(r"^digit-(zero|one|two|three|four|five|six|seven|eight|nine)$"),
               lambda m: "keycap-" + str("zero one two three four five six seven eight nine"
                                         .split().index(m.group(1)))))
FLUENT_STYLES = ("flat", "high-contrast", "modern")


@dataclass(frozen=True)
class RawImage:
    package: str     # PACKAGES key
    style: str       # the package's style ("color", "outline", "flat", ...): metadata only
    concept: str
    caption: str
    kind: str        # "png" or "svg"
    data: bytes
    name: str        # file or icon name inside the package (for counts and debugging)


def read_members(tarball, wanted):
    """{member name: bytes} of the tarball's files for which ``wanted(name)`` is true."""
    found = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                found[member.name] = tar.extractfile(member).read()
    return found


def read_index(tarball, index, image_dir):
    """(the package's JSON index, {member name: bytes} of its image directory)."""
    files = read_members(tarball, lambda n: n == index or n.startswith(image_dir))
    return json.loads(files.pop(index)), files


def with_images(entries, files, path_of, skipped, leave_out=lambda entry: None):
    """(entry, image bytes) of each entry that has its image and no ``leave_out`` reason; the
    others are counted in ``skipped`` by reason."""
    for entry in entries:
        reason = leave_out(entry) or (None if path_of(entry) in files else "no image")
        if reason:
            skipped[reason] += 1
            continue
        yield entry, files[path_of(entry)]


def _emoji_caption(text):
    return make_caption(text.label, text.tags)


def read_emoji_datasource(package, tarball, cldr, image_set):
    """emoji-datasource-<set>: 64 px PNGs by codepoints; base emoji only."""
    image_dir = f"package/img/{image_set}/64/"
    files = read_members(tarball, lambda n: n == "package/emoji.json" or n.startswith(image_dir))
    skipped, images = Counter(), []
    for entry in json.loads(files["package/emoji.json"]):
        skipped["skin-tone variant"] += len(entry.get("skin_variations") or {})
        text = cldr.text_of_codepoints(entry["unified"])
        png = files.get(image_dir + entry["image"])
        if text is None or png is None or not entry.get(f"has_img_{image_set}"):
            skipped["no CLDR text" if text is None else "no image"] += 1
            continue
        images.append(RawImage(package, "color", f"emoji:{text.concept}", _emoji_caption(text),
                               "png", png, entry["image"]))
    return images, skipped


def read_openmoji(package, tarball, cldr):
    """OpenMoji colour SVGs; CLDR text where Unicode has the emoji, else OpenMoji's own."""
    index, files = read_index(tarball, "package/data/openmoji.json", "package/color/svg/")
    skipped, images = Counter(), []
    entries = with_images(index, files, lambda e: f"package/color/svg/{e['hexcode']}.svg",
                          skipped, lambda e: "skin-tone variant" if e.get("skintone") else None)
    for entry, svg in entries:
        text = cldr.text_of_codepoints(entry["hexcode"])
        if text is not None:
            concept, caption = f"emoji:{text.concept}", _emoji_caption(text)
        else:   # OpenMoji's extras (U+E000 ...): its annotation and own tags
            tags = [t.strip() for t in entry.get("openmoji_tags", "").split(",") if t.strip()]
            concept, caption = f"openmoji:{entry['hexcode']}", make_caption(
                entry["annotation"], tags)
        if caption is None:
            skipped["caption only set or style words"] += 1
            continue
        images.append(RawImage(package, "color", concept, caption, "svg", svg, entry["hexcode"]))
    return images, skipped


def iconify_svg(icon, icon_set):
    """An Iconify JSON icon as a standalone SVG document."""
    left, top = icon.get("left", icon_set.get("left", 0)), icon.get("top", icon_set.get("top", 0))
    width = icon.get("width", icon_set.get("width", 16))
    height = icon.get("height", icon_set.get("height", 16))
    return (f'<svg xmlns="{SVG_NS}" viewBox="{left} {top} {width} {height}">'
            f'{icon["body"]}</svg>').encode()


def emoji_slug(name):
    for pattern, replacement in SLUG_RULES:
        name = pattern.sub(replacement, name)
    return name


def read_iconify(package, tarball, cldr=None):
    """An @iconify-json set: emoji sets (cldr given) join CLDR by slug; icon sets by name."""
    icon_set = json.loads(read_members(tarball, lambda n: n == "package/icons.json")[
        "package/icons.json"])
    skipped, images = Counter(), []
    for name, icon in sorted(icon_set["icons"].items()):
        if icon.get("hidden"):
            skipped["hidden"] += 1
            continue
        svg = iconify_svg(icon, icon_set)
        if cldr is None:
            caption = make_caption(name)
            if caption is None:
                skipped["caption only set or style words"] += 1
                continue
            images.append(RawImage(package, "mono", f"{package}:{caption}", caption, "svg", svg,
                                   name))
            continue
        if TONE_SUFFIX.search(name):
            skipped["skin-tone variant"] += 1
            continue
        text = cldr.text_of_slug(emoji_slug(name))
        if text is None:
            skipped["no CLDR match"] += 1
            continue
        images.append(RawImage(package, "color", f"emoji:{text.concept}", _emoji_caption(text),
                               "svg", svg, name))
    return images, skipped


def _icon(package, style, name, keywords, svg, skipped):
    """One icon's RawImage (concept = name without style words), or None (counted)."""
    if names_a_set(name):
        skipped["names a set (brand logo)"] += 1
        return None
    caption = make_caption(name, keywords)
    if caption is None:
        skipped["caption only set or style words"] += 1
        return None
    return RawImage(package, style, f"{package}:{' '.join(clean_words(name))}", caption, "svg",
                    svg, name)


def read_tabler(package, tarball):
    index, files = read_index(tarball, "package/icons.json", "package/icons/")
    skipped, images = Counter(), []
    styled = [(name, meta, style) for name, meta in sorted(index.items())
              for style in sorted(meta.get("styles", {}))]
    entries = with_images(styled, files, lambda e: f"package/icons/{e[2]}/{e[0]}.svg", skipped)
    for (name, meta, style), svg in entries:
        keywords = [meta.get("category") or ""] + list(meta.get("tags") or ())
        image = _icon(package, style, name, keywords, svg, skipped)
        images += [image] if image else []
    return images, skipped


def read_mdi(package, tarball):
    index, files = read_index(tarball, "package/meta.json", "package/svg/")
    skipped, images = Counter(), []
    entries = with_images(index, files, lambda m: f"package/svg/{m['name']}.svg", skipped,
                          lambda m: "deprecated" if m.get("deprecated") else None)
    for meta, svg in entries:
        keywords = list(meta.get("aliases") or ()) + list(meta.get("tags") or ())
        image = _icon(package, "mono", meta["name"], keywords, svg, skipped)
        images += [image] if image else []
    return images, skipped


def read_fontawesome(package, tarball):
    """Font Awesome Free: solid and regular (brand logos left out)."""
    files = read_members(tarball, lambda n: n == "package/metadata/icon-families.json")
    skipped, images = Counter(), []
    for name, meta in sorted(json.loads(files["package/metadata/icon-families.json"]).items()):
        styles = (meta.get("svgs") or {}).get("classic", {})
        skipped["brand logo"] += int("brands" in styles)
        for style in ("solid", "regular"):
            if style in styles:
                keywords = list((meta.get("search") or {}).get("terms") or ())
                image = _icon(package, style, meta.get("label") or name, keywords,
                              styles[style]["raw"].encode(), skipped)
                images += [image] if image else []
    return images, skipped


def read_lucide(package, tarball):
    index, files = read_index(tarball, "package/tags.json", "package/icons/")
    skipped, images = Counter(), []
    entries = with_images(sorted(index.items()), files,
                          lambda item: f"package/icons/{item[0]}.svg", skipped)
    for (name, tags), svg in entries:
        image = _icon(package, "mono", name, tags, svg, skipped)
        images += [image] if image else []
    return images, skipped


def read_fluent(package, tarball, cldr):
    """Fluent Emoji (held-out styles): flat, high contrast, modern; default tone only."""
    files = read_members(tarball, lambda n: n.startswith("package/icons/") and n.endswith(".svg"))
    skipped, images = Counter(), []
    for path, svg in sorted(files.items()):
        style, file_name = path.split("/")[-2:]
        name = file_name[:-4]
        if style not in FLUENT_STYLES:
            skipped["unknown style"] += 1
            continue
        if TONE_SUFFIX.search(name) and not name.endswith("-default"):
            skipped["skin-tone variant"] += 1
            continue
        text = cldr.text_of_slug(emoji_slug(name.removesuffix("-default")))
        if text is None or has_skin_tone(text.concept):
            skipped["no CLDR match"] += 1
            continue
        images.append(RawImage(package, style, f"emoji:{text.concept}", _emoji_caption(text),
                               "svg", svg, name))
    return images, skipped


def read_package(key, tarball, cldr):
    """The reader of one PACKAGES entry."""
    readers = {
        "twemoji": lambda: read_emoji_datasource(key, tarball, cldr, "twitter"),
        "noto": lambda: read_emoji_datasource(key, tarball, cldr, "google"),
        "openmoji": lambda: read_openmoji(key, tarball, cldr),
        "noto-v1": lambda: read_iconify(key, tarball, cldr),
        "emojione": lambda: read_iconify(key, tarball, cldr),
        "game-icons": lambda: read_iconify(key, tarball),
        "tabler": lambda: read_tabler(key, tarball),
        "mdi": lambda: read_mdi(key, tarball),
        "fontawesome": lambda: read_fontawesome(key, tarball),
        "lucide": lambda: read_lucide(key, tarball),
        "fluent": lambda: read_fluent(key, tarball, cldr),
    }
    if key not in readers:
        raise ValueError(f"no reader for package {key!r}")
    return readers[key]()
