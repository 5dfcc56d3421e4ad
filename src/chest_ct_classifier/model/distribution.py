"""Training across the devices of one machine: ``training.distribute``.

``none`` trains on the default device. ``mirrored`` builds and trains under
``tf.distribute.MirroredStrategy``: a copy of the model on every GPU (every logical CPU device
when there is no GPU), each batch split between them and their gradients summed, which gives
the same updates as one device up to float rounding (dropout draws its own masks per device).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import tensorflow as tf

logger = logging.getLogger(__name__)

Distribute = Literal["none", "mirrored"]


@contextlib.contextmanager
def distribution_scope(distribute: Distribute) -> Iterator[int]:
    """A scope in which models built and compiled train as ``distribute`` says; yields the
    number of devices (replicas)."""
    if distribute == "none":
        yield 1
        return
    if distribute != "mirrored":
        raise ValueError(f"training.distribute must be none or mirrored, got {distribute!r}")
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    logger.info("Training mirrored on %d devices: %s", len(devices), ", ".join(devices))
    with strategy.scope():
        yield strategy.num_replicas_in_sync
