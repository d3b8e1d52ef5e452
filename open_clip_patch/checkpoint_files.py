"""The checkpoint folder's files: partial saves left by kills, and the newest loadable checkpoint.

``checkpoint.save_atomically`` writes ``.epoch_N.pt.<random>.tmp`` and renames it; a job killed
mid-save left the partial file behind (4 after 4 kills). :func:`remove_partial_saves` deletes
them before the next save (the hook ``save_checkpoint``; only the saving rank writes them, so no
other save is in flight). ``--resume latest`` took the newest ``*.pt`` by name; a truncated one
(a full disk, a copy cut short) failed the run. :func:`newest_loadable` falls back to the newest
one that opens, and says which it skipped.

    python -m pytest -q tests/test_bad_data.py -k "partial or latest"
"""
import glob
import logging
import os
import re
import zipfile

PARTIAL_SAVE_GLOB = ".*.pt.*.tmp"   # save_atomically's temporary files


def remove_partial_saves(folder: str) -> list:
    """Delete the temporary files of interrupted saves in ``folder``; returns their paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(folder, PARTIAL_SAVE_GLOB))):
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        logging.info(f"Removed {len(removed)} partial checkpoint file(s) of interrupted saves: "
                     f"{', '.join(os.path.basename(p) for p in removed)}")
    return removed


def _natural_key(path: str):
    # epoch_10.pt after epoch_9.pt (upstream's get_latest_checkpoint orders the same way)
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def why_unloadable(path: str):
    """None when ``path`` is a complete torch checkpoint, else why not. torch.save writes a zip
    whose directory sits at the end, so a truncated file fails here without reading tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl"
                       for name in archive.namelist()):
                return "no data.pkl in the archive"
    except (OSError, zipfile.BadZipFile) as error:
        return str(error)
    return None


def newest_loadable(folder: str):
    """The newest ``*.pt`` under ``folder`` (by name, as upstream orders them) that is a
    complete checkpoint; each newer one skipped is logged. None when there is none."""
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True), key=_natural_key)
    for path in reversed(paths):
        problem = why_unloadable(path)
        if problem is None:
            return path
        logging.warning(f"--resume latest: skipping {path}, which does not load ({problem}); "
                        f"falling back to an older checkpoint")
    return None
