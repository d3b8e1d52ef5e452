"""Every checkpoint of a demo run evaluated through ``eval/`` (clip_benchmark), and read back.

Each ``<run_dir>/eval/epoch_N/`` gets ``demo_results.jsonl`` (one record per set, eval/results.py's
format) and ``demo_summary.json``, whose headline holds the report's columns (:data:`COLUMNS`).
The demo reads its numbers back from those summaries through ``eval.report.load_points``, the
same reader ``make report`` uses, never from memory.
"""
import contextlib
import io
from collections import Counter
from pathlib import Path

SUITE = "demo"  # eval/results.py file names: demo_results.jsonl, demo_summary.json
HELDOUT_RETRIEVAL, HELDOUT_ZEROSHOT, VAL_RETRIEVAL = (
    "heldout_retrieval", "heldout_zeroshot", "val_retrieval")
# Report columns: (key, header, task, metric). clip_benchmark's "text_retrieval" finds the
# caption for an image (image→text); "image_retrieval" finds the image for a caption.
# Twemoji and digits data: one held-out split.
HELDOUT_COLUMNS = (
    ("i2t_r1", "I→T R@1", HELDOUT_RETRIEVAL, "text_retrieval_recall@1"),
    ("i2t_r5", "I→T R@5", HELDOUT_RETRIEVAL, "text_retrieval_recall@5"),
    ("t2i_r1", "T→I R@1", HELDOUT_RETRIEVAL, "image_retrieval_recall@1"),
    ("t2i_r5", "T→I R@5", HELDOUT_RETRIEVAL, "image_retrieval_recall@5"),
    ("mean_r1", "mean R@1", HELDOUT_RETRIEVAL, "mean_recall@1"),
    ("zeroshot_top1", "zero-shot top-1", HELDOUT_ZEROSHOT, "acc1"),
)


def _retrieval_columns(prefix, title, task):
    return ((f"{prefix}i2t_r1", f"{title} I→T R@1", task, "text_retrieval_recall@1"),
            (f"{prefix}i2t_r5", f"{title} I→T R@5", task, "text_retrieval_recall@5"),
            (f"{prefix}t2i_r1", f"{title} T→I R@1", task, "image_retrieval_recall@1"),
            (f"{prefix}t2i_r5", f"{title} T→I R@5", task, "image_retrieval_recall@5"))


# The pool (demo/data/pool.py): concept held-out (the headline, "mean_r1"), style held-out,
# the concept held-out split by family, and zero-shot over the held-out concepts.
POOL_COLUMNS = (
    *_retrieval_columns("", "concept", "concept_retrieval"),
    ("mean_r1", "concept mean R@1", "concept_retrieval", "mean_recall@1"),
    *_retrieval_columns("style_", "style", "style_retrieval"),
    ("style_mean_r1", "style mean R@1", "style_retrieval", "mean_recall@1"),
    ("emoji_mean_r1", "concept emoji mean R@1", "concept_emoji_retrieval", "mean_recall@1"),
    ("icons_mean_r1", "concept icons mean R@1", "concept_icons_retrieval", "mean_recall@1"),
    ("zeroshot_top1", "zero-shot top-1", "concept_zeroshot", "acc1"),
)
COLUMNS = HELDOUT_COLUMNS + POOL_COLUMNS   # every key a summary may carry


def columns_for(eval_set_names):
    """The report's columns for a data directory's evaluation sets."""
    return POOL_COLUMNS if "concept_retrieval" in eval_set_names else HELDOUT_COLUMNS


def heldout_sets(eval_set_names):
    """The sets a demo run is evaluated on: every set but validation (tuning only)."""
    return tuple(name for name in eval_set_names if name != VAL_RETRIEVAL)


def zeroshot_set(eval_set_names):
    return next(name for name in eval_set_names if name.endswith("zeroshot"))


