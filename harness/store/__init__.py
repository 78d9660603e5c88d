"""Layer 4, store: what is kept on disk and how it is trusted. Cache entries (commit protocol, ``cache ls/prune``),
the pixel and feature caches, the run key, the results store and what a result records."""
