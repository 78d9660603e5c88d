"""REACT's retrieval stage for any target: ``python -m retrieval embed|index|query|card|demo-corpus``.

``corpus`` (img2dataset webdataset shards), ``layout`` (what an index folder holds, its manifest and checks),
``embed`` (CLIP image/text embeddings per shard with the harness's models and engine, resumable, torchrun),
``faiss_index`` (choosing, building and opening faiss indices, ours or clip-retrieval's), ``query`` (class prompts ->
retrieved pairs parquet + statistics), ``usercard`` (a dataset card for a user's ImageFolder), ``demo_corpus``
(a generated captioned corpus with planted concepts). Imports the harness; the harness never imports this package.
"""
