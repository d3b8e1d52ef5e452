"""Captions of the pool: a concept's name and a few keywords, never the set's or the style's name.

A caption is ``"<name>: <keyword>, <keyword>, <keyword>"`` ("waving hand: bye, hello, wave").
Retrieval could match on any word that says which set or which style drew an image ("outline",
"openmoji", "emoji", "icon"), so :data:`STYLE_WORDS` are removed from names and keywords alike
before the caption is built, and :func:`style_words_in` is what the tests check every caption
against. Names that *are* a set's name (brand logos such as ``google-drive`` in Material Design
Icons) are not captions of a concept: :func:`names_a_set` lets the readers drop them (counted).
"""
import re

# Words that name a source set or a drawing style (token-level; "flatbread" stays).
SET_WORDS = ("twemoji", "twitter", "noto", "google", "openmoji", "emojione", "emojitwo",
             "joypixels", "tabler", "mdi", "pictogrammers", "fontawesome", "lucide", "fluent",
             "fluentui", "microsoft", "iconify", "blob", "blobs")
STYLE_ONLY_WORDS = ("emoji", "emojis", "icon", "icons", "flat", "modern", "outline", "outlined",
                    "filled", "fill", "solid", "regular", "brands", "contrast", "3d", "color",
                    "colour", "glyph", "duotone")
STYLE_WORDS = frozenset(SET_WORDS + STYLE_ONLY_WORDS)
# Multi-word set names whose words are ordinary alone ("game", "awesome", "design").
SET_PHRASES = (("game", "icons"), ("font", "awesome"), ("material", "design"),
               ("high", "contrast"))
MAX_KEYWORDS = 3
_TOKEN = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def tokens(text):
    """Lower-case word tokens; hyphens, underscores and slashes separate words."""
    return _TOKEN.findall(str(text).lower())


def _drop_phrases(words):
    out, i = [], 0
    while i < len(words):
        phrase = next((p for p in SET_PHRASES if tuple(words[i:i + len(p)]) == p), None)
        if phrase:
            i += len(phrase)
            continue
        out.append(words[i])
        i += 1
    return out


def clean_words(text):
    """The words of ``text`` without set or style words, as a list."""
    return [w for w in _drop_phrases(tokens(text)) if w not in STYLE_WORDS]


def names_a_set(name):
    """True when a name contains a set's name (e.g. a brand icon of that company)."""
    return any(word in SET_WORDS for word in tokens(name))


def make_caption(name, keywords=()):
    """'waving hand: bye, hello, wave' from a name and keywords, set and style words removed;
    None when nothing of the name is left."""
    name_words = clean_words(name)
    if not name_words:
        return None
    seen, picked = set(name_words), []
    for keyword in keywords:
        words = clean_words(keyword)
        text = " ".join(words)
        if not words or text in seen or all(w in seen for w in words):
            continue
        seen.add(text)
        seen.update(words)
        picked.append(text)
        if len(picked) == MAX_KEYWORDS:
            break
    head = " ".join(name_words)
    return head if not picked else f"{head}: {', '.join(picked)}"


def style_words_in(caption):
    """The set or style words a caption contains ([] for a clean caption)."""
    words = tokens(caption)
    found = [w for w in words if w in STYLE_WORDS]
    found += [" ".join(p) for p in SET_PHRASES
              if any(tuple(words[i:i + len(p)]) == p for i in range(len(words)))]
    return found
