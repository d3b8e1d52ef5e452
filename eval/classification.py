"""Zero-shot classification through clip_benchmark, plus DataComp's extra metrics.

The classifier (class prompts -> averaged, normalised text embeddings) and the logits come from
clip_benchmark.metrics.zeroshot_classification; top-k accuracy is its ``accuracy``; mean
per-class recall is sklearn's balanced accuracy, as in clip_benchmark and DataComp. The extra
metrics follow DataComp's WILDS/fairness evaluators: macro F1 over the labels present
("F1-macro_all") and worst-group accuracies (eval/tasks.py GROUP_METRICS).
"""
import os

import numpy as np
import torch
import webdataset as wds
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.metrics import zeroshot_classification as zsc
from sklearn.metrics import balanced_accuracy_score, f1_score

from eval.tasks import GROUP_METRICS
from eval.wds_sets import is_wds_set

IMAGE_EXTS = "webp;png;jpg;jpeg"


def open_wds_classification(root, transform, with_metadata=False):
    """(dataset, classnames, templates) for a clip_benchmark wds classification set.

    The dataset yields (image, label) or, with_metadata, (image, label, metadata row).
    """
    if not is_wds_set(root):
        raise FileNotFoundError(f"not a clip_benchmark wds set (no test/nshards.txt): {root}")
    type_file = os.path.join(root, "dataset_type.txt")
    if os.path.isfile(type_file):
        kind = open(type_file).read().strip().lower()
        if kind != "classification":
            raise ValueError(f"{root}: dataset_type.txt says {kind!r}, expected a "
                             "single-label classification set")
    ds = build_dataset(f"wds/{os.path.basename(os.path.normpath(root))}", root=str(root),
                       transform=transform, split="test", download=False,
                       task="zeroshot_classification")
    if not ds.classes or not ds.templates:
        raise ValueError(f"{root}: classnames.txt and zeroshot_classification_templates.txt "
                         "are required for zero-shot classification")
    if not with_metadata:
        return ds, ds.classes, ds.templates
    with open(os.path.join(root, "test", "nshards.txt")) as f:
        n_shards = int(f.read())
    urls = [os.path.join(root, "test", f"{i}.tar") for i in range(n_shards)]
    samples = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda src: src)
               .decode("pil").to_tuple(IMAGE_EXTS, "cls", "npy")
               .map_tuple(transform, None, torch.as_tensor))
    return samples, ds.classes, ds.templates


class _MetadataTap:
    """Feeds (images, labels) to clip_benchmark and keeps each batch's metadata in order."""

    def __init__(self, loader):
        self.loader, self.metadata = loader, []

    def __iter__(self):
        for images, labels, metadata in self.loader:
            self.metadata.append(metadata)
            yield images, labels


def zeroshot_logits(evm, dataset, classnames, templates, batch_size=64, workers=0,
                    with_metadata=False):
    """(logits, targets, metadata or None) of the zero-shot classifier over the dataset."""
    classifier = zsc.zero_shot_classifier(evm.model, evm.tokenizer, classnames, templates,
                                          evm.device_type, amp=evm.amp)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    tap = _MetadataTap(loader) if with_metadata else None
    try:
        logits, targets = zsc.run_classification(evm.model, classifier, tap or loader,
                                                 evm.device_type, amp=evm.amp)
    except (RuntimeError, ValueError) as error:  # torch.cat of no batches
        if "non-empty list" in str(error):
            raise ValueError("the dataset yielded no samples") from error
        raise
    metadata = torch.cat(tap.metadata) if tap else None
    return logits, targets, metadata


def topk_correct(logits, targets, k):
    """Per-sample 0/1: is the target among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets.view(-1, 1)).any(dim=1).float()


def worst_group_accuracy(logits, targets, groups, k=1):
    """Minimum over non-empty groups of the group's top-k accuracy (WILDS' worst-group)."""
    correct = topk_correct(logits, targets, k)
    return min(correct[groups == g].mean().item() for g in torch.unique(groups))


def classification_metrics(logits, targets, n_classes, extra_metrics=(), metadata=None):
    """acc1, acc5 (None under 5 classes), mean_per_class_recall, and the named extras."""
    if n_classes >= 5:
        acc1, acc5 = zsc.accuracy(logits, targets, topk=(1, 5))
    else:
        (acc1,), acc5 = zsc.accuracy(logits, targets, topk=(1,)), None
    preds = logits.argmax(dim=1)
    metrics = {"acc1": acc1, "acc5": acc5,
               "mean_per_class_recall": balanced_accuracy_score(targets, preds)}
    for name in extra_metrics:
        if name == "F1-macro_all":
            metrics[name] = f1_score(targets, preds, average="macro",
                                     labels=np.unique(targets.numpy()))
            continue
        if name not in GROUP_METRICS:
            raise ValueError(f"unknown metric {name!r}")
        if metadata is None:
            raise ValueError(f"metric {name!r} needs per-sample .npy metadata (group ids)")
        k, column = GROUP_METRICS[name]
        metrics[name] = worst_group_accuracy(logits, targets, metadata[:, column], k)
    return metrics


def evaluate_classification(evm, dataset, classnames, templates, batch_size=64, workers=0,
                            extra_metrics=(), with_metadata=False):
    """Zero-shot classification metrics of evm on dataset.

    The dataset yields (image, label), or (image, label, metadata row) when with_metadata.
    """
    logits, targets, metadata = zeroshot_logits(evm, dataset, classnames, templates,
                                                batch_size, workers, with_metadata)
    bad = targets[(targets < 0) | (targets >= len(classnames))]
    if len(bad):
        raise ValueError(f"labels {bad.unique().tolist()[:5]} outside [0, {len(classnames)})")
    return classification_metrics(logits, targets, len(classnames), extra_metrics, metadata)


def evaluate_wds_classification(evm, root, batch_size=64, workers=0, extra_metrics=()):
    """Zero-shot metrics on a clip_benchmark wds classification set at root."""
    needs_metadata = any(name in GROUP_METRICS for name in extra_metrics)
    dataset, classnames, templates = open_wds_classification(root, evm.transform, needs_metadata)
    return evaluate_classification(evm, dataset, classnames, templates, batch_size, workers,
                                   extra_metrics, needs_metadata)
