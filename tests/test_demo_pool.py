"""The demo's pool builder (demo/data/pool.py and its readers), and the study's statistics.

The pool test builds from a hashed 1-in-40 subset of six of the real npm packages (the cached
tarballs under build/cache, fetched with ``npm pack`` when missing; skipped when npm cannot
reach the registry), at 16 px: a few seconds. The statistics are checked against values
computed by hand in the comments.
"""
import json
import math
from pathlib import Path

import pytest
import webdataset as wds

from demo import stats
from demo.data import pool
from demo.data.captions import make_caption, names_a_set, style_words_in
from demo.data.cldr import Cldr, base_codepoints, normalise_codepoints, slug
from demo.data.npm import DataUnavailable, fetch_npm_tarball
from demo.data.packages import PACKAGES
from demo.data.pool_readers import RawImage, emoji_slug
from demo.data.raster import rasterise_package

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBSET = ("emojibase", "openmoji", "noto-v1", "tabler", "lucide", "fluent")
BROKEN_SVG = b"<svg xmlns='http://www.w3.org/2000/svg'><path d='M0 0 L"


# ---------------------------------------------------------------- captions and names

def test_captions_drop_set_and_style_words_and_repeats():
    assert make_caption("home-outline", ["house", "Home", "building", "filled", "main", "x"]) == (
        "home: house, building, main")
    assert make_caption("Font Awesome flag", ["high contrast", "banner"]) == "flag: banner"
    assert make_caption("outline") is None        # nothing left of the name
    assert style_words_in("a flat icon of twemoji") == ["flat", "icon", "twemoji"]
    assert style_words_in("flatbread: food") == [] and style_words_in("game icons x") == [
        "icons", "game icons"]
    assert names_a_set("google-drive") and not names_a_set("drive")


def test_codepoints_and_slugs_join_the_sets():
    assert normalise_codepoints("2764-fe0f") == "2764"
    assert base_codepoints("1F44B-1F3FB") == "1F44B"
    assert slug("One o’clock") == "one-oclock" and slug("piñata") == "pinata"
    assert emoji_slug("flag-for-flag-japan") == "flag-japan" and emoji_slug("digit-two") == (
        "keycap-2")
    cldr = Cldr([{"hexcode": "1F44B", "label": "waving  hand", "tags": ["wave"], "group": 1},
                 {"hexcode": "0032-FE0F-20E3", "label": "keycap: 2"}], [{"1F44B": ["wave"]}])
    assert cldr.text_of_codepoints("1f44b-1f3ff").label == "waving hand"
    assert cldr.text_of_slug("wave").concept == cldr.text_of_slug("waving-hand").concept == "1F44B"
    assert cldr.text_of_slug(emoji_slug("digit-two")).concept == "0032-20E3"


def test_concept_split_is_seeded_stratified_and_covers_every_concept():
    concepts = {f"emoji:{i:04X}" for i in range(400)} | {f"tabler:t{i}" for i in range(200)}
    split = pool.split_concepts(concepts, seed=0)
    assert split == pool.split_concepts(set(reversed(sorted(concepts))), seed=0)
    assert split != pool.split_concepts(concepts, seed=1) and set(split) == concepts
    for prefix, total in (("emoji", 400), ("tabler", 200)):
        sides = [side for concept, side in split.items() if concept.startswith(prefix)]
        assert (sides.count("heldout"), sides.count("val")) == (total // 10, total // 20)


def test_one_image_per_concept_takes_the_styles_in_turn_and_drops_repeated_captions():
    def pair(concept, style, caption):
        return (RawImage("fluent", style, concept, caption, "svg", b"", concept + style), None)

    pairs = [pair(f"emoji:{i}", s, f"c{i}") for i in range(30) for s in pool.FLUENT_STYLES]
    chosen, dropped = pool.one_image_per_concept(pairs, seed=0, styles=pool.FLUENT_STYLES)
    assert dropped == 0 and len(chosen) == 30
    assert sorted(p[0].style for p in chosen).count("flat") == 10   # 30 concepts, 3 styles
    same = [pair("emoji:a", "flat", "same"), pair("emoji:b", "flat", "same")]
    assert pool.one_image_per_concept(same, seed=0) == ([same[0]], 1)


def test_a_broken_svg_is_skipped_counted_and_cached(tmp_path):
    good = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 4 4'>"
            "<rect width='2' height='2' fill='red'/></svg>").encode()
    raw = [RawImage("lucide", "mono", "lucide:a", "a", "svg", good, "a"),
           RawImage("lucide", "mono", "lucide:b", "b", "svg", BROKEN_SVG, "b")]
    drawn, broken = rasterise_package(raw, 8, "lucide", "sha512-x", tmp_path, jobs=1,
                                      show_progress=False)
    assert broken == ["b"] and list(drawn) == ["a"]
    assert tuple(drawn["a"][0, 0]) == (255, 0, 0) and tuple(drawn["a"][7, 7]) == (255, 255, 255)
    again, broken_again = rasterise_package(raw, 8, "lucide", "sha512-x", tmp_path, jobs=1,
                                            show_progress=False)
    assert broken_again == ["b"] and (again["a"] == drawn["a"]).all()
    assert len(list((tmp_path / "raster").glob("*.npz"))) == 1