class EvalSets:
    """The demo's clip_benchmark wds sets, decoded and transformed once per process.

    Every method uses the same model architecture, hence the same image transform, so the
    tensors are reused across checkpoints; only the encoders change.
    """

    def __init__(self, data_root, names):
        self.data_root, self.names, self._cache = Path(data_root), tuple(names), None

    def load(self, transform):
        from eval.classification import open_wds_classification
        from eval.retrieval import open_retrieval_set

        if self._cache is None:
            cache = {}
            for name in self.names:
                root = self.data_root / name
                if name.endswith("retrieval"):
                    cache[name] = (list(open_retrieval_set(root, transform)),)
                else:
                    dataset, classnames, templates = open_wds_classification(root, transform)
                    cache[name] = (list(dataset), classnames, templates)
            self._cache = cache
        return self._cache

    def loaded(self, name):
        """A set decoded by an earlier load()."""
        if self._cache is None:
            raise RuntimeError("EvalSets.loaded() before any checkpoint was evaluated")
        return self._cache[name]


def majority_class_share(classification_set):
    """Top-1 of always answering the most frequent class: the floor a classifier must beat."""
    labels = Counter(int(label) for _, label in classification_set)
    return max(labels.values()) / sum(labels.values())


def column_headline(records):
    """The summary headline: each report column whose set was evaluated, from the records."""
    by_task = {record["key"]: record for record in records}
    return {key: {"value": by_task[task]["metrics"][metric], "n": 1, "of": 1, "missing": []}
            for key, _, task, metric in COLUMNS if task in by_task}


def evaluate_checkpoint(checkpoint, eval_sets, samples_per_epoch, output_dir):
    """Evaluate one checkpoint on every set; writes demo_results.jsonl + demo_summary.json."""
    from eval.classification import evaluate_classification
    from eval.model import load_model
    from eval.results import task_record, write_results
    from eval.retrieval import evaluate_retrieval

    evm = load_model(checkpoint, samples_per_epoch=samples_per_epoch)
    records = []
    # clip_benchmark draws its own tqdm bars per batch; the driver's bars say enough.
    with contextlib.redirect_stderr(io.StringIO()):
        for name, loaded in eval_sets.load(evm.transform).items():
            if name.endswith("retrieval"):
                metrics = evaluate_retrieval(evm, loaded[0], batch_size=512)
                records.append(task_record(name, name, metrics, "mean_recall@1", evm.info))
            else:
                metrics = evaluate_classification(evm, *loaded, batch_size=512)
                records.append(task_record(name, name, metrics, "acc1", evm.info))
    summary = {"suite": SUITE, "info": evm.info, "headline": column_headline(records),
               "tasks": {r["key"]: r["main_metric"] for r in records}, "partial": False,
               "missing": []}
    return write_results(output_dir, SUITE, records, summary)


def checkpoints_of(run_dir):
    """epoch_N.pt files of a run, by epoch."""
    found = {}
    for path in (Path(run_dir) / "checkpoints").glob("epoch_*.pt"):
        suffix = path.stem.split("_", 1)[1]
        if suffix.isdigit():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def evaluate_run(run_dir, eval_sets, samples_per_epoch, label, show_progress=True):
    from tqdm import tqdm

    checkpoints = checkpoints_of(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints/epoch_N.pt under {run_dir}")
    for epoch, checkpoint in tqdm(checkpoints.items(), desc=f"eval  {label}", unit="ckpt",
                                  disable=not show_progress, dynamic_ncols=True):
        evaluate_checkpoint(checkpoint, eval_sets, samples_per_epoch,
                            Path(run_dir) / "eval" / f"epoch_{epoch}")


def read_run_points(run_dir):
    """Per evaluated epoch: {"epoch", "samples_seen", <column key>: value or None}."""
    from eval.report import load_points

    keys = dict.fromkeys(key for key, *_ in COLUMNS)
    points = [{"epoch": point["epoch"], "samples_seen": point["samples_seen"],
               **{key: (point["headline"].get(key) or {}).get("value") for key in keys}}
              for point in load_points(Path(run_dir) / "eval")]
    return sorted(points, key=lambda p: p["epoch"])
