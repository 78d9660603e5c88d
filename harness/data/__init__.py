"""Layer 3, data: opening a dataset card's test split (ELEVATER layouts via vision-datasets, ImageNet ImageFolder),
decoding images and their errors, the data fingerprint; generated demo data in the same formats; ``prepare``
(downloading the test sets)."""
