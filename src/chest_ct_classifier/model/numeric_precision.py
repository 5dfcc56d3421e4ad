"""Reduced-precision forward passes of the classifier, and the gate that allows them.

Three ways to compute the same probabilities, each a :class:`Forward`: called on ``(n, H, W, 3)
float32 model input`` it gives ``(n, n_classes) float32 probabilities``; its ``with_features``
also gives the head's input vectors (``FEATURE_LAYER``, what the out-of-distribution detector
scores), computed on the way at no extra cost:

- ``fp32``: the Keras model, traced once (no per-call ``predict`` overhead).
- ``bf16``: the convolutions and their max pooling in bfloat16 (weights rounded to bfloat16
  once), the head in float32. Fast only on CPUs with bfloat16 instructions (AVX512-BF16,
  AMX); elsewhere TensorFlow converts and computes at about fp32 speed.
- ``int8``: the convolutions and pooling as a TFLite model with int8 weights (per channel)
  whose activations XNNPACK quantizes to int8 at run time, each image with its own scale (an
  answer does not depend on the other images of its batch), the head in float32
  (Keras). Activations are quantized per batch at run time rather than with static ranges
  calibrated on training images, which changed answers the dynamic scheme left alone
  (docs/results.md).

A reduced path is served only when :func:`gate` says it answers like fp32 (see
:func:`choose_precision`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from chest_ct_classifier.model.architecture import (
    FEATURE_LAYER,
    image_size_of,
    model_after,
    model_fingerprint,
)

PRECISIONS = ("fp32", "bf16", "int8")
AUTO = "auto"
"""The fastest precision that passed the gate (fp32 when none did)."""


class Forward(Protocol):
    """A forward pass of the classifier in one precision; safe to call from several threads."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities of (n, H, W, 3) model input."""
        ...

    def with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The probabilities and the (n, d) head input vectors (``FEATURE_LAYER``)."""
        ...


logger = logging.getLogger(__name__)


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed call (the first call of a
    shape prepares it: tracing, memory, weight packing)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def int8_fingerprint(int8_model: bytes) -> str:
    """A digest of the int8 model file's bytes."""
    return hashlib.sha256(int8_model).hexdigest()[:16]


class TracedForward:
    """``model`` as one traced graph for any batch size, with two outputs: the probabilities and
    the head's input vectors; safe to call from several threads."""

    def __init__(self, model: keras.Model) -> None:
        size = model.input_shape[1:]
        both = keras.Model(model.input, [model.output, model.get_layer(FEATURE_LAYER).output])
        self._graph = tf.function(
            lambda batch: [tf.cast(output, tf.float32) for output in both(batch, training=False)],
            input_signature=[tf.TensorSpec([None, *size], tf.float32)],
        )
        self._empty = [
            np.zeros((0, *shape[1:]), np.float32)
            for shape in (model.output_shape, model.get_layer(FEATURE_LAYER).output.shape)
        ]

    def with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) == 0:  # oneDNN on AVX-512 CPUs raises on a batch of none
            return self._empty[0], self._empty[1]
        probabilities, features = self._graph(np.asarray(batch, dtype=np.float32))
        return probabilities.numpy(), features.numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.with_features(batch)[0]


def traced_forward(model: keras.Model) -> Forward:
    """``model`` as one traced graph for any batch size; safe to call from several threads."""
    return TracedForward(model)


def traced_model(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """Any single-output ``model`` (the head alone, say) as one traced graph for any batch."""
    graph = tf.function(
        lambda batch: tf.cast(model(batch, training=False), tf.float32),
        input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)],
    )
    empty = np.zeros((0, *model.output_shape[1:]), np.float32)
    return lambda batch: graph(np.asarray(batch, np.float32)).numpy() if len(batch) else empty


