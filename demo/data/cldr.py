"""CLDR emoji names and keywords (npm ``emojibase-data@17.0.0``), joined to every emoji set.

Every emoji set names its images differently: emoji-datasource and OpenMoji by codepoints,
the Iconify sets (Noto v1, EmojiOne) and Fluent by a slug of the English name. :class:`Cldr`
joins all of them to one concept, the base emoji's codepoints without variation selectors
(``"1F44B"``), whose caption text is the CLDR label and keywords. Slugs also match emojibase's
shortcodes (``a-button`` for "A button (blood type)"). Skin-tone variants map to their base
emoji; the builder keeps the default tone only (see ``pool.py``).
"""
import json
import re
import tarfile
import unicodedata
from dataclasses import dataclass

VARIATION_SELECTORS = ("FE0F", "FE0E")
SKIN_TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
SHORTCODE_FILES = ("cldr", "emojibase", "github", "iamcal", "joypixels")
DATA_FILE = "package/en/data.json"


def normalise_codepoints(hexcode):
    """'2764-fe0f' -> '2764': upper case, variation selectors dropped (sets differ on them)."""
    parts = [part for part in hexcode.upper().replace("_", "-").split("-") if part]
    return "-".join(part for part in parts if part not in VARIATION_SELECTORS)


def base_codepoints(hexcode):
    """The emoji without its skin-tone modifiers: '1F44B-1F3FB' -> '1F44B'."""
    return "-".join(p for p in normalise_codepoints(hexcode).split("-") if p not in SKIN_TONES)


def has_skin_tone(hexcode):
    return any(part in SKIN_TONES for part in normalise_codepoints(hexcode).split("-"))


def slug(text):
    """'One o’clock' -> 'one-oclock', 'piñata' -> 'pinata': how Iconify and Fluent name files."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_text = re.sub(r"['’]", "", ascii_text.lower())
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


@dataclass(frozen=True)
class EmojiText:
    concept: str     # base codepoints, e.g. "1F44B"
    label: str       # CLDR name, e.g. "waving hand"
    tags: tuple      # CLDR keywords
    group: int       # CLDR group index (smileys, people, ...)


class Cldr:
    """CLDR text by codepoints and by slug, read from the emojibase-data tarball."""

    def __init__(self, entries, shortcodes):
        self.by_code = {}
        for entry in entries:
            code = normalise_codepoints(entry["hexcode"])
            self.by_code[code] = EmojiText(code, " ".join(entry["label"].split()),
                                           tuple(entry.get("tags") or ()), entry.get("group", -1))
        self.by_slug = {}
        for code, text in self.by_code.items():
            self.by_slug.setdefault(slug(text.label), code)
        for table in shortcodes:
            for hexcode, names in table.items():
                code = normalise_codepoints(hexcode)
                for name in [names] if isinstance(names, str) else names:
                    if code in self.by_code:
                        self.by_slug.setdefault(slug(name.replace("_", "-")), code)

    @classmethod
    def from_tarball(cls, tarball):
        wanted = {DATA_FILE} | {f"package/en/shortcodes/{n}.json" for n in SHORTCODE_FILES}
        found = {}
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.name in wanted:
                    found[member.name] = json.load(tar.extractfile(member))
        if DATA_FILE not in found:
            raise ValueError(f"{tarball}: no {DATA_FILE}; not an emojibase-data tarball")
        return cls(found.pop(DATA_FILE), [found[k] for k in sorted(found)])

    def text_of_codepoints(self, hexcode):
        """The base emoji's CLDR text for any variant's codepoints, or None."""
        return self.by_code.get(base_codepoints(hexcode))

    def text_of_slug(self, name):
        code = self.by_slug.get(slug(name))
        return None if code is None else self.by_code[code]
