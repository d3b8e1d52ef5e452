"""Metric wiring of eval/ against known answers, on scikit-learn digits written as wds sets.

An "oracle" model maps each image to the one-hot of its true class (or, for retrieval, of its own
identity) and each prompt to the one-hot of the class it names: it must score 100% / R@1 = 1.
A model that maps everything to one vector must score chance.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from eval.classification import (classification_metrics, evaluate_wds_classification,
                                 worst_group_accuracy)
from eval.imagenet import OPENAI_TEMPLATES, clip_benchmark_wnids, evaluate_variants, summarize
from eval.model import EvalModel
from eval.retrieval import evaluate_retrieval, open_retrieval_set
from eval.winogavil import cue_prompt, evaluate_winogavil
from eval.wds_sets import (write_classification_set, write_retrieval_set,
                           write_winogavil_set)

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {c}.", "a drawing of a {c}."]
PER_CLASS = 6


@pytest.fixture(scope="module")
def digits():
    """PER_CLASS images of each digit (balanced): (uint8 arrays [N, 8, 8], labels [N])."""
    data = load_digits()
    chosen = np.concatenate([np.flatnonzero(data.target == c)[:PER_CLASS] for c in range(10)])
    pixels = (data.images[chosen] * 255 / 16).round().astype(np.uint8)
    return pixels, data.target[chosen]


def pil(pixels):
    return [Image.fromarray(p) for p in pixels]


def to_pixels(image):
    return torch.tensor(np.asarray(image.convert("L")), dtype=torch.float32).flatten()


class LookupModel(torch.nn.Module):
    """encode_image: nearest reference image -> row of image_table; encode_text: token -> row."""

    def __init__(self, references, image_table, text_table):
        super().__init__()
        self.references = torch.tensor(references.reshape(len(references), -1), dtype=torch.float32)
        self.image_table, self.text_table = image_table.float(), text_table.float()

    def encode_image(self, images):
        nearest = torch.cdist(images.float(), self.references).argmin(dim=1)
        return self.image_table[nearest]

    def encode_text(self, tokens):
        return self.text_table[tokens]


def lookup_model(references, image_rows, text_to_row, text_rows):
    """EvalModel: image -> image_rows[nearest reference]; text -> text_rows[text_to_row[text]]."""

    def tokenizer(batch):
        unknown = [t for t in batch if t not in text_to_row]
        assert not unknown, f"oracle got unexpected prompts {unknown[:3]}"
        return torch.tensor([text_to_row[t] for t in batch])

    return EvalModel(LookupModel(references, image_rows, text_rows), tokenizer, to_pixels)


def one_hot(ids, dim):
    return torch.nn.functional.one_hot(torch.as_tensor(ids), dim).float()


def class_oracle(pixels, image_labels, classnames, templates, text_shift=0):
    """Images -> one-hot(label); "template(classname_c)" -> one-hot(c + text_shift).

    Only the classes that occur in image_labels get their own axis; the prompts of all other
    classes share one spare axis (keeps 1000-class prompt tables small).
    """
    used = sorted(set(int(y) for y in image_labels))
    axis = {c: i for i, c in enumerate(used)}
    prompts = {t.format(c=name): (axis[c] + text_shift) % len(used) if c in axis else len(used)
               for c, name in enumerate(classnames) for t in templates}
    image_rows = one_hot([axis[int(y)] for y in image_labels], len(used) + 1)
    return lookup_model(pixels, image_rows, prompts, torch.eye(len(used) + 1))


def constant_model(pixels, texts):
    return lookup_model(pixels, torch.ones(len(pixels), 4), dict.fromkeys(texts, 0),
                        torch.ones(1, 4))


@pytest.fixture(scope="module")
def classification_set(tmp_path_factory, digits):
    pixels, labels = digits
    root = tmp_path_factory.mktemp("wds") / "wds_digits_test"
    groups = [[i % 2, i % 3] for i in range(len(labels))]  # metadata columns: group ids
    write_classification_set(root, pil(pixels), labels, NAMES, TEMPLATES, max_count=25,
                             metadata=groups)
    return str(root)


def test_oracle_scores_100_percent(classification_set, digits):
    evm = class_oracle(*digits, NAMES, TEMPLATES)
    metrics = evaluate_wds_classification(evm, classification_set, batch_size=16,
                                          extra_metrics=("F1-macro_all", "acc_wg", "acc_top5_wg"))
    assert metrics == pytest.approx({"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0,
                                     "F1-macro_all": 1.0, "acc_wg": 1.0, "acc_top5_wg": 1.0})


def test_shifted_oracle_scores_zero(classification_set, digits):
    evm = class_oracle(*digits, NAMES, TEMPLATES, text_shift=1)
    metrics = evaluate_wds_classification(evm, classification_set, batch_size=16)
    assert metrics["acc1"] == 0.0 and metrics["mean_per_class_recall"] == 0.0


def test_constant_model_scores_chance(classification_set, digits):
    prompts = [t.format(c=name) for name in NAMES for t in TEMPLATES]
    metrics = evaluate_wds_classification(constant_model(digits[0], prompts), classification_set)
    # One class is predicted for every image of a balanced set: 1/10 either way.
    assert metrics["acc1"] == pytest.approx(0.1)
    assert metrics["mean_per_class_recall"] == pytest.approx(0.1)


def test_worst_group_accuracy_is_minimum_over_groups(classification_set, digits):
    pixels, labels = digits
    wrong_in_group_1 = [(y + 1) % 10 if i % 3 == 1 else y for i, y in enumerate(labels)]
    evm = class_oracle(pixels, wrong_in_group_1, NAMES, TEMPLATES)
    metrics = evaluate_wds_classification(
        evm, classification_set, extra_metrics=("acc_worst_region", "acc_worst_year"))
    # acc_worst_region groups by column 0 (i % 2): both halves hold a third of wrong samples.
    assert metrics["acc_worst_region"] == pytest.approx(2 / 3)
    assert metrics["acc_worst_year"] == 0.0  # column 1 (i % 3): group 1 is all wrong
    assert metrics["acc1"] == pytest.approx(2 / 3)


def test_extra_metric_formulas_by_hand():
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 3.0, 0]])
    targets = torch.tensor([0, 0, 1, 1])
    groups = torch.tensor([[0], [0], [1], [1]])
    metrics = classification_metrics(logits, targets, 3, ("F1-macro_all", "acc_wg"), groups)
    # F1 class 0: P=1, R=1/2 -> 2/3; class 1: P=2/3, R=1 -> 4/5; macro = 11/15.
    assert metrics["F1-macro_all"] == pytest.approx(11 / 15)
    assert metrics["acc_wg"] == 0.5 and metrics["acc5"] is None
    # Labels absent from the targets do not enter the macro average (WILDS' F1).
    absent = classification_metrics(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]),
                                     torch.tensor([0, 0]), 3, ("F1-macro_all",))
    assert absent["F1-macro_all"] == pytest.approx(2 / 3)
    top5 = worst_group_accuracy(torch.eye(6)[[5, 5]], torch.tensor([0, 1]), torch.tensor([0, 1]), 5)
    assert top5 == 0.0  # targets 0 and 1 are the two lowest logits, outside a top-5 of 6


@pytest.fixture(scope="module")
def retrieval_set(tmp_path_factory, digits):
    pixels, labels = digits
    captions = [[f"digit {y} sample {i}", f"sample {i} shows a {NAMES[y]}"]
                for i, y in enumerate(labels)]
    root = tmp_path_factory.mktemp("wds") / "wds_retrieval_test"
    write_retrieval_set(root, pil(pixels), captions, max_count=25)
    return str(root), captions


def test_retrieval_oracle_and_constant(retrieval_set, digits):
    root, captions = retrieval_set
    n = len(captions)
    texts = {text: i for i, caps in enumerate(captions) for text in caps}
    oracle = lookup_model(digits[0], torch.eye(n), texts, torch.eye(n))
    metrics = evaluate_retrieval(oracle, open_retrieval_set(root, oracle.transform), 16)
    assert metrics["image_retrieval_recall@1"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 1.0 and metrics["mean_recall@1"] == 1.0
    flat = constant_model(digits[0], list(texts))
    chance = evaluate_retrieval(flat, open_retrieval_set(root, flat.transform), 16)
    assert chance["image_retrieval_recall@1"] == pytest.approx(1 / n)
    assert chance["text_retrieval_recall@1"] == pytest.approx(1 / n)


def test_retrieval_from_flickr_style_csv(tmp_path, digits):
    pixels, labels = digits
    rows = ["filepath\ttitle"]
    for i, image in enumerate(pil(pixels[:12])):
        image.save(tmp_path / f"{i}.png")
        rows += [f"{i}.png\tdigit {labels[i]} sample {i}", f"{i}.png\tsample {i} again"]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    texts = {r.split("\t")[1]: int(r.split("\t")[0][:-4]) for r in rows[1:]}
    oracle = lookup_model(pixels[:12], torch.eye(12), texts, torch.eye(12))
    dataset = open_retrieval_set(tmp_path / "test.csv", oracle.transform)
    assert len(dataset) == 12 and len(dataset[0][1]) == 2
    assert evaluate_retrieval(oracle, dataset, 5)["mean_recall@1"] == 1.0


def test_winogavil_oracle_and_anti_oracle(tmp_path, digits):
    pixels = digits[0]
    rng = np.random.default_rng(0)
    sizes, cues, candidates, associations, picks = [5, 6, 10, 12, 10], [], [], [], []
    for i, size in enumerate(sizes):
        pick = rng.choice(len(pixels), size, replace=False)
        cues.append(f"cue {i}")
        candidates.append(pil(pixels[pick]))
        associations.append(sorted(rng.choice(size, 2, replace=False).tolist()))
        picks.append(pick)
    write_winogavil_set(tmp_path, cues, candidates, associations)
    image_rows = torch.eye(len(pixels))
    text_to_row = {cue_prompt(cue): i for i, cue in enumerate(cues)}
    for sign, expected in ((1.0, 1.0), (-1.0, 0.0)):
        text_rows = torch.stack([sign * image_rows[pick[assoc]].sum(0)
                                 for pick, assoc in zip(picks, associations)])
        model = lookup_model(pixels, image_rows, text_to_row, text_rows)
        metrics = evaluate_winogavil(model, str(tmp_path))
        assert metrics["jaccard_score_10-12"] == expected
        assert metrics["avg_jaccard_score"] == expected and metrics["jaccard_score_6"] == expected


def test_imagenet_folders_use_openclip_names_and_subsets(tmp_path, digits):
    pixels, labels = digits
    subset = clip_benchmark_wnids("imagenet_a_wnids")
    a_dir, v2_dir = tmp_path / "imagenet-a", tmp_path / "imagenetv2"
    class_index = [3 * d + 1 for d in range(10)]  # spread over the 200 classes
    for i, (image, y) in enumerate(zip(pil(pixels), labels)):
        for folder in (a_dir / subset[class_index[y]], v2_dir / str(class_index[y])):
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    all_wnids = clip_benchmark_wnids()
    a_names = [IMAGENET_CLASSNAMES[all_wnids.index(w)] for w in subset]
    image_labels = [class_index[y] for y in labels]
    a_oracle = class_oracle(pixels, image_labels, a_names, OPENAI_TEMPLATES)
    records = evaluate_variants(a_oracle, {"imagenet-a": str(a_dir)}, batch_size=20)
    assert records[0]["metrics"]["acc1"] == 1.0 and records[0]["metrics"]["acc5"] == 1.0
    v2_oracle = class_oracle(pixels, image_labels, IMAGENET_CLASSNAMES, OPENAI_TEMPLATES)
    records += evaluate_variants(v2_oracle, {"imagenetv2": str(v2_dir)}, batch_size=20)
    assert records[1]["main_metric"] == 1.0
    summary = summarize(records, {})
    assert summary["partial"] and summary["headline"]["imagenet_and_variants"]["n"] == 2
    assert summary["headline"]["imagenet_and_variants"]["of"] == 7


def test_writers_produce_clip_benchmark_layout_and_reject_bad_input(tmp_path, digits):
    images = pil(digits[0][:3])
    assert write_classification_set(tmp_path / "c", images, [0, 1, 1], ["a", "b"], ["{c}"],
                                    max_count=2) == 2
    assert (tmp_path / "c" / "test" / "nshards.txt").read_text() == "2\n"
    assert sorted(p.name for p in (tmp_path / "c" / "test").glob("*.tar")) == ["0.tar", "1.tar"]
    assert (tmp_path / "c" / "classnames.txt").read_text() == "a\nb\n"
    assert not (tmp_path / "c" / "dataset_type.txt").exists()
    write_retrieval_set(tmp_path / "r", images, ["x", ["y", "z"], "w"])
    assert (tmp_path / "r" / "dataset_type.txt").read_text() == "retrieval\n"
    with pytest.raises(ValueError, match="outside"):
        write_classification_set(tmp_path / "bad", images, [0, 1, 2], ["a", "b"], ["{c}"])
    with pytest.raises(ValueError, match="contain '{c}'"):
        write_classification_set(tmp_path / "bad", images, [0, 1, 1], ["a", "b"], ["a photo"])
    with pytest.raises(ValueError, match="newline"):
        write_retrieval_set(tmp_path / "bad", images, ["x", "y\nz", "w"])
