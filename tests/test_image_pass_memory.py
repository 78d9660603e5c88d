"""What the image pass keeps between batches: one growing array of features, nothing of a batch after it.

The memory itself, against the dataset size (3,000 vs 15,000 images, every path), is measured by
``benchmarks/test_memory.py``; these tests pin the pieces that keep it flat.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.core.distributed import assemble, deal


class _Tower:
    """encode_image: the first 4 input values of each image, times 2 (so rows are known)."""

    def encode_image(self, images, normalize=True):
        return images.flatten(1)[:, :4] * 2


def _batches(n: int, batch_size: int, order: list[int], bad: set[int] = frozenset()):
    ranges = deal(n, batch_size)
    for b in order:
        idx = torch.arange(ranges[b].start, ranges[b].stop)
        images = idx.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
        yield images, idx, [f"bad {int(i)}" if int(i) in bad else "" for i in idx]


@pytest.mark.parametrize("n_rows", [None, 23])
def test_forward_batches_gathers_every_batch_into_one_array_in_the_order_given(n_rows):
    from harness.engine.imagepass import forward_batches

    order = [1, 0, 3, 2]  # as a rank's share arrives, not in dataset order
    pieces, errors = forward_batches(_Tower(), _batches(23, 6, order, bad={8}), "cpu", "fp32",
                                     skip_bad_images=True, n_rows=n_rows)
    assert len(pieces) == 1, "one array, not a piece per batch"
    idx, rows = pieces[0]
    ranges = deal(23, 6)
    np.testing.assert_array_equal(idx, np.concatenate([np.arange(ranges[b].start, ranges[b].stop) for b in order]))
    assert rows.shape == (23, 4) and rows.dtype == np.float32
    features = assemble(pieces, 23)
    expected = np.repeat(2 * np.arange(23, dtype=np.float32)[:, None], 4, axis=1)
    expected[8] = 0  # an unreadable image's row is zero, its error recorded
    np.testing.assert_array_equal(features, expected)
    assert errors == {8: "bad 8"}


def test_forward_batches_of_nothing_is_no_piece():
    from harness.engine.imagepass import forward_batches

    assert forward_batches(_Tower(), iter(()), "cpu", "fp32") == ([], {})


def test_the_feature_array_grows_by_doubling_and_keeps_every_row():
    from harness.engine.imagepass import _Rows

    out = _Rows(None)
    sizes = []
    for start in range(0, 50, 7):
        stop = min(start + 7, 50)
        out.add(np.arange(start, stop), np.arange(start, stop, dtype=np.float32)[:, None].repeat(3, 1))
        sizes.append(len(out.rows))
    assert sizes == [7, 14, 28, 28, 56, 56, 56, 56]  # log2 growth: a few long-lived arrays, never one per batch
    (idx, rows), = out.pieces()
    np.testing.assert_array_equal(idx, np.arange(50))
    np.testing.assert_array_equal(rows[:, 0], np.arange(50, dtype=np.float32))
    sized = _Rows(50)
    sized.add(np.arange(7), np.zeros((7, 3), np.float32))
    assert len(sized.rows) == 50  # sized once when the caller knows the count


def test_the_loader_collates_as_torch_does_and_hands_freed_memory_back():
    from torch.utils.data import default_collate

    from harness.engine.imagesource import _collate, _release_freed_memory

    items = [(torch.full((3, 2, 2), float(i)), i, "" if i else "bad") for i in range(5)]
    ours, torchs = _collate(items), default_collate(items)
    assert torch.equal(ours[0], torchs[0]) and torch.equal(ours[1], torchs[1]) and list(ours[2]) == list(torchs[2])
    _release_freed_memory()  # glibc's malloc_trim, or nothing: never an error
    _release_freed_memory()


def _mapped_rss_kb(path) -> int:
    """Resident KB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[-1] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_reading_a_pixel_cache_pass_leaves_its_pages_out_of_the_process(tmp_path):
    """A warm pixel-cache pass reads every row once: the rows read must not stay resident in the process (its RSS
    would grow with the dataset, 7.5 GB for ImageNet at 224 px); the bytes read are the file's."""
    from harness.store.integrity import read_rows

    path = tmp_path / "pixels.npy"
    data = np.random.default_rng(0).integers(0, 255, (512, 128, 256, 3), dtype=np.uint8)  # 48 MiB
    np.save(path, data)
    array = np.load(path, mmap_mode="r")
    for start in range(0, len(array), 16):
        np.testing.assert_array_equal(read_rows(array, start, start + 16), data[start:start + 16])
    assert _mapped_rss_kb(path) < 4 * 1024  # without release: ~48 MiB resident
    np.testing.assert_array_equal(read_rows(array, 100, 101), data[100:101])  # pages come back on a new read
