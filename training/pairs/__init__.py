"""Retrieved pairs to training shards: ``python -m training.pairs {fetch,download,stats}``.

REACT's "Download Retrieved Pairs" path as three resumable steps, each writing files the next reads
(``DIR`` = the pairs folder, ``make pairs PAIRS_DIR=DIR`` runs all three):

1. ``fetch`` (:mod:`training.pairs.fetch`): the pairs parquet (``URL``, ``TEXT``) from the Hugging Face hub into
   ``DIR`` through huggingface_hub (resumable, ``HF_ENDPOINT`` mirrors, one clear line offline);
2. ``download`` (:mod:`training.pairs.download`): the real img2dataset, run as a program from its own venv
   (``.venv-pairs``, ``make install-pairs``), writes webdataset shards to ``DIR/shards/``; resumable after a kill,
   ``--retry-failed`` downloads the failed rows again into new shards;
3. ``stats`` (:mod:`training.pairs.availability`): ``DIR/availability.json`` (schema:
   :mod:`harness.core.pairs_availability`) — what is online now, by cause, and the ``--train-data`` /
   ``--train-num-samples`` of the shards.
"""
