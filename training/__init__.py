"""REACT training (``python -m training.main``): the steps of a run, one module each.

``params`` (flags), ``setup`` (distributed init, run folders, logging), ``model_setup`` (build, weights, locks),
``evaluation`` (zero-shot during training), ``reporting`` (metrics.jsonl / TensorBoard / wandb), ``loop`` (one
epoch), ``data`` (webdataset shards), ``augment`` (timm augmentation), ``checkpoints`` and ``model_card`` (outputs),
``export_base`` (the README's base checkpoint). The REACT architecture itself is :mod:`harness.models.react`.
"""