# ---------------------------------------------------------------- the pool on real packages

@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    try:
        tarballs = {key: fetch_npm_tarball(PACKAGES[key].npm, REPO_ROOT / "build" / "cache",
                                           timeout_s=120) for key in SUBSET}
    except DataUnavailable as error:
        pytest.skip(f"npm packages not obtainable here: {error}")
    root = tmp_path_factory.mktemp("pool")
    real_reader = pool.read_package

    # a concept name the 1-in-40 subset keeps
    broken = next(f"zz broken {n}" for n in range(1000) if pool.sampled(f"lucide:zz broken {n}", 40))

    def with_one_broken_svg(key, tarball, cldr):
        images, skipped = real_reader(key, tarball, cldr)
        if key == "lucide":
            images.append(RawImage("lucide", "mono", f"lucide:{broken}", broken, "svg",
                                   BROKEN_SVG, broken.replace(" ", "-")))
        return images, skipped

    pool.read_package, saved = with_one_broken_svg, pool.read_package
    try:
        manifest = pool.pool_dataset(root / "data", tarballs, image_size=16, seed=0,
                                     cache_dir=root / "cache", jobs=1, show_progress=False,
                                     one_in=40)
    finally:
        pool.read_package = saved
    return root / "data", manifest, Cldr.from_tarball(tarballs["emojibase"])


def train_samples(data, manifest):
    return list(wds.WebDataset(str(data / manifest["train"]["pattern"]), shardshuffle=False)
                .decode("pil"))


def eval_pairs(data, name):
    return [json.loads(line) for line in (data / name / "pairs.jsonl").read_text().splitlines()]


def test_pool_captions_are_cldr_text_and_free_of_set_and_style_words(small_pool):
    data, manifest, cldr = small_pool
    samples = train_samples(data, manifest)
    assert len(samples) == manifest["train"]["num_samples"] > 100
    emoji = 0
    for sample in samples:
        meta = sample["json"]
        assert sample["txt"] == meta["caption"] and style_words_in(sample["txt"]) == []
        if meta["concept"].startswith("emoji:"):
            text = cldr.by_code[meta["concept"].split(":", 1)[1]]
            assert sample["txt"] == make_caption(text.label, text.tags)
            emoji += 1
        assert sample["png"].size == (16, 16)
    assert emoji > 20
    for name in pool.EVAL_SETS:
        for pair in eval_pairs(data, name):
            assert style_words_in(pair["caption"]) == [], (name, pair)


def test_pool_concept_split_is_disjoint_across_every_style(small_pool):
    data, manifest, _ = small_pool
    splits = json.loads((data / "splits.json").read_text())
    trained = {s["json"]["concept"] for s in train_samples(data, manifest)}
    assert trained == set(splits["train"])
    held, val = set(splits["heldout"]), set(splits["val"])
    assert held and val and not (held & val) and not (trained & (held | val))
    concept_pairs = eval_pairs(data, "concept_retrieval")
    assert {p["concept"] for p in concept_pairs} == held   # every held-out concept, once
    assert {p["concept"] for p in eval_pairs(data, "val_retrieval")} == val
    # the held-out emoji were drawn by several training sets: none of their images trained
    packages = {p["package"] for p in concept_pairs}
    assert {"openmoji", "tabler"} <= packages
    style = eval_pairs(data, "style_retrieval")
    assert style and {p["package"] for p in style} == {"fluent"}
    assert {p["concept"] for p in style} <= trained
    assert {p["style"] for p in style} == set(pool.FLUENT_STYLES)
    zeroshot = eval_pairs(data, "concept_zeroshot")
    assert {p["concept"] for p in zeroshot} == held and len(zeroshot) >= len(concept_pairs)


