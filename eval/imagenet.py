"""Zero-shot ImageNet-1k and its six variants from local folders ("ImageNet & variants").

Class names are OpenCLIP's IMAGENET_CLASSNAMES and the prompts its 80 OPENAI_IMAGENET_TEMPLATES
(open_clip.zero_shot_metadata). ImageNet-A/O/R use the 200-class subsets that clip_benchmark
defines (read from clip_benchmark.datasets.builder); ObjectNet uses clip_benchmark's loader and
its 113 ObjectNet classes. Expected layouts (nothing is downloaded):

  --imagenet-val     DIR/<wnid>/*.JPEG          the 50,000 validation images, 1000 wnid folders
  --imagenet-v2      DIR/<0..999>/*.jpeg        imagenetv2-matched-frequency-format-val
  --imagenet-sketch  DIR/<wnid>/*.JPEG          ImageNet-Sketch "sketch" folder
  --imagenet-a/-o/-r DIR/<wnid>/*.jpg           Hendrycks' tarballs, 200 wnid folders each
  --objectnet        DIR/{objectnet-1.0/images/<folder>/*.png, folder_to_objectnet_label.json,
                          objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json,
                          imagenet_to_label_2012_v2}   (the zip's mappings/ copied into DIR)

Any of these paths may instead be a DataComp/clip_benchmark wds set (DIR/test/nshards.txt), read
with its own classnames.txt and templates. Reports top-1/top-5 per set and the 7-set average of
top-1 (flagged partial when fewer than 7 sets are given).

    python -m eval.imagenet --checkpoint logs/x/checkpoints/epoch_3.pt --imagenet-val data/val
"""
import argparse
import ast
import inspect
import os
from dataclasses import dataclass

from clip_benchmark.datasets import builder as cb_builder
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from torchvision.datasets import ImageFolder

from eval.classification import evaluate_classification, open_wds_classification
from eval.model import add_model_args, default_output_dir, model_from_args
from eval.results import mean_headline, publish, run_cli, task_record
from eval.tasks import GROUPS, TASKS_BY_KEY
from eval.wds_sets import is_wds_set

OPENAI_TEMPLATES = [template("{c}") for template in OPENAI_IMAGENET_TEMPLATES]
OBJECTNET_FILES = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                   "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2",
                   "objectnet-1.0/images")


@dataclass(frozen=True)
class Variant:
    flag: str
    labels: str            # "wnid": folders named by wnid; "index": folders 0..999; "objectnet"
    subset: str = None     # name of clip_benchmark's wnid list for 200-class subsets


VARIANTS = {
    "imagenet1k": Variant("--imagenet-val", "wnid"),
    "imagenetv2": Variant("--imagenet-v2", "index"),
    "imagenet_sketch": Variant("--imagenet-sketch", "wnid"),
    "imagenet-a": Variant("--imagenet-a", "wnid", "imagenet_a_wnids"),
    "imagenet-o": Variant("--imagenet-o", "wnid", "imagenet_o_wnids"),
    "imagenet-r": Variant("--imagenet-r", "wnid", "imagenet_r_wnids"),
    "objectnet": Variant("--objectnet", "objectnet"),
}


def clip_benchmark_wnids(subset=None):
    """ImageNet-1k wnids in class order, or clip_benchmark's named 200-class subset of them."""
    all_wnids = list(cb_builder.all_imagenet_wordnet_ids)
    if subset is None:
        return all_wnids
    tree = ast.parse(inspect.getsource(cb_builder))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == subset for t in node.targets):
            chosen = set(ast.literal_eval(node.value))
            return [wnid for wnid in all_wnids if wnid in chosen]
    raise LookupError(f"clip_benchmark.datasets.builder defines no {subset}; "
                      "was clip_benchmark upgraded past 1.6.2?")


class LabeledImageFolder(ImageFolder):
    """ImageFolder whose labels come from a fixed folder-name -> label map, not folder order.

    A partial copy (some class folders absent) keeps the true labels; an unknown folder is an
    error naming it.
    """

    def __init__(self, root, folder_to_label, transform=None):
        self.folder_to_label = folder_to_label
        super().__init__(root, transform=transform)

    def find_classes(self, directory):
        folders = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [name for name in folders if name not in self.folder_to_label]
        if unknown:
            raise ValueError(f"{directory}: unexpected class folder(s) {unknown[:5]}")
        if not folders:
            raise FileNotFoundError(f"{directory}: no class folders")
        return folders, {name: self.folder_to_label[name] for name in folders}


def open_variant(key, path, transform):
    """(dataset, classnames, templates) for one of the seven sets at a local path."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{VARIANTS[key].flag} {path}: no such directory")
    if is_wds_set(path):
        return open_wds_classification(path, transform)
    variant = VARIANTS[key]
    if variant.labels == "objectnet":
        absent = [name for name in OBJECTNET_FILES if not os.path.exists(os.path.join(path, name))]
        if absent:
            raise FileNotFoundError(f"--objectnet {path}: missing {absent}")
        dataset = cb_builder.objectnet.ObjectNetDataset(root=path, transform=transform)
        return dataset, dataset.classes, OPENAI_TEMPLATES
    all_wnids = clip_benchmark_wnids()
    wnids = clip_benchmark_wnids(variant.subset)
    classnames = [IMAGENET_CLASSNAMES[all_wnids.index(wnid)] for wnid in wnids]
    if variant.labels == "index":
        folder_to_label = {str(i): i for i in range(len(wnids))}
    else:
        folder_to_label = {wnid: i for i, wnid in enumerate(wnids)}
    return LabeledImageFolder(path, folder_to_label, transform), classnames, OPENAI_TEMPLATES


def evaluate_variants(evm, paths, batch_size=64, workers=0, log=print):
    """Records for each {variant key: path}; the main metric is top-1 accuracy."""
    records = []
    for key, path in paths.items():
        dataset, classnames, templates = open_variant(key, path, evm.transform)
        metrics = evaluate_classification(evm, dataset, classnames, templates, batch_size, workers)
        records.append(task_record(key, TASKS_BY_KEY[key].name, metrics, "acc1", evm.info))
        log(f"[done] {TASKS_BY_KEY[key].name}: top-1 {metrics['acc1']:.4f}")
    return records


def summarize(records, info):
    by_key = {record["key"]: record for record in records}
    headline = {"imagenet_and_variants": mean_headline(by_key, GROUPS["imagenet_and_variants"]),
                "imagenet1k": mean_headline(by_key, ["imagenet1k"]),
                "imagenet_dist_shifts": mean_headline(by_key, GROUPS["imagenet_dist_shifts"])}
    missing = [key for key in VARIANTS if key not in by_key]
    return {"suite": "imagenet", "info": info, "headline": headline,
            "tasks": {key: record["main_metric"] for key, record in by_key.items()},
            "partial": bool(missing), "missing": missing}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    for key, variant in VARIANTS.items():
        parser.add_argument(variant.flag, dest=key, default=None, help=f"local {key} set")
    args = parser.parse_args(argv)
    if not any(getattr(args, key) for key in VARIANTS):
        parser.error("give at least one of " + ", ".join(v.flag for v in VARIANTS.values()))
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = {key: getattr(args, key) for key in VARIANTS if getattr(args, key)}
    evm = model_from_args(args)
    records = evaluate_variants(evm, paths, args.batch_size, args.workers)
    summary = summarize(records, evm.info)
    return publish(args.output_dir or default_output_dir(args.checkpoint), "imagenet", records,
                   summary)


if __name__ == "__main__":
    run_cli(main, FileNotFoundError, ValueError, LookupError)
