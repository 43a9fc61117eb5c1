"""Saliency maps of DR graders: methods, lesion agreement, sanity checks and figures.

Run from the repository root: ``python saliency/run.py``, ``python saliency/evaluate.py``,
``python saliency/sanity.py``; library code is imported as ``saliency.methods`` etc.
"""
