"""The one batch loop: a function of a batch applied to an array, batch by batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def map_batches(
    function: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    batch_size: int,
    output_shape: Sequence[int | None],
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``function`` applied to consecutive slices of ``inputs`` of at most ``batch_size`` rows,
    the answers concatenated in order.

    Args:
        function: (n, ...) -> (n, *output_shape); never called with an empty batch (some
            engines crash or raise on one: TFLite, oneDNN on AVX-512 CPUs).
        inputs: (N, ...) array; N may be 0.
        batch_size: rows per call, at least 1.
        output_shape: the shape of one answer, used only to shape the answer to no input.
        progress: called with (rows done, N) after each batch.

    Returns:
        (N, *output_shape) array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(inputs) == 0:
        return np.zeros((0, *(0 if d is None else d for d in output_shape)), dtype=np.float32)
    answers = []
    for start in range(0, len(inputs), batch_size):
        answers.append(np.asarray(function(inputs[start : start + batch_size])))
        if progress is not None:
            progress(min(start + batch_size, len(inputs)), len(inputs))
    return np.concatenate(answers)
