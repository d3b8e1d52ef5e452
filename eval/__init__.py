"""Evaluation suite for FastCLIP / OpenCLIP checkpoints; everything reads local data.

Scripts (``python -m eval.<name> --help``):
  datacomp   DataComp's 38 tasks from ``--data-dir`` wds sets, 38-task and group averages
  imagenet   zero-shot ImageNet-1k and its 6 variants from local folders, 7-set average
  retrieval  image-text retrieval on a wds caption set or a Flickr-style CSV
  report     markdown table + PNG plots comparing runs over epochs / samples seen

Library modules: wds_sets (writers of clip_benchmark's offline wds layout), tasks (the 38-task
table), model (checkpoint loading), classification / winogavil (metrics), results (file format).
"""
