"""The DataComp 38-task evaluation suite, recorded as data.

Source: DataComp's ``tasklist.yml`` and ``eval_utils/`` (github.com/mlfoundations/datacomp).
Its tasklist has 40 entries; FairFace and UTKFace have no main metric and are left out of the
average, which leaves the 38 tasks below. A task's main metric defaults to ``acc1``. Keys are
DataComp's (its current tasklist names Flickr ``retrieval/flickr_1k_test_image_text_retrieval``),
so a results file lines up with DataComp's ``eval_results.jsonl``; FairFace and UTKFace are
``FAIRNESS_TASKS``, run when their sets are present (eval/fairness.py), reported apart.

Data layout: each task reads ``<data-dir>/<task.dirname>``, a clip_benchmark webdataset directory.
For classification tasks the name is the one DataComp's ``download_evalsets.py`` writes,
``wds_<key with "/" -> "-">_test`` with a leading ``fairness/`` dropped. DataComp reads Flickr 1k,
MSCOCO and WinoGAViL from Hugging Face caches instead; here they are local webdatasets too:
``wds_flickr30k_test``, ``wds_mscoco_2014_5k_test_image_text_retrieval_test`` (clip_benchmark's
retrieval layout, see eval/wds_sets.py) and ``wds_winogavil_test`` (eval/wds_sets.py's
``write_winogavil_set`` layout).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    key: str                      # DataComp tasklist key, e.g. "vtab/caltech101"
    name: str                     # display name, e.g. "Caltech-101"
    main_metric: str = "acc1"
    kind: str = "classification"  # classification | retrieval | winogavil
    extra_metrics: tuple = field(default=())  # names from GROUP_METRICS or "F1-macro_all"
    data_dirname: str = None      # the local set's directory, where it is not derived from key

    @property
    def dirname(self):
        if self.data_dirname:
            return self.data_dirname
        short = self.key.split("/", 1)[1] if self.key.split("/")[0] in _FLAT_PREFIXES else self.key
        return f"wds_{short.replace('/', '-')}_test"


_FLAT_PREFIXES = ("fairness", "retrieval", "misc")

# Worst-group metrics (WILDS convention): accuracy per group, minimum over non-empty groups.
# name -> (k of top-k accuracy, column of the sample's .npy metadata that holds the group id).
# Columns follow DataComp's evaluators: FMoW [region, year, y], Dollar Street
# [income_ds, income_meta, region], GeoDE [region, country].
GROUP_METRICS = {
    "acc_worst_region": (1, 0),
    "acc_worst_year": (1, 1),
    "acc_top5_wg": (5, 0),
    "acc_wg": (1, 0),
}

_MPCR = "mean_per_class_recall"
_R1 = "mean_recall@1"

DATACOMP_TASKS = (
    Task("vtab/caltech101", "Caltech-101", _MPCR),
    Task("cifar10", "CIFAR-10"),
    Task("vtab/cifar100", "CIFAR-100"),
    Task("vtab/clevr_count_all", "CLEVR Counts"),
    Task("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    Task("country211", "Country211"),
    Task("vtab/dtd", "Describable Textures"),
    Task("vtab/eurosat", "EuroSAT"),
    Task("fgvc_aircraft", "FGVC Aircraft", _MPCR),
    Task("food101", "Food-101"),
    Task("gtsrb", "GTSRB"),
    Task("imagenet1k", "ImageNet 1k"),
    Task("imagenet_sketch", "ImageNet Sketch"),
    Task("imagenetv2", "ImageNet v2"),
    Task("imagenet-a", "ImageNet-A"),
    Task("imagenet-o", "ImageNet-O"),
    Task("imagenet-r", "ImageNet-R"),
    Task("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    Task("mnist", "MNIST"),
    Task("objectnet", "ObjectNet"),
    Task("vtab/flowers", "Oxford Flowers-102", _MPCR),
    Task("vtab/pets", "Oxford-IIIT Pet", _MPCR),
    Task("voc2007", "Pascal VOC 2007"),
    Task("vtab/pcam", "PatchCamelyon"),
    Task("renderedsst2", "Rendered SST2"),
    Task("vtab/resisc45", "RESISC45"),
    Task("cars", "Stanford Cars"),
    Task("stl10", "STL-10"),
    Task("sun397", "SUN397"),
    Task("vtab/svhn", "SVHN"),
    Task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", _R1, kind="retrieval",
         data_dirname="wds_flickr30k_test"),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", _R1, kind="retrieval"),
    Task("misc/winogavil", "WinoGAViL", "jaccard_score_10-12", kind="winogavil"),
    Task("wilds/iwildcam", "iWildCam", "F1-macro_all", extra_metrics=("F1-macro_all",)),
    Task("wilds/camelyon17", "Camelyon17"),
    Task("wilds/fmow", "FMoW", "acc_worst_region",
         extra_metrics=("acc_worst_region", "acc_worst_year")),
    Task("fairness/dollar_street", "Dollar Street", "acc_top5_wg", extra_metrics=("acc_top5_wg",)),
    Task("fairness/geode", "GeoDE", "acc_wg", extra_metrics=("acc_wg",)),
)

TASKS_BY_KEY = {task.key: task for task in DATACOMP_TASKS}
# Keys this project used before it took DataComp's: old results files still aggregate.
RENAMED_KEYS = {"retrieval/flickr30k": "retrieval/flickr_1k_test_image_text_retrieval"}

# DataComp's fairness sets without a main metric: evaluated when present, never averaged.
# "acc_race_avg" (race, white vs non-white, over all faces) is the figure shown for each.
FAIRNESS_TASKS = (
    Task("fairness/fairface", "FairFace", "acc_race_avg", kind="fairface"),
    Task("fairness/utkface", "UTKFace", "acc_race_avg", kind="fairface"),
)
FAIRNESS_BY_KEY = {task.key: task for task in FAIRNESS_TASKS}

# Group averages reported next to the 38-task average. "imagenet_dist_shifts", "vtab" and
# "retrieval" are DataComp's groups (its aggregate_scores.py); "imagenet_and_variants" is the
# 7-set average of the FastCLIP paper (ImageNet-1k and its 6 distribution shifts).
IMAGENET_DIST_SHIFTS = ("imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-o",
                        "imagenet-r", "objectnet")
GROUPS = {
    "imagenet_and_variants": ("imagenet1k",) + IMAGENET_DIST_SHIFTS,
    "imagenet_dist_shifts": IMAGENET_DIST_SHIFTS,
    "vtab": ("vtab/caltech101", "vtab/cifar100", "vtab/clevr_count_all",
             "vtab/clevr_closest_object_distance", "vtab/dtd", "vtab/eurosat",
             "vtab/kitti_closest_vehicle_distance", "vtab/flowers", "vtab/pets", "vtab/pcam",
             "vtab/resisc45", "vtab/svhn", "sun397"),
    "retrieval": ("retrieval/flickr_1k_test_image_text_retrieval",
                  "retrieval/mscoco_2014_5k_test_image_text_retrieval",
                  "misc/winogavil"),
}

assert len(DATACOMP_TASKS) == 38 and len(TASKS_BY_KEY) == 38
assert all(key in TASKS_BY_KEY for keys in GROUPS.values() for key in keys)


def select_tasks(keys=None):
    """Tasks for the given keys (all 38 when keys is None); unknown keys are an error."""
    if keys is None:
        return list(DATACOMP_TASKS)
    keys = [RENAMED_KEYS.get(key, key) for key in keys]
    known = {**TASKS_BY_KEY, **FAIRNESS_BY_KEY}
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(f"unknown DataComp task(s) {unknown}; known: {sorted(known)}")
    return [known[key] for key in keys]
