"""The end-to-end demo: OpenCLIP vs FastCLIP-v3 vs SigLIP on a CPU (``make demo``).

Not part of the overlay: ``open_clip_patch`` imports neither this package nor ``eval/``; the
demo uses both, from the repository root. Modules, one job each:

    __main__.py  the command line: ``python -m demo [run|tune] ...`` (exact commands there)
    methods.py   the shared settings and the method table (data), their trainer flags
    runner.py    the trainer command and the one subprocess runner (training and tuning)
    evaluate.py  every checkpoint through eval/ (clip_benchmark); the points read back
    compare.py   the ratio at equal samples seen and the samples needed to reach the baseline
    report.py    report.md and results.json (eval/report.py's table writer)
    plots.py     curves.png
    pipeline.py  the demo from data to report
    tuning.py    the tuning grids and the tuning record, tuning_record.jsonl
    data/        the data builders (Twemoji from npm, scikit-learn digits), ``python -m demo.data``
"""
