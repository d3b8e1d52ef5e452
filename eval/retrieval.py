"""Zero-shot image-text retrieval on local caption sets, metrics from clip_benchmark.

Two local formats:

* a clip_benchmark wds retrieval set (``DIR/test/nshards.txt``, ``DIR/test/0.tar`` with
  ``<key>.png`` + ``<key>.txt``, one caption per line; ``DIR/dataset_type.txt`` = retrieval),
  e.g. written by eval/wds_sets.py ``write_retrieval_set``;
* a Flickr-style CSV (OpenCLIP's: ``filepath<TAB>title``), one row per caption, rows with the
  same image path grouped into one image with several captions; image paths are relative to
  ``--image-root`` (default: the CSV's directory).

Reports image/text recall@{1,5,10} and DataComp's main metric ``mean_recall@1`` (mean of image
and text R@1). Usage::

    python -m eval.retrieval --checkpoint logs/x/checkpoints/epoch_3.pt --data data/flickr_test.csv
"""
import argparse
import csv
import os
from pathlib import Path

import torch
from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_retrieval as zsr
from PIL import Image

from eval.model import add_model_args, default_output_dir, model_from_args
from eval.results import publish, run_cli, task_record
from eval.wds_sets import is_wds_set


class CsvCaptions(torch.utils.data.Dataset):
    """(image, [captions]) per distinct image of a Flickr-style CSV."""

    def __init__(self, csv_path, transform, img_key="filepath", caption_key="title",
                 separator="\t", image_root=None):
        csv_path = Path(csv_path)
        self.image_root = Path(image_root) if image_root else csv_path.parent
        self.transform = transform
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f, delimiter=separator)
            missing = {img_key, caption_key} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: no column(s) {sorted(missing)}; "
                                 f"columns are {reader.fieldnames}")
            captions = {}
            for row in reader:
                captions.setdefault(row[img_key], []).append(row[caption_key])
        if not captions:
            raise ValueError(f"{csv_path}: no rows")
        self.items = list(captions.items())

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, captions = self.items[index]
        with Image.open(self.image_root / path) as image:
            return self.transform(image.convert("RGB")), captions


def open_retrieval_set(path, transform, **csv_kwargs):
    """A dataset of (image, [captions]) from a wds retrieval dir or a CSV file."""
    path = str(path)
    if os.path.isfile(path):
        return CsvCaptions(path, transform, **csv_kwargs)
    if not is_wds_set(path):
        raise FileNotFoundError(f"{path}: neither a CSV file nor a wds set with test/nshards.txt")
    type_file = os.path.join(path, "dataset_type.txt")
    if not os.path.isfile(type_file) or open(type_file).read().strip() != "retrieval":
        raise ValueError(f"{path}: dataset_type.txt must say 'retrieval' for a caption set")
    name = os.path.basename(os.path.normpath(path))
    return build_dataset(f"wds/{name}", root=path, transform=transform, split="test",
                         download=False, task="zeroshot_retrieval")


def evaluate_retrieval(evm, dataset, batch_size=64, workers=0):
    """clip_benchmark's retrieval recalls plus DataComp's mean_recall@1."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=image_captions_collate_fn)
    metrics = zsr.evaluate(evm.model, loader, evm.tokenizer, evm.device_type, amp=evm.amp,
                           recall_k_list=[1, 5, 10])
    metrics["mean_recall@1"] = 0.5 * (metrics["image_retrieval_recall@1"]
                                      + metrics["text_retrieval_recall@1"])
    return metrics


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--data", required=True, help="wds retrieval dir or CSV file")
    parser.add_argument("--name", default=None, help="task name in the results (default: --data)")
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="title")
    parser.add_argument("--csv-separator", default="\t")
    parser.add_argument("--image-root", default=None, help="base of CSV image paths")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    evm = model_from_args(args)
    dataset = open_retrieval_set(args.data, evm.transform, img_key=args.csv_img_key,
                                 caption_key=args.csv_caption_key, separator=args.csv_separator,
                                 image_root=args.image_root)
    metrics = evaluate_retrieval(evm, dataset, args.batch_size, args.workers)
    name = args.name or Path(args.data).stem
    record = task_record(name, name, metrics, "mean_recall@1", evm.info)
    headline = {"mean_recall@1": {"value": record["main_metric"], "n": 1, "of": 1, "missing": []}}
    summary = {"suite": "retrieval", "info": evm.info, "headline": headline,
               "tasks": {name: record["main_metric"]}, "partial": False, "missing": []}
    output_dir = args.output_dir or default_output_dir(args.checkpoint)
    return publish(output_dir, "retrieval", [record], summary)


if __name__ == "__main__":
    run_cli(main, FileNotFoundError, ValueError)
