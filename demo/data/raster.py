"""Raw pool images -> RGB arrays at one size, rasterised once per package and cached.

SVGs go through cairosvg (onto white; ``currentColor`` draws black), PNGs are composited onto
white and resized (``twemoji.emoji_image``). The first build of a package shows a progress bar
and writes ``<cache>/raster/<package>-<hash>-<size>px.npz`` (one compressed array
of every image plus the names that failed); later builds read that file in a second. An SVG
cairosvg cannot draw is skipped and counted, never fatal.
"""
import hashlib
import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from demo.data.twemoji import emoji_image


class BrokenImage(ValueError):
    """One image that cannot be decoded or drawn (skipped and counted by the caller)."""


def svg_image(svg, size):
    import cairosvg

    try:
        png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size,
                               background_color="white")
        return Image.open(io.BytesIO(png)).convert("RGB")
    except Exception as error:   # cairosvg raises parser, value and cairo errors alike
        raise BrokenImage(f"{type(error).__name__}: {error}") from None


def raster(kind, data, size):
    """One raw image as a (size, size, 3) uint8 array; BrokenImage if it cannot be drawn."""
    if kind == "svg":
        image = svg_image(data, size)
    else:
        try:
            image = emoji_image(data, size)
        except Exception as error:
            raise BrokenImage(f"{type(error).__name__}: {error}") from None
    return np.asarray(image, dtype=np.uint8)


def _raster_or_none(job):
    kind, data, size = job
    try:
        return raster(kind, data, size)
    except BrokenImage:
        return None


def cache_path(cache_dir, package_key, integrity, size, names):
    """One file per package, tarball, size and selection of images (a test's subset never
    overwrites the whole package's cache)."""
    digest = hashlib.sha256("\n".join([integrity, *names]).encode()).hexdigest()[:12]
    return Path(cache_dir) / "raster" / f"{package_key}-{digest}-{size}px.npz"


def _rasterise(raw_images, size, jobs, label, show_progress):
    from tqdm import tqdm

    work = [(image.kind, image.data, size) for image in raw_images]
    bar = tqdm(total=len(work), desc=f"rasterise {label} {size}px", unit="img",
               disable=not show_progress, dynamic_ncols=True, mininterval=0.5)
    with bar:
        if jobs > 1 and len(work) > 64:
            with ProcessPoolExecutor(jobs) as pool:
                arrays = []
                for array in pool.map(_raster_or_none, work, chunksize=32):
                    arrays.append(array)
                    bar.update()
        else:
            arrays = []
            for job in work:
                arrays.append(_raster_or_none(job))
                bar.update()
    return arrays


def rasterise_package(raw_images, size, package_key, integrity, cache_dir, jobs=2,
                      show_progress=True):
    """{image name: array} for every drawable image of one package, and the names that
    failed; from the cache when it has this package, integrity and size."""
    names = [image.name for image in raw_images]
    path = cache_path(cache_dir, package_key, integrity, size, names)
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if list(cached["names"]) == names:
                drawn = {n: a for n, a, ok in zip(names, cached["images"], cached["ok"]) if ok}
                return drawn, [n for n, ok in zip(names, cached["ok"]) if not ok]
    arrays = _rasterise(raw_images, size, jobs, package_key, show_progress)
    ok = np.array([a is not None for a in arrays])
    stacked = np.stack([a if a is not None else np.zeros((size, size, 3), np.uint8)
                        for a in arrays]) if arrays else np.zeros((0, size, size, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, names=np.array(names, dtype=str), images=stacked, ok=ok)
    partial.rename(path)
    drawn = {n: a for n, a in zip(names, arrays) if a is not None}
    return drawn, [n for n, a in zip(names, arrays) if a is None]