def bf16_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose convolutions and max pooling compute in bfloat16, with their
    weights stored in bfloat16; the head (its global pooling, layers and softmax) stays float32.

    The answers are those of Keras' ``mixed_bfloat16`` policy on the convolutions alone, bit for
    bit: that policy rounds the float32 weights to bfloat16 at every call, where these are
    rounded once, and the maximum of bfloat16 values is the same in either type, so pooling in
    bfloat16 only saves the casts around it. It saves 13-27 % of the pass (Xeon-AMX: 30 against
    41 ms for one image, 14.8 against 20.3 ms an image in batches of 8; docs/results.md).
    """

    def convolutions_in_bf16(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D)):
            config["dtype"] = "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=convolutions_in_bf16)
    copy.set_weights(model.get_weights())
    return copy


def int8_feature_extractor(model: keras.Model) -> bytes:
    """The convolutions and pooling of ``model`` (input to the head's input vector) as a TFLite
    model with int8 weights and activations quantized at run time, each image's with its own
    scale (answers do not depend on the other images of a batch)."""
    features = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
    converter = tf.lite.TFLiteConverter.from_keras_model(features)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())


class Int8Forward:
    """The int8 feature extractor (TFLite with XNNPACK) followed by the model's float head.

    One interpreter, resized to each batch size it meets (a few ms the first time only); a
    TFLite interpreter is not thread-safe, so calls take turns.
    """

    def __init__(self, model: keras.Model, int8_model: bytes, threads: int | None = None) -> None:
        if not int8_model:
            raise ValueError("the int8 model is empty")
        with warnings.catch_warnings():
            # TF 2.18-2.21 warn that tf.lite.Interpreter moves to the ai-edge-litert package;
            # it is still here, and the pin on tensorflow (<2.22) keeps it.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            self._interpreter = tf.lite.Interpreter(
                model_content=int8_model, num_threads=threads or _cpu_count()
            )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        expected = tuple(model.input_shape[1:])
        got = tuple(int(d) for d in self._interpreter.get_input_details()[0]["shape"][1:])
        if got != expected:
            raise ValueError(f"the int8 model takes {got} images, the classifier {expected}")
        self._head = traced_model(model_after(model, FEATURE_LAYER))
        self._classes = int(model.output_shape[-1])
        self._width = int(model.get_layer(FEATURE_LAYER).output.shape[-1])
        self._shape: tuple[int, ...] = ()
        self._lock = threading.Lock()

    def with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(batch) == 0:  # TFLite crashes the process on a batch of none
            return np.zeros((0, self._classes), np.float32), np.zeros((0, self._width), np.float32)
        with self._lock:
            if batch.shape != self._shape:
                self._interpreter.resize_tensor_input(self._input, batch.shape)
                self._interpreter.allocate_tensors()
                self._shape = batch.shape
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            features = self._interpreter.get_tensor(self._output).copy()
        return self._head(features), features

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.with_features(batch)[0]


def _cpu_count() -> int:
    import os  # noqa: PLC0415

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def forward_for(model: keras.Model, precision: str, int8_model: bytes | None = None) -> Forward:
    """The forward pass of ``model`` in ``precision`` (one of PRECISIONS)."""
    if precision == "fp32":
        return traced_forward(model)
    if precision == "bf16":
        return traced_forward(bf16_model(model))
    if precision == "int8":
        if int8_model is None:
            raise ValueError("the int8 path needs the int8 model the training pipeline writes")
        return Int8Forward(model, int8_model)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def agreement_with_fp32(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, decided_margin: float = 0.0
) -> dict[str, float]:
    """How a reduced path answers against fp32 on the same images: top-1 agreement overall and
    where fp32 is decided (its top probability at least ``decided_margin`` above the second),
    the answers that flipped where fp32 was nearly tied, both accuracies, and the largest
    change of any class probability."""
    if len(labels) == 0:
        return dict.fromkeys(
            ("agreement", "accuracy", "fp32_accuracy", "accuracy_drop", "max_probability_change"),
            0.0,
        ) | dict.fromkeys(
            ("n_images", "disagreements", "n_decided", "decided_disagreements", "near_tie_flips"),
            0,
        )
    same = candidate.argmax(axis=1) == reference.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:]
    decided = (top_two[:, 1] - top_two[:, 0]) >= decided_margin
    fp32_accuracy = float(np.mean(reference.argmax(axis=1) == labels))
    accuracy = float(np.mean(candidate.argmax(axis=1) == labels))
    return {
        "n_images": len(labels),
        "agreement": float(np.mean(same)),
        "disagreements": int((~same).sum()),
        "n_decided": int(decided.sum()),
        "decided_disagreements": int((decided & ~same).sum()),
        "near_tie_flips": int((~decided & ~same).sum()),
        "accuracy": accuracy,
        "fp32_accuracy": fp32_accuracy,
        "accuracy_drop": fp32_accuracy - accuracy,
        "max_probability_change": float(np.abs(candidate - reference).max()),
    }


def passes_gate(
    comparisons: Mapping[str, Mapping[str, float]], decided_margin: float, max_accuracy_drop: float
) -> tuple[bool, str]:
    """Whether a reduced path gives fp32's answer on every image fp32 is decided on (top-2
    margin at least ``decided_margin``) and keeps accuracy within ``max_accuracy_drop`` of
    fp32's, on every split; and why, in words. Where fp32 itself is nearly tied the answer may
    flip (rounding decides a near tie either way); those flips are counted, not refused."""
    if not comparisons or not any(c["n_images"] for c in comparisons.values()):
        return False, "no valid or test images to check it on"
    for split, c in comparisons.items():
        if c["decided_disagreements"]:
            return False, (
                f"{split}: {c['decided_disagreements']} of the {c['n_decided']} answers fp32 is "
                f"decided on (top-2 margin >= {decided_margin}) differ"
            )
        if c["accuracy_drop"] > max_accuracy_drop:
            return False, (
                f"{split}: accuracy {c['accuracy']:.3f} is {c['accuracy_drop']:.3f} below fp32's"
            )
    return True, "fp32's answer wherever fp32 is decided; near ties flipped: " + ", ".join(
        f"{split} {c['near_tie_flips']} of {c['n_images'] - c['n_decided']}"
        for split, c in comparisons.items()
    )


def choose_precision(
    requested: str,
    gate: Mapping[str, Any] | None,
    model: str | None = None,
    int8: str | None = None,
) -> tuple[str, str]:
    """The precision to serve for a requested one (a PRECISIONS value or ``auto``), given the
    gate report, and the reason in words.

    ``auto`` takes the fastest path that passed (by the gate's time per image in batches,
    measured on the machine that ran the evaluation); a requested reduced path that did not
    pass, or without a gate report, falls back to fp32. With ``model`` (``model_fingerprint``)
    and ``int8`` (``int8_fingerprint``), a report about other files counts as no report.
    """
    if requested != AUTO and requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {(AUTO, *PRECISIONS)}, got {requested!r}")
    paths = (gate or {}).get("paths", {})
    unusable = None
    if not paths:
        unusable = "there is no precision gate report"
    elif model is not None and gate.get("model_fingerprint") != model:
        unusable = "the precision gate report was made for another model (an earlier run's?)"
    if requested == "fp32" or unusable:
        return "fp32", "fp32 requested" if requested == "fp32" else (
            f"{requested} requested, but {unusable}: fp32"
        )  # fmt: skip
    if int8 is not None and gate.get("int8_fingerprint") != int8:
        paths = {
            **paths,
            "int8": {"passed": False, "reason": "the int8 file is not the one checked"},
        }
    if requested == AUTO:
        passed = [p for p in PRECISIONS if p == "fp32" or paths.get(p, {}).get("passed")]
        fastest = min(passed, key=lambda p: paths.get(p, {}).get("ms_per_image", np.inf))
        if fastest == "fp32":
            return "fp32", "auto: no reduced precision passed the gate and was faster than fp32"
        return fastest, (
            f"auto: {fastest} is the fastest path that passed the gate "
            f"({paths[fastest]['ms_per_image']:.0f} ms per image against fp32's "
            f"{paths.get('fp32', {}).get('ms_per_image', float('nan')):.0f})"
        )
    path = paths.get(requested, {})
    if not path.get("passed"):
        return "fp32", (
            f"{requested} requested, but it did not pass the gate "
            f"({path.get('reason', 'not checked')}): serving fp32"
        )
    return requested, f"{requested} requested; it passed the gate ({path['reason']})"


def select_forward(
    model: keras.Model, requested: str, int8_model: bytes | None, gate: Mapping[str, Any] | None
) -> tuple[Forward, str, str]:
    """The forward pass to use for a requested precision, checked against the gate report of
    this very model and int8 file; its precision; and why, in words.

    A reduced path that cannot be built (an int8 file missing or broken) or cannot run on this
    machine (it answers one blank image first: the gate may have passed it on another CPU)
    falls back to fp32: an answer in full precision is always possible.
    """
    served, reason = choose_precision(
        requested,
        gate,
        model_fingerprint(model) if gate else None,
        int8_fingerprint(int8_model) if gate and int8_model else None,
    )
    if served == "int8" and not int8_model:
        served, reason = "fp32", f"{reason}; but the int8 model file is missing: fp32"
    if served == "fp32":
        return forward_for(model, served), served, reason
    stage = "could not be loaded"
    try:
        forward = forward_for(model, served, int8_model)
        stage = "fails on this machine"
        size = image_size_of(model)
        forward(np.zeros((1, size, size, 3), np.float32))
    except Exception as exc:  # a broken int8 file, no kernel for bf16: fp32 still works
        logger.exception("The %s forward pass %s", served, stage)
        return (
            forward_for(model, "fp32"),
            "fp32",
            f"{served} {stage} ({failure_summary(exc)}): fp32",
        )
    return forward, served, reason


def failure_summary(exc: BaseException) -> str:
    """The exception's type and the first line of its message, for a reason in words."""
    # TensorFlow's messages start with the failing graph function's name: {{function_node ...}}
    message = re.sub(r"^(\{\{[^}]*\}\}\s*)+", "", str(exc).strip())
    first_line = (message.splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
