"""Fetching a pinned npm package tarball (``npm pack``) into a cache, checked by its integrity.

Every npm-hosted demo source names its package as an :class:`NpmPackage` (spec, tarball file,
npm's published sha512 integrity: ``npm view <spec> dist``) and calls :func:`fetch_npm_tarball`::

    tarball = fetch_npm_tarball(TWEMOJI, cache_dir=Path("build/cache"))
"""
import base64
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = Path("build/cache")


class DataUnavailable(RuntimeError):
    """The source cannot be obtained here (no npm, no network); the caller may fall back."""


@dataclass(frozen=True)
class NpmPackage:
    spec: str        # what `npm pack` is given, e.g. "emoji-datasource-twitter@16.0.0"
    tarball: str     # the file `npm pack` writes, e.g. "emoji-datasource-twitter-16.0.0.tgz"
    integrity: str   # npm's subresource-integrity string of that file


def sri_integrity(path):
    """npm's subresource-integrity string (sha512, base64) of a file."""
    digest = hashlib.sha512(Path(path).read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _npm_error_summary(stderr, returncode):
    errors = [line.strip() for line in stderr.splitlines() if "error" in line.lower()]
    return "; ".join(errors[:2]) if errors else f"exit status {returncode}"


def fetch_npm_tarball(package, cache_dir=DEFAULT_CACHE_DIR, npm="npm", timeout_s=300):
    """Return the cached, integrity-checked tarball of ``package``, running ``npm pack`` if needed.

    Raises DataUnavailable when npm is missing or cannot fetch, ValueError when the fetched
    tarball does not match the pinned integrity (never a silent fallback for that).
    """
    cache_dir = Path(cache_dir).resolve()  # npm runs inside it, so relative paths would move
    target = cache_dir / package.tarball
    if target.exists():
        if sri_integrity(target) == package.integrity:
            return target
        target.unlink()  # a partial or altered file: fetch it again
    executable = shutil.which(npm)
    if executable is None:
        raise DataUnavailable(f"'{npm}' is not on PATH")
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [executable, "pack", package.spec, "--pack-destination", str(cache_dir),
               "--fetch-retries=1", "--loglevel=error"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              cwd=cache_dir)
    except subprocess.TimeoutExpired:
        raise DataUnavailable(f"npm pack {package.spec} timed out after {timeout_s} s")
    if done.returncode != 0 or not target.exists():
        summary = _npm_error_summary(done.stderr, done.returncode)
        raise DataUnavailable(f"npm pack {package.spec} failed: {summary}")
    actual = sri_integrity(target)
    if actual != package.integrity:
        target.unlink()
        raise ValueError(f"{package.tarball} from npm has integrity {actual}, not the pinned "
                         f"{package.integrity}; refusing to use it")
    return target
