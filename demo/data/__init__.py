"""The demo's data builders, one module per source family over a common shard writer.

    shards.py   CaptionedImage, DemoSource and the img2dataset-style shard writer
    npm.py      a pinned npm tarball, fetched by ``npm pack`` and checked by its integrity
    twemoji.py  Twemoji caption pairs (npm emoji-datasource-twitter)
    digits.py   scikit-learn digits: trainer-test shards and the offline fallback
    build.py    split a source, write train shards + clip_benchmark eval sets, cache the build
    __main__.py ``python -m demo.data demo|twemoji|digits ...``

A new source family is one module returning a ``DemoSource`` and an entry in ``build.py``.
"""
