"""Datasets, fundus preprocessing and HR->LR degradation. Knows nothing of models or training."""
