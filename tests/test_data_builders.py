"""Data builders: digits shards for the trainer tests, and the Twemoji / digits demo data.

The Twemoji pipeline runs on a small fake npm tarball built here (same layout as
emoji-datasource-twitter), so split, caption and key logic is tested offline; one test uses
the real tarball and skips when npm cannot fetch it.
"""
import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image, ImageDraw
from torchvision import transforms

from demo.data import __main__ as data_cli
from demo.data.build import build_demo_data, split_groups
from demo.data.digits import DIGIT_WORDS, write_digits_shards
from demo.data.npm import DataUnavailable
from demo.data.twemoji import (EMOJI_TEMPLATES, TWEMOJI, TWEMOJI_IMAGE_DIR, emoji_caption,
                               fetch_twemoji_tarball)

REPO_ROOT = Path(__file__).resolve().parents[1]
TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")


def read_samples(pattern):
    return list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))


def load_wds_set(root, task):
    from clip_benchmark.datasets.builder import build_dataset

    name = Path(root).name
    dataset = build_dataset(dataset_name=f"wds/{name}", root=str(root), split="test",
                            transform=transforms.ToTensor(), task=task)
    return dataset, list(dataset)


def assert_sizes_match_shards(shard_dir):
    sizes = json.loads((Path(shard_dir) / "sizes.json").read_text())
    assert sorted(sizes) == sorted(p.name for p in Path(shard_dir).glob("*.tar"))
    for name, count in sizes.items():
        assert len(read_samples(str(Path(shard_dir) / name))) == count, name


# ---------------------------------------------------------------- digits shards

def test_digits_shards_carry_img2dataset_keys_that_map_to_their_captions(tmp_path):
    from sklearn.datasets import load_digits

    record = write_digits_shards(tmp_path, num_shards=2, image_size=24, num_samples=301)
    assert [p.name for p in record.paths] == ["00000.tar", "00001.tar"]
    samples = read_samples(record.pattern)
    assert len(samples) == record.num_samples == 301
    assert record.id_space == 10_000 + 150  # shard 1 holds rows 0..149 -> keys 10000..10149
    targets = load_digits().target
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys) and all(len(k) == 9 and k.isdigit() for k in keys)
    for sample in samples:
        sample_id = int(sample["__key__"])
        assert 0 <= sample_id < record.id_space
        assert sample["json"]["key"] == sample["__key__"]
        assert sample["txt"] == sample["json"]["caption"] == record.captions[sample_id]
        assert sample["json"]["label"] == targets[sample["json"]["row"]] == record.labels[sample_id]
        label = sample["json"]["label"]
        assert f"digit {label}" in sample["txt"] or f"number {DIGIT_WORDS[label]}" in sample["txt"]
        assert sample["png"].mode == "RGB" and sample["png"].size == (24, 24)
    assert_sizes_match_shards(tmp_path)


def test_digits_shards_are_byte_identical_across_rebuilds(tmp_path):
    first = write_digits_shards(tmp_path / "a", num_samples=50)
    second = write_digits_shards(tmp_path / "b", num_samples=50)
    for a, b in zip(first.paths, second.paths):
        assert a.read_bytes() == b.read_bytes()
    assert first.captions == second.captions


def test_unique_captions_name_one_sample_each(tmp_path):
    record = write_digits_shards(tmp_path, num_samples=80, unique_captions=True)
    assert len(set(record.captions.values())) == 80


def test_gaps_keep_the_id_space_of_all_planned_rows(tmp_path):
    full = write_digits_shards(tmp_path / "full", num_samples=100)
    gappy = write_digits_shards(tmp_path / "gappy", num_samples=100, skip_every=4)
    assert gappy.id_space == full.id_space
    assert gappy.num_samples == 75 < gappy.id_space
    assert set(gappy.captions) < set(full.captions)
    stats = json.loads((tmp_path / "gappy" / "00000_stats.json").read_text())
    assert stats["count"] == 50 and stats["failed_to_download"] == 50 - stats["successes"] > 0
    assert_sizes_match_shards(tmp_path / "gappy")


