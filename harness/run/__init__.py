"""Layer 6, run: evaluating models over datasets (resume by run key, failures, locks, torchrun), sweeps, the
ELEVATER-vs-OpenCLIP cross-check, importing the official toolkit's predictions."""
