"""Command line of the demo data builders (run from the repository root)::

    python -m demo.data demo --out build/demo/data [--source auto] [--train-pairs 12000] [--force]
    python -m demo.data twemoji --out build/demo/data [--image-size 32] [--force]
    python -m demo.data digits --out build/digits [--num-shards 2] [--num-samples N]

``demo`` builds (or reuses) the demo directory from ``--source`` (see ``build.py``; the pool is
``pool.py``: the first build rasterises ~35k SVGs once, with a progress bar); ``twemoji``
insists on Twemoji; ``digits`` writes only the train shards the trainer tests use and prints
``{"train_data", "num_samples", "data_size"}``.
"""
import argparse
import json
import sys
from pathlib import Path

from demo.data.build import DEFAULT_OUT_DIR, SOURCES, build_demo_data
from demo.data.digits import write_digits_shards
from demo.data.npm import DEFAULT_CACHE_DIR, DataUnavailable


def _add_demo_flags(parser):
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default 64 for the pool, else 32)")
    parser.add_argument("--num-shards", type=int, default=4, help="train shards to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the emoji split")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the npm tarball is kept")
    parser.add_argument("--npm", default="npm", help="npm executable")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.data",
                                     description=__doc__.split("\n")[0].rstrip(":"))
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="demo data from --source (default auto)")
    _add_demo_flags(demo)
    demo.add_argument("--source", choices=SOURCES, default="auto",
                      help="auto = the pool, falling back to digits when npm cannot fetch it")
    demo.add_argument("--train-pairs", type=int, default=None,
                      help="pool: a seeded subset of this many training pairs (default: all)")
    demo.add_argument("--jobs", type=int, default=2, help="pool: rasterising processes")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_demo_flags(commands.add_parser("twemoji", help="demo data from Twemoji, no fallback"))
    digits = commands.add_parser("digits", help="digits train shards for the trainer tests")
    digits.add_argument("--out", type=Path, required=True, help="output directory")
    digits.add_argument("--num-shards", type=int, default=2, help="shards to write")
    digits.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    digits.add_argument("--num-samples", type=int, default=None, help="first N digits only")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "digits":
            shards = write_digits_shards(args.out, args.num_shards, args.image_size,
                                         num_samples=args.num_samples)
            print(json.dumps({"train_data": shards.pattern, "num_samples": shards.num_samples,
                              "data_size": shards.id_space}))
            return 0
        source = "twemoji" if args.command == "twemoji" else args.source
        pool_flags = {} if args.command == "twemoji" else dict(
            train_pairs=args.train_pairs, jobs=args.jobs, show_progress=not args.no_progress)
        manifest = build_demo_data(args.out, source, image_size=args.image_size,
                                   num_shards=args.num_shards, seed=args.seed, force=args.force,
                                   cache_dir=args.cache_dir, npm=args.npm, **pool_flags)
    except (DataUnavailable, ValueError, FileExistsError) as error:
        print(f"demo.data: error: {error}", file=sys.stderr)
        return 1
    summary = {key: manifest[key] for key in ("root", "source", "rebuilt", "counts", "train")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
