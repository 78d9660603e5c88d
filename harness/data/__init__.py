"""Layer 3, data: opening a dataset card's test split (ELEVATER layouts via vision-datasets, ImageNet ImageFolder,
CLIP_benchmark webdatasets and the ELEVATER re-host read in place; the sources of each test set as data,
harness.data.sources), decoding images and their errors, the data fingerprint; generated demo data in the same
formats; ``prepare`` (downloading the test sets)."""
