import keras
import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
from chest_ct_classifier.model.numeric_precision import (
    Int8Forward,
    agreement_with_fp32,
    bf16_model,
    choose_precision,
    forward_for,
    int8_feature_extractor,
    passes_gate,
    traced_forward,
)
from tests.conftest import bf16_without_a_kernel


@pytest.fixture(scope="module")
def inputs(sample_images):
    return np.stack([preprocess_image_bytes(data, 32) for data in sample_images.values()])


@pytest.fixture(scope="module")
def int8_model(tiny_model):
    return int8_feature_extractor(tiny_model)


def test_fp32_forward_is_the_model(tiny_model, inputs):
    np.testing.assert_allclose(
        traced_forward(tiny_model)(inputs), tiny_model.predict_on_batch(inputs), atol=1e-6
    )


def test_bf16_computes_the_convolutions_in_bfloat16_and_the_head_in_float32(tiny_model, inputs):
    copy = bf16_model(tiny_model)
    for name in ("block1_conv1", "block1_pool"):
        assert copy.get_layer(name).compute_dtype == "bfloat16"
    assert copy.get_layer("block1_conv1").variable_dtype == "bfloat16"  # rounded once
    assert copy.get_layer("head_output").compute_dtype == "float32"
    assert copy.get_layer("head_output").variable_dtype == "float32"
    assert tiny_model.get_layer("block1_conv1").compute_dtype == "float32"  # original untouched
    reference = traced_forward(tiny_model)(inputs)
    reduced = forward_for(tiny_model, "bf16")(inputs)
    assert reduced.dtype == np.float32
    assert not np.array_equal(reduced, reference)  # really another computation
    np.testing.assert_allclose(reduced, reference, atol=0.1)


def test_bf16_answers_as_keras_mixed_precision_on_the_convolutions(tiny_model, inputs):
    """Weights rounded once and pooling in bfloat16 are only faster: Keras' mixed_bfloat16
    policy on the convolutions (float32 weights rounded at every call, float32 pooling) gives
    the same probabilities and head inputs. Bit for bit where it was measured (Xeon-AMX); the
    tolerance leaves room for another CPU's kernels to fuse the casts and order sums otherwise,
    and is far below bf16's own distance from fp32 (atol 0.1 above)."""

    def mixed(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    reference = keras.models.clone_model(tiny_model, clone_function=mixed)
    reference.set_weights(tiny_model.get_weights())
    expected = traced_forward(reference).with_features(inputs)
    answered = forward_for(tiny_model, "bf16").with_features(inputs)
    for got, want in zip(answered, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)


def test_int8_stores_the_convolutions_in_int8_and_answers_near_fp32(tiny_model, int8_model, inputs):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=int8_model)
    kernels = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    assert len(kernels) >= 13  # every VGG16 convolution's kernel
    reference = traced_forward(tiny_model)(inputs)
    reduced = Int8Forward(tiny_model, int8_model)(inputs)
    assert reduced.shape == reference.shape == (len(inputs), len(LABELS))
    assert not np.array_equal(reduced, reference)
    np.testing.assert_allclose(reduced.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reduced, reference, atol=0.25)


def test_int8_answers_do_not_depend_on_the_batch_they_come_in(tiny_model, int8_model, inputs):
    forward = Int8Forward(tiny_model, int8_model)
    together = forward(inputs[:5])
    one_by_one = np.concatenate([forward(inputs[i : i + 1]) for i in range(5)])
    # dynamic quantization scales each image's activations on their own: batching changes nothing
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(forward(inputs[:5]), together, atol=1e-6)
    # an empty batch is answered, not passed to TFLite (which crashes the process on it)
    assert forward(inputs[:0]).shape == (0, len(LABELS))
    assert traced_forward(tiny_model)(inputs[:0]).shape == (0, len(LABELS))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_every_path_also_gives_the_head_input_vectors_it_computed(
    tiny_model, int8_model, inputs, precision
):
    from chest_ct_classifier.model.architecture import feature_extractor

    forward = forward_for(tiny_model, precision, int8_model)
    probabilities, features = forward.with_features(inputs[:6])
    np.testing.assert_array_equal(probabilities, forward(inputs[:6]))
    reference = feature_extractor(tiny_model).predict(inputs[:6], verbose=0)
    assert features.shape == reference.shape and features.dtype == np.float32
    # fp32 is the model itself; the reduced paths compute near it
    tolerance = {"fp32": 1e-4, "bf16": 0.1, "int8": 0.25}[precision]
    scale = np.abs(reference).max()
    np.testing.assert_allclose(features / scale, reference / scale, atol=tolerance)
    empty_probabilities, empty_features = forward.with_features(inputs[:0])
    assert empty_probabilities.shape == (0, len(LABELS))
    assert empty_features.shape == (0, reference.shape[1])


