"""Layer 0, core: what every stage may use. The one user-error type, where files live, atomic writes and locks,
remembered file hashes, offline/mirror decisions, torchrun sharding and the training log's schema. No torch at import."""