def test_rogue_key_is_written_outside_the_id_space(tmp_path):
    record = write_digits_shards(tmp_path, num_samples=40, rogue_key=10_020)
    ids = [int(s["__key__"]) for s in read_samples(record.pattern)]
    assert record.id_space == 10_020 and ids.count(10_020) == 1
    assert [i for i in ids if i >= record.id_space] == [10_020]
    with pytest.raises(ValueError, match="inside the id space"):
        write_digits_shards(tmp_path / "bad", num_samples=40, rogue_key=5)


def test_truncated_shard_fails_while_the_others_read(tmp_path):
    record = write_digits_shards(tmp_path, num_samples=60, truncate_shard_index=1)
    assert len(read_samples(str(record.paths[0]))) == 30
    with pytest.raises(tarfile.ReadError):
        read_samples(str(record.paths[1]))
    assert json.loads((tmp_path / "sizes.json").read_text())["00001.tar"] == 30


def test_digits_command_line_prints_train_data_and_data_size(tmp_path, capsys):
    assert data_cli.main(["digits", "--out", str(tmp_path), "--num-samples", "20"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"train_data": str(tmp_path / "{00000..00001}.tar"), "num_samples": 20,
                       "data_size": 10_010}


# ---------------------------------------------------------------- captions and splits

def test_captions_keep_skin_tone_words():
    assert emoji_caption("CROSSED SWORDS") == "an emoji of crossed swords"
    assert emoji_caption("WAVING HAND SIGN", "1F3FF") == "an emoji of waving hand sign, dark skin tone"
    assert emoji_caption("HANDSHAKE", "1F3FB-1F3FE") == (
        "an emoji of handshake, light skin tone, medium-dark skin tone")
    assert emoji_caption("KISS", "1F3FC-1F3FC") == "an emoji of kiss, medium-light skin tone"
    with pytest.raises(ValueError, match="1F600"):
        emoji_caption("X", "1F600")


def test_split_is_disjoint_stratified_and_seeded():
    strata = {f"g{i:03d}": i % 3 for i in range(300)} | {"lonely": 7}
    split = split_groups(strata, heldout_fraction=0.2, val_fraction=0.1, seed=0)
    assert split == split_groups(dict(reversed(list(strata.items()))), 0.2, 0.1, seed=0)
    assert split != split_groups(strata, 0.2, 0.1, seed=1)
    assert split["lonely"] == "train"  # a one-group stratum can only train
    for stratum in range(3):
        sides = [split[g] for g, s in strata.items() if s == stratum]
        assert (sides.count("heldout"), sides.count("val"), sides.count("train")) == (20, 10, 70)


# ---------------------------------------------------------------- Twemoji on a fake tarball

def _emoji_png(colour):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent corners, as Twemoji has
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fake_emoji_entries():
    """3 categories x 5 emoji; two emoji have skin tones (one variant without a Twitter image)."""
    entries = []
    for index in range(15):
        category = ("Smileys & Emotion", "People & Body", "Flags")[index % 3]
        code = f"1F{index:03X}"
        entry = {"name": f"FAKE EMOJI {index}", "unified": code, "image": f"{code.lower()}.png",
                 "category": category, "subcategory": "fake", "sort_order": 100 - index,
                 "has_img_twitter": True}
        if index in (1, 4):
            entry["skin_variations"] = {tone: {"unified": f"{code}-{tone}", "has_img_twitter":
                                               tone != "1F3FF" or index == 1,
                                               "image": f"{code}-{tone}.png".lower()}
                                        for tone in TONES}
        entries.append(entry)
    return entries


def write_fake_twemoji_tarball(path):
    entries = _fake_emoji_entries()
    files = {"package/emoji.json": json.dumps(entries).encode(), "package/LICENSE": b"MIT"}
    for number, entry in enumerate(entries):
        variants = [entry] + list((entry.get("skin_variations") or {}).values())
        for shade, variant in enumerate(variants):
            if variant["has_img_twitter"]:
                colour = (number * 16, shade * 40, 200, 255)
                files[TWEMOJI_IMAGE_DIR + variant["image"]] = _emoji_png(colour)
    files["package/img/twitter/32/1f000.png"] = b"other sizes are ignored"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    expected = {}  # caption -> group, for every image the build should use
    for entry in entries:
        for tone, variant in [(None, entry)] + sorted((entry.get("skin_variations") or {}).items()):
            if variant["has_img_twitter"]:
                expected[emoji_caption(entry["name"], tone)] = entry["unified"]
    return expected


@pytest.fixture(scope="module")
def fake_twemoji(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_twemoji")
    expected = write_fake_twemoji_tarball(root / "fake.tgz")
    manifest = build_demo_data(root / "data", "twemoji", image_size=16, num_shards=2,
                               twemoji_tarball=root / "fake.tgz")
    return root, expected, manifest


def test_fake_twemoji_splits_by_emoji_and_captions_every_image(fake_twemoji):
    root, expected, manifest = fake_twemoji
    data = Path(manifest["root"])
    splits = json.loads((data / "splits.json").read_text())
    assert manifest["source"] == "twemoji" and manifest["rebuilt"]
    assert {s: len(g) for s, g in splits.items()} == {"train": 9, "val": 3, "heldout": 3}
    assert sorted(sum(splits.values(), [])) == sorted(set(expected.values()))
    captions_by_split = {"train": [s["txt"] for s in read_samples(str(data / manifest["train"]["pattern"]))]}
    for split, set_name in (("heldout", "heldout_retrieval"), ("val", "val_retrieval")):
        _, items = load_wds_set(data / set_name, "zeroshot_retrieval")
        captions_by_split[split] = [captions[0] for _, captions in items]
    for split, captions in captions_by_split.items():
        assert captions and all(c.strip() for c in captions)
        # every image of a group (base emoji and all its skin tones) is on this side
        assert sorted(captions) == sorted(c for c, g in expected.items() if g in splits[split])
    assert sum(manifest["counts"][s]["samples"] for s in splits) == len(expected) == 15 + 5 + 4


def test_fake_twemoji_train_shards_have_unique_ids_and_emoji_metadata(fake_twemoji):
    root, expected, manifest = fake_twemoji
    data = Path(manifest["root"])
    samples = read_samples(str(data / manifest["train"]["pattern"]))
    ids = [int(s["__key__"]) for s in samples]
    assert len(set(ids)) == len(ids) == manifest["train"]["num_samples"]
    assert max(ids) < manifest["train"]["id_space"]
    for sample in samples:
        assert expected[sample["txt"]] == sample["json"]["group"]
        assert manifest["classnames"][sample["json"]["label"]] == (
            sample["json"]["category"].lower().replace("&", "and"))
        assert sample["png"].size == (16, 16)
        assert sample["png"].getpixel((0, 0)) == (255, 255, 255)  # transparency became white
    assert_sizes_match_shards(data / "train")
    assert (data / "ATTRIBUTION.txt").read_text().strip() == manifest["attribution"]
    assert "CC-BY 4.0" in manifest["attribution"] and "MIT" in manifest["attribution"]


def test_fake_twemoji_zeroshot_set_loads_in_clip_benchmark(fake_twemoji):
    root, expected, manifest = fake_twemoji
    dataset, items = load_wds_set(Path(manifest["root"]) / "heldout_zeroshot",
                                  "zeroshot_classification")
    # classes follow emoji.json's sort_order (reversed in the fake), not the file's order
    assert dataset.classes == ["flags", "people and body", "smileys and emotion"]
    assert dataset.templates == list(EMOJI_TEMPLATES)
    assert len(items) == manifest["counts"]["heldout"]["samples"]
    assert sorted({label for _, label in items}) == [0, 1, 2]  # stratified: each category
    assert items[0][0].shape == (3, 16, 16)


def test_rebuild_reuses_the_stamp_and_force_keeps_the_same_ids(fake_twemoji):
    root, expected, manifest = fake_twemoji
    data = Path(manifest["root"])
    build_args = dict(image_size=16, num_shards=2, twemoji_tarball=root / "fake.tgz")

    def key_to_emoji():
        return {s["__key__"]: (s["json"]["group"], s["json"]["skin_tone"])
                for s in read_samples(str(data / manifest["train"]["pattern"]))}

    before = key_to_emoji()
    again = build_demo_data(data, "twemoji", **build_args)
    assert not again["rebuilt"] and again["stamp"] == manifest["stamp"]
    forced = build_demo_data(data, "twemoji", force=True, **build_args)
    assert forced["rebuilt"] and key_to_emoji() == before
    resized = build_demo_data(data, "twemoji", **{**build_args, "image_size": 8})
    assert resized["rebuilt"] and resized["stamp"] != manifest["stamp"]
    build_demo_data(data, "twemoji", **build_args)  # leave the module fixture as it was


# ---------------------------------------------------------------- fallback and safety

def test_auto_falls_back_to_digits_loudly_when_npm_is_missing(tmp_path, capsys):
    manifest = build_demo_data(tmp_path / "data", "auto", num_shards=2, npm="no-such-npm-here",
                               cache_dir=tmp_path / "cache", image_size=32)
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice[0] == notice[-1] == "!" * 78 and len(notice) == 4   # a banner, not a line
    assert "no-such-npm-here" in notice[1] and "FALLING BACK TO THE SCIKIT-LEARN DIGITS" in notice[2]
    assert manifest["source"] == "digits-fallback"
    assert "no-such-npm-here" in manifest["provenance"]["fallback_reason"]
    counts = {split: manifest["counts"][split]["samples"] for split in ("train", "val", "heldout")}
    assert sum(counts.values()) == 1797 and 340 < counts["heldout"] < 380
    dataset, items = load_wds_set(Path(manifest["root"]) / "heldout_zeroshot",
                                  "zeroshot_classification")
    assert dataset.classes == [str(d) for d in range(10)] and len(items) == counts["heldout"]
    assert_sizes_match_shards(Path(manifest["root"]) / "train")
    for insisting in ("twemoji", "pool"):
        with pytest.raises(DataUnavailable, match="not on PATH"):
            build_demo_data(tmp_path / "other", insisting, npm="no-such-npm-here",
                            cache_dir=tmp_path / "cache")


def test_cached_tarball_with_wrong_integrity_is_discarded(tmp_path):
    bad = tmp_path / TWEMOJI.tarball
    bad.write_bytes(b"not the pinned tarball")
    with pytest.raises(DataUnavailable):
        fetch_twemoji_tarball(tmp_path, npm="no-such-npm-here")
    assert not bad.exists()


def test_build_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo data directory"):
        build_demo_data(tmp_path, "digits")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ---------------------------------------------------------------- the real Twemoji package

def test_real_twemoji_package(tmp_path):
    try:
        tarball = fetch_twemoji_tarball(REPO_ROOT / "build" / "cache", timeout_s=90)
    except DataUnavailable as error:
        pytest.skip(f"real Twemoji tarball not obtainable here: {error}")
    manifest = build_demo_data(tmp_path / "data", "twemoji", twemoji_tarball=tarball)
    counts = manifest["counts"]
    assert manifest["provenance"]["emoji"] == 1911
    assert sum(counts[s]["samples"] for s in counts) == 3786
    assert sum(counts[s]["groups"] for s in counts) == 1911
    assert 0.18 < counts["heldout"]["groups"] / 1911 < 0.22
    assert len(manifest["classnames"]) == 10
    root = Path(manifest["root"])
    captions = [s["txt"] for s in read_samples(str(root / manifest["train"]["pattern"]))]
    for set_name in ("heldout_retrieval", "val_retrieval"):
        captions += [s["txt"] for s in read_samples(str(root / set_name / "test" / "0.tar"))]
    assert len(captions) == 3786 and all(c.startswith("an emoji of ") for c in captions)
    assert {"an emoji of crossed swords", "an emoji of waving hand sign, dark skin tone",
            "an emoji of handshake, light skin tone, dark skin tone"} <= set(captions)
