"""Exact and near-duplicate images: perceptual hashes and the groups they form.

Two files are *near duplicates* when their 64-bit perceptual hashes (DCT hash of the greyscale
image, as ``imagehash.phash``) differ in at most ``max_distance`` bits. Groups are the connected
components of that relation, so exact copies (distance 0) always share a group.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash of an image, as 16 hex digits."""
    return str(imagehash.phash(image.convert("L")))


def near_duplicate_groups(hashes: Sequence[str], max_distance: int) -> np.ndarray:
    """Group id per hash: connected components of "Hamming distance <= max_distance".

    Pairwise, a chunk of rows at a time: n images cost n^2 XOR-and-popcount operations on
    integers, and memory stays at one chunk times n.
    """
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    parent = np.arange(len(values))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    chunk = 1024
    for start in range(0, len(values), chunk):
        block = values[start : start + chunk, None] ^ values[None, :]
        close = np.argwhere(np.bitwise_count(block) <= max_distance)
        for i, j in close:
            a, b = root(start + int(i)), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(values))])
    # renumber 0..k-1 in order of first appearance, for stable, readable ids
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]
