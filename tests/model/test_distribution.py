"""Training under MirroredStrategy on two logical CPU devices gives the single-device answer.
Run in a fresh interpreter: logical devices must be set before TensorFlow starts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow  # a fresh TensorFlow process (about 30 s)

_SCRIPT = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from chest_ct_classifier.model.architecture import build_classifier
from chest_ct_classifier.model.pretrained_weights import load_hed_conv_weights
from chest_ct_classifier.model.two_phase_training import train_two_phase
from tests.conftest import settings
from tests.model.test_two_phase_training import OVERRIDES, _cached

# no dropout and no batch normalization: their per-device masks and statistics are all that
# mirrored training changes beyond rounding
model = build_classifier(
    32, load_hed_conv_weights(), normalize=False, dense_units=16, dropout=0.0, seed=0
)
train = _cached(model, 16, 1, seed=0)
from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
from tests.conftest import SAMPLE_ROOT

images = sorted(SAMPLE_ROOT.rglob("*.png"))[:8]
inputs = np.stack([preprocess_image_bytes(path.read_bytes(), 32) for path in images])
answers = {}
for distribute in ("none", "mirrored"):
    parameters = settings("training", {**OVERRIDES, "distribute": distribute})
    trained, _ = train_two_phase(model, train, parameters, epochs=(3, 1))
    answers[distribute] = np.asarray(trained.predict_on_batch(inputs)).tolist()
answers["untrained"] = np.asarray(model.predict_on_batch(inputs)).tolist()
print(json.dumps({"answers": answers, "devices": len(tf.config.list_logical_devices("CPU"))}))
"""


def test_mirrored_training_on_two_devices_gives_the_single_device_answer():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    answers = {key: np.asarray(value) for key, value in report["answers"].items()}
    np.testing.assert_allclose(answers["mirrored"], answers["none"], atol=1e-4)
    assert np.abs(answers["none"] - answers["untrained"]).max() > 0.01  # it did train
