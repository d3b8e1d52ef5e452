"""The pinned npm packages of the demo's image-text pool, one record each (a table, not code).

Each record says where the images are fetched from (``npm pack SPEC``, checked against npm's
published sha512 integrity: ``npm view SPEC dist.integrity``), which family it belongs to (emoji
or icons; the report breaks results down by family), what role it plays (training pool, style-shift
held-out, caption text only) and what its licence asks of anyone who redistributes the images:
``pool.write_attribution`` copies every ``credit`` into ``ATTRIBUTION.txt`` beside the data.

Not used, on purpose: ``emoji-datasource-apple`` and ``emoji-datasource-facebook`` (their images
are not licensed for redistribution).
"""
from dataclasses import dataclass

from demo.data.npm import NpmPackage
from demo.data.twemoji import TWEMOJI


@dataclass(frozen=True)
class PoolPackage:
    key: str            # short name used in sample metadata and the report ("twemoji")
    npm: NpmPackage
    family: str         # "emoji" or "icons" (the report's per-source breakdown)
    role: str           # "train" (the pool), "style-heldout" (never trained on), "text" (captions)
    licence: str
    credit: str         # the attribution line the licence requires


def _npm(spec, tarball, integrity):
    return NpmPackage(spec, tarball, integrity)


PACKAGES = {p.key: p for p in (
    PoolPackage("twemoji", TWEMOJI, "emoji", "train", "CC BY 4.0",
                "Twemoji (c) Twitter, Inc. and other contributors, CC BY 4.0 "
                "(https://creativecommons.org/licenses/by/4.0/); images from "
                "emoji-datasource-twitter@16.0.0, composited onto white and resized."),
    PoolPackage("noto", _npm(
        "emoji-datasource-google@16.0.0", "emoji-datasource-google-16.0.0.tgz",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8Dl"
        "PhfQ3A=="), "emoji", "train", "Apache-2.0",
        "Noto Emoji (c) Google Inc., Apache License 2.0; images from "
        "emoji-datasource-google@16.0.0, composited onto white and resized."),
    PoolPackage("openmoji", _npm(
        "openmoji@17.0.0", "openmoji-17.0.0.tgz",
        "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp"
        "4UaI9w=="), "emoji", "train", "CC BY-SA 4.0",
        "All emojis designed by OpenMoji – the open-source emoji and icon project. "
        "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). The "
        "rasterised OpenMoji images in these shards are derived works and stay under CC BY-SA "
        "4.0."),
    PoolPackage("noto-v1", _npm(
        "@iconify-json/noto-v1@1.2.5", "iconify-json-noto-v1-1.2.5.tgz",
        "sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3ey"
        "PqMuVA=="), "emoji", "train", "Apache-2.0",
        "Noto Emoji v1 (c) Google Inc., Apache License 2.0; SVGs from "
        "@iconify-json/noto-v1@1.2.5, rasterised."),
    PoolPackage("emojione", _npm(
        "@iconify-json/emojione@1.2.3", "iconify-json-emojione-1.2.3.tgz",
        "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8z"
        "b9CMMg=="), "emoji", "train", "CC BY 4.0",
        "Emoji artwork provided by EmojiOne (Emoji One 2.3), CC BY 4.0 "
        "(https://creativecommons.org/licenses/by/4.0/); SVGs from @iconify-json/emojione@1.2.3, "
        "rasterised."),
    PoolPackage("tabler", _npm(
        "@tabler/icons@3.52.0", "tabler-icons-3.52.0.tgz",
        "sha512-dldKlJNfO/gZnGLcIY0X2EFFKIMGwL/rEvTqglvBgAPFiwj9pZOCN5V3Sf0Gyjq6foX4VQmLdOmsS4w5"
        "FdWKAw=="), "icons", "train", "MIT",
        "Tabler Icons, Copyright (c) 2020-2026 Paweł Kuna, MIT licence; rasterised."),
    PoolPackage("mdi", _npm(
        "@mdi/svg@7.4.47", "mdi-svg-7.4.47.tgz",
        "sha512-WQ2gDll12T9WD34fdRFgQVgO8bag3gavrAgJ0frN4phlwdJARpE6gO1YvLEMJR0KKgoc+/Ea/A0Pp11I"
        "00xBvw=="), "icons", "train", "Apache-2.0",
        "Material Design Icons by Pictogrammers (https://pictogrammers.com), icons under the "
        "Apache License 2.0 (Pictogrammers Free License); rasterised."),
    PoolPackage("game-icons", _npm(
        "@iconify-json/game-icons@1.2.4", "iconify-json-game-icons-1.2.4.tgz",
        "sha512-/HDDZxowXgDJcOEwPspUCq5RuDdl25OyZKdtxqqiPJQNTrWIym7r4StLzIVs77DyNzOWWhH5wDqwYR3W"
        "HeDfkg=="), "icons", "train", "CC BY 3.0",
        "Game icons from game-icons.net, CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/),"
        " by their individual authors (Lorc, Delapouite and the other game-icons.net "
        "contributors). The per-icon author of every icon is listed at https://game-icons.net and "
        "in https://github.com/game-icons/icons/blob/master/license.txt; the npm package "
        "@iconify-json/game-icons@1.2.4 these SVGs come from carries no per-icon author field, so "
        "cite the author from those pages when you reuse a single icon. Rasterised."),
    PoolPackage("fontawesome", _npm(
        "@fortawesome/fontawesome-free@7.3.1", "fortawesome-fontawesome-free-7.3.1.tgz",
        "sha512-wmglKKPDIkgV3aWlZzWECCPoGIkYCulzBwxG9+w7rc5BGapZ6cPMpoPOT8k36J0Ni7PPX6c/rsoMWfS4"
        "d1MUMg=="), "icons", "train", "CC BY 4.0",
        "Font Awesome Free 7.3.1 by Fonticons, Inc. (https://fontawesome.com), icons under "
        "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); solid and regular SVGs, "
        "rasterised (the brand logos are left out)."),
    PoolPackage("lucide", _npm(
        "lucide-static@1.62.0", "lucide-static-1.62.0.tgz",
        "sha512-WBZA/m2PvkFpMGHDtsBck5P2A9G4ehLlYu4GwwICcmEm1BvYVgj00lCDxKRWLlbMlOibLaiwdQ88G5pH"
        "kSWgwA=="), "icons", "train", "ISC",
        "Lucide icons, Copyright (c) 2026 Lucide Icons and Contributors, ISC licence; rasterised."),
    PoolPackage("fluent", _npm(
        "fluentui-emoji@1.3.0", "fluentui-emoji-1.3.0.tgz",
        "sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1"
        "saB2xw=="), "emoji", "style-heldout", "MIT",
        "Fluent Emoji (c) Microsoft Corporation, MIT licence; SVGs (flat, high contrast, modern) "
        "from the npm package fluentui-emoji@1.3.0, rasterised. Evaluation only."),
    PoolPackage("emojibase", _npm(
        "emojibase-data@17.0.0", "emojibase-data-17.0.0.tgz",
        "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljH"
        "sTygjA=="), "emoji", "text", "MIT",
        "Emoji names and keywords: Unicode CLDR annotations via emojibase-data@17.0.0 (MIT); "
        "CLDR data (c) Unicode, Inc., Unicode licence."),
)}
TRAIN_PACKAGES = tuple(k for k, p in PACKAGES.items() if p.role == "train")