def test_int8_refuses_a_model_of_another_input_size(int8_model):
    from chest_ct_classifier.model.architecture import build_classifier

    other = build_classifier(64, None, dense_units=4, seed=0)
    with pytest.raises(ValueError, match="takes"):
        Int8Forward(other, int8_model)


def test_forward_for_says_what_is_missing_or_unknown(tiny_model):
    with pytest.raises(ValueError, match="int8 model"):
        forward_for(tiny_model, "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        forward_for(tiny_model, "fp16")


def test_agreement_counts_changed_answers_and_accuracy():
    reference = np.eye(4)[[0, 1, 2, 3, 0]]
    candidate = np.eye(4)[[0, 1, 2, 0, 0]] * 0.9 + 0.025
    comparison = agreement_with_fp32(reference, candidate, np.array([0, 1, 2, 3, 1]), 0.05)
    assert comparison["agreement"] == pytest.approx(0.8)
    assert comparison["disagreements"] == 1
    assert comparison["n_decided"] == 5 and comparison["decided_disagreements"] == 1
    assert comparison["near_tie_flips"] == 0
    assert comparison["fp32_accuracy"] == pytest.approx(0.8)
    assert comparison["accuracy"] == pytest.approx(0.6)
    assert comparison["accuracy_drop"] == pytest.approx(0.2)
    assert comparison["max_probability_change"] == pytest.approx(0.975)
    assert agreement_with_fp32(reference[:0], candidate[:0], np.array([]))["n_images"] == 0


def test_only_answers_fp32_is_decided_on_must_agree():
    # fp32: decided on the first two (margins 0.6 and 0.3), nearly tied on the third (0.02)
    reference = np.array([[0.8, 0.2, 0, 0], [0.1, 0.6, 0.3, 0], [0.49, 0.51, 0, 0]])
    near_tie_flipped = np.array([[0.8, 0.2, 0, 0], [0.1, 0.6, 0.3, 0], [0.51, 0.49, 0, 0]])
    labels = np.array([0, 1, 1])
    flipped = agreement_with_fp32(reference, near_tie_flipped, labels, 0.05)
    assert (flipped["n_decided"], flipped["decided_disagreements"], flipped["near_tie_flips"]) == (
        2,
        0,
        1,
    )
    decided_flipped = near_tie_flipped[[1, 0, 2]]  # the decided answers changed
    assert (
        agreement_with_fp32(reference, decided_flipped, labels, 0.05)["decided_disagreements"] == 2
    )


def _comparison(decided_disagreements: int, drop: float, n: int = 100, flips: int = 0) -> dict:
    return {"n_images": n, "n_decided": n - 5, "decided_disagreements": decided_disagreements,
            "near_tie_flips": flips, "accuracy_drop": drop, "accuracy": 0.8 - drop}  # fmt: skip


def test_the_gate_needs_fp32_s_decided_answers_and_accuracy_on_every_split():
    ok = _comparison(0, 0.005, flips=2)
    passed, reason = passes_gate({"valid": ok, "test": ok}, 0.05, 0.01)
    assert passed and "valid 2 of 5" in reason  # near ties may flip: counted, not refused
    passed, reason = passes_gate({"valid": ok, "test": _comparison(1, 0.0)}, 0.05, 0.01)
    assert not passed and reason.startswith("test: 1 of the 95 answers fp32 is decided on")
    passed, reason = passes_gate({"valid": _comparison(0, 0.02), "test": ok}, 0.05, 0.01)
    assert not passed and "below fp32" in reason
    assert passes_gate({}, 0.05, 0.01) == (False, "no valid or test images to check it on")


GATE = {
    "paths": {
        "fp32": {"ms_per_image": 300.0},
        "bf16": {"passed": True, "reason": "fine", "ms_per_image": 320.0},
        "int8": {"passed": True, "reason": "fine", "ms_per_image": 200.0},
    }
}


def test_auto_serves_the_fastest_path_that_passed():
    assert choose_precision("auto", GATE)[0] == "int8"
    slow_int8 = {"paths": {**GATE["paths"], "int8": {**GATE["paths"]["int8"], "passed": False}}}
    # bf16 passed but is slower than fp32 on this machine: fp32
    assert choose_precision("auto", slow_int8) == (
        "fp32",
        "auto: no reduced precision passed the gate and was faster than fp32",
    )


def test_a_requested_path_is_served_only_if_it_passed():
    assert choose_precision("bf16", GATE)[0] == "bf16"
    assert choose_precision("fp32", GATE)[0] == "fp32"
    failed = {"paths": {**GATE["paths"], "int8": {"passed": False, "reason": "test: 0.9"}}}
    served, reason = choose_precision("int8", failed)
    assert served == "fp32" and "did not pass" in reason and "test: 0.9" in reason
    assert choose_precision("int8", None)[0] == "fp32"
    assert "no precision gate report" in choose_precision("auto", {})[1]
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int4", GATE)


def test_bf16_keeps_keras_global_policy(tiny_model):
    bf16_model(tiny_model)
    assert keras.config.dtype_policy().name == "float32"


def test_a_gate_report_applies_only_to_the_files_it_checked():
    checked = {**GATE, "model_fingerprint": "m1", "int8_fingerprint": "i1"}
    assert choose_precision("int8", checked, model="m1", int8="i1")[0] == "int8"
    served, reason = choose_precision("int8", checked, model="m2", int8="i1")
    assert served == "fp32" and "another model" in reason
    served, reason = choose_precision("int8", checked, model="m1", int8="i2")
    assert served == "fp32" and "not the one checked" in reason
    assert choose_precision("auto", checked, model="m1", int8="i2")[0] == "fp32"  # bf16 slower


def test_select_forward_checks_fingerprints_and_falls_back_to_fp32(tiny_model, int8_model, inputs):
    from chest_ct_classifier.model.numeric_precision import (
        int8_fingerprint,
        model_fingerprint,
        select_forward,
    )

    gate = {**GATE, "model_fingerprint": model_fingerprint(tiny_model),
            "int8_fingerprint": int8_fingerprint(int8_model)}  # fmt: skip
    forward, served, _ = select_forward(tiny_model, "int8", int8_model, gate)
    assert served == "int8"
    np.testing.assert_allclose(forward(inputs[:2]), Int8Forward(tiny_model, int8_model)(inputs[:2]))
    broken = b"not a tflite model"
    gate_of_broken = {**gate, "int8_fingerprint": int8_fingerprint(broken)}
    forward, served, reason = select_forward(tiny_model, "int8", broken, gate_of_broken)
    assert served == "fp32" and "could not be loaded" in reason
    reference = tiny_model.predict_on_batch(inputs[:2])
    np.testing.assert_allclose(forward(inputs[:2]), reference, atol=1e-6)
    assert select_forward(tiny_model, "int8", None, gate)[1] == "fp32"
    # the bf16 copy holds the same head and the convolutions' weights rounded to bfloat16
    copy = bf16_model(tiny_model)
    for original, rounded in zip(tiny_model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(
            np.asarray(rounded.numpy(), np.float32),
            original.numpy().astype(rounded.dtype).astype(np.float32),
        )


def test_a_reduced_path_that_fails_on_this_machine_serves_fp32(tiny_model, inputs, monkeypatch):
    # the gate passed bf16 on the machine that trained; here oneDNN has no kernel for it (as
    # with ONEDNN_MAX_CPU_ISA=AVX2 on a CPU whose instructions advertise bfloat16)
    from chest_ct_classifier.model import numeric_precision
    from chest_ct_classifier.model.architecture import model_fingerprint
    from chest_ct_classifier.model.numeric_precision import select_forward

    bf16_without_a_kernel(
        monkeypatch,
        numeric_precision,
        "could not create a primitive descriptor\nfor the convolution",
    )
    paths = {**GATE["paths"], "bf16": {"passed": True, "ms_per_image": 100.0}, "int8": {}}
    gate = {"paths": paths, "model_fingerprint": model_fingerprint(tiny_model)}
    forward, served, reason = select_forward(tiny_model, "auto", None, gate)
    assert served == "fp32"
    assert reason == (
        "bf16 fails on this machine (RuntimeError: could not create a primitive descriptor): fp32"
    )
    np.testing.assert_allclose(
        forward(inputs[:2]), tiny_model.predict_on_batch(inputs[:2]), atol=1e-6
    )
