"""WinoGAViL (DataComp's task ``misc/winogavil``) on a local webdataset.

Layout: eval/wds_sets.py ``write_winogavil_set``: one sample per instance with ``<key>.json``
({"cue", "n_candidates", "associations"}) and candidate images ``<key>.<j>.png``. As in
DataComp's evaluator, the cue becomes the prompt "A <cue>" / "An <cue>", the top-n candidates by
cosine similarity (n = number of true associations) are the prediction, and the score of an
instance is the Jaccard index of predicted and true sets. The main metric
``jaccard_score_10-12`` averages instances with 10 or 12 candidates.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from sklearn.metrics import jaccard_score

from eval.wds_sets import is_wds_set

BUCKETS = {"5": (5, 5), "6": (6, 6), "10": (10, 10), "12": (12, 12), "5-6": (5, 6),
           "10-12": (10, 12)}


def cue_prompt(cue):
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" else f"A {cue}"


def read_instances(root):
    """Yield (cue, [PIL images], associations) per instance of a wds WinoGAViL set."""
    if not is_wds_set(root):
        raise FileNotFoundError(f"not a wds set (no test/nshards.txt): {root}")
    with open(os.path.join(root, "test", "nshards.txt")) as f:
        urls = [os.path.join(root, "test", f"{i}.tar") for i in range(int(f.read()))]
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        meta = sample["json"]
        n = meta["n_candidates"]
        images = []
        for j in range(n):
            found = [sample[k] for k in sample if k.split(".")[0] == str(j)]
            if not found:
                raise ValueError(f"{root}: sample {sample['__key__']} lacks candidate image {j}")
            images.append(found[0])
        yield meta["cue"], images, meta["associations"]


def score_instance(evm, cue, images, associations):
    """Jaccard index of the top-|associations| candidates against the true associations."""
    batch = torch.stack([evm.transform(image) for image in images]).to(evm.device)
    tokens = evm.tokenizer([cue_prompt(cue)]).to(evm.device)
    with torch.no_grad(), torch.autocast(evm.device_type, enabled=evm.amp):
        image_features = F.normalize(evm.model.encode_image(batch).float(), dim=-1)
        text_features = F.normalize(evm.model.encode_text(tokens).float(), dim=-1)
    similarity = (text_features @ image_features.T).squeeze(0).cpu().numpy()
    y_true = np.isin(np.arange(len(images)), associations)
    y_pred = np.isin(np.arange(len(images)), np.argsort(similarity)[-len(associations):])
    return jaccard_score(y_true, y_pred)


def evaluate_winogavil(evm, root):
    """avg_jaccard_score and jaccard_score_<bucket> by number of candidates (None if empty)."""
    scores, sizes = [], []
    for cue, images, associations in read_instances(root):
        scores.append(score_instance(evm, cue, images, associations))
        sizes.append(len(images))
    if not scores:
        raise ValueError(f"{root}: no instances")
    scores, sizes = np.array(scores), np.array(sizes)
    metrics = {"avg_jaccard_score": float(scores.mean())}
    for name, (low, high) in BUCKETS.items():
        chosen = scores[(sizes >= low) & (sizes <= high)]
        metrics[f"jaccard_score_{name}"] = float(chosen.mean()) if len(chosen) else None
    return metrics