def test_pool_attribution_and_the_broken_svg_count(small_pool):
    data, manifest, _ = small_pool
    attribution = (data / "ATTRIBUTION.txt").read_text()
    assert "All emojis designed by OpenMoji – the open-source emoji and icon project. " \
           "License: CC BY-SA 4.0" in attribution
    for key in SUBSET:
        assert PACKAGES[key].npm.spec in attribution and PACKAGES[key].credit in attribution
    assert "emoji-datasource-apple" not in attribution
    assert manifest["left_out"]["lucide"]["broken image"] == 1
    assert not any(p["caption"].startswith("zz broken") for name in pool.EVAL_SETS
                   for p in eval_pairs(data, name))
    assert manifest["left_out"]["openmoji"]["skin-tone variant"] > 0


# ---------------------------------------------------------------- the study's statistics

def test_mean_ci_is_the_student_t_interval():
    # values 1, 2, 3, 4, 5: mean 3, s = sqrt(2.5) = 1.5811, s/sqrt(5) = 0.70711,
    # t(0.975, 4) = 2.776445 -> half width 1.963243
    interval = stats.mean_ci([1, 2, 3, 4, 5])
    assert interval.mean == 3 and interval.n == 5
    assert interval.half_width == pytest.approx(1.963243, abs=1e-6)
    # two values 10, 14: s = 2.8284, s/sqrt(2) = 2, t(0.975, 1) = 12.7062 -> 25.4124
    assert stats.mean_ci([10, 14]).half_width == pytest.approx(25.4124, abs=1e-4)
    assert math.isnan(stats.mean_ci([7]).half_width)
    assert stats.format_interval(stats.mean_ci([0.1, 0.2, 0.3])) == "20.00 ± 24.84"


def curve(values, per=100):
    return [{"samples_seen": per * (i + 1), "mean_r1": v} for i, v in enumerate(values)]


def test_samples_to_match_interpolates_between_checkpoints():
    # target 0.40 between (200, 0.30) and (300, 0.50): 200 + 0.5 * 100 = 250
    assert stats.samples_to_match(curve([0.1, 0.3, 0.5]), 0.40) == pytest.approx(250)
    # reached before the first checkpoint: from (0, 0): 0.2 / 0.5 * 100 = 40
    assert stats.samples_to_match(curve([0.5, 0.6]), 0.2) == pytest.approx(40)
    assert stats.samples_to_match(curve([0.1, 0.2]), 0.3) is None
    base = curve([0.1, 0.2, 0.3, 0.4])          # final 0.40 at 400 samples
    fast = curve([0.2, 0.45, 0.5, 0.5])          # 0.40 between (100, .2) and (200, .45): 180
    assert stats.fraction_to_match(fast, base) == pytest.approx(180 / 400)
    assert stats.ratio_at_equal_samples(fast, base) == pytest.approx(0.5 / 0.4)


def test_paired_summary_over_seeds():
    base = {0: curve([0.1, 0.2]), 1: curve([0.1, 0.4]), 2: curve([0.2, 0.3])}
    fast = {0: curve([0.2, 0.3]), 1: curve([0.2, 0.4]), 2: curve([0.1, 0.2]), 9: curve([1, 1])}
    summary = stats.paired_summary(fast, base)
    # ratios 1.5, 1.0, 0.6667: mean 1.055556, squared deviations 0.197531 + 0.003086 + 0.151235
    # = 0.351852, s = sqrt(0.351852 / 2) = 0.419435, t(.975, 2) = 4.302653
    # -> half width 4.302653 * 0.419435 / sqrt(3) = 1.041935
    assert summary["seeds"] == [0, 1, 2]
    assert summary["ratios"] == pytest.approx([1.5, 1.0, 2 / 3])
    assert summary["ratio"].mean == pytest.approx(1.055556, abs=1e-6)
    assert summary["ratio"].half_width == pytest.approx(1.041935, abs=1e-5)
    # seed 0: target 0.2 reached at 0.2/0.2*100 = 100 of 200 -> 0.5; seed 1: target 0.4 at
    # 100 + (0.4-0.2)/(0.4-0.2)*100 = 200 -> 1.0; seed 2: never (final 0.2 < 0.3)
    assert summary["fractions"][:2] == pytest.approx([0.5, 1.0])
    assert summary["fractions"][2] is None and summary["never_reached"] == 1
    assert summary["fraction"].mean == pytest.approx(0.75)
