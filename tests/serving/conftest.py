"""Fixtures for the web app: a small model trained for real on the bundled sample, and the real
app served over HTTP on a free local port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from chest_ct_classifier.images.labels import LABELS, label_from_folder
from tests.conftest import SAMPLE_ROOT

SERVED_IMAGE_SIZE = 32
OOD_DETECTOR_FILE = "ood_detector.npz"
"""The catalog's file name of the detector: the app reads it beside a model named by path."""


def sample_paths() -> dict[str, list[Path]]:
    """The bundled sample's images by label (train and valid splits)."""
    by_label: dict[str, list[Path]] = {label: [] for label in LABELS}
    for path in sorted(SAMPLE_ROOT.rglob("*.png")) + sorted(SAMPLE_ROOT.rglob("*.jpg")):
        label = label_from_folder(path.parent.name)
        if label:
            by_label[label].append(path)
    return by_label


def train_small_model(path: Path, epochs: int, seed: int) -> Path:
    """A real VGG16 classifier at 32 px (HED weights), its head trained on the sample's train
    split, saved where ``kedro run`` saves one, with the weights record and an
    out-of-distribution detector beside it (fitted on the train split's features, its
    threshold set on the valid split's)."""
    import keras

    from chest_ct_classifier.datasets.activation_cache_dataset import OodDetectorDataset
    from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
    from chest_ct_classifier.model.architecture import (
        build_classifier,
        feature_extractor,
        model_fingerprint,
    )
    from chest_ct_classifier.model.ood import fit_detector
    from chest_ct_classifier.model.pretrained_weights import load_hed_conv_weights

    keras.utils.set_random_seed(seed)
    model = build_classifier(SERVED_IMAGE_SIZE, load_hed_conv_weights(), dense_units=16, seed=seed)
    images, targets = [], []
    for index, label in enumerate(LABELS):
        for image_path in sample_paths()[label]:
            if "/train/" in image_path.as_posix():
                images.append(preprocess_image_bytes(image_path.read_bytes(), SERVED_IMAGE_SIZE))
                targets.append(index)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(np.stack(images), np.array(targets), epochs=epochs, batch_size=8, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (path.parent / "weights_info.json").write_text(json.dumps({"used": "hed_bsds500"}))
    held_out = [
        preprocess_image_bytes(image_path.read_bytes(), SERVED_IMAGE_SIZE)
        for paths in sample_paths().values()
        for image_path in paths
        if "/valid/" in image_path.as_posix()
    ]
    features = feature_extractor(model)
    detector = fit_detector(
        features.predict(np.stack(images), verbose=0),
        np.array(targets),
        features.predict(np.stack(held_out), verbose=0),
        0.02,
        model_fingerprint(model),
    )
    OodDetectorDataset(filepath=str(path.parent / OOD_DETECTOR_FILE)).save(detector)
    return path


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classifier trained for real on the bundled sample (a few seconds)."""
    return train_small_model(tmp_path_factory.mktemp("model") / "classifier.keras", 3, seed=0)


@pytest.fixture(scope="session")
def retrained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another small classifier (another seed): what a training run started by the app makes."""
    return train_small_model(tmp_path_factory.mktemp("retrained") / "classifier.keras", 1, seed=7)


@pytest.fixture(scope="session")
def sample_image_path() -> Callable[[str], Path]:
    """``sample_image_path(label)``: a real image of that class from the bundled sample."""
    paths = sample_paths()
    return lambda label: paths[label][0]


def serve(model_path: Path | None, project_path: Path, **settings) -> tuple[str, object]:
    """The real app (``create_app``) with those :class:`ServingSettings` on a free local port,
    in a thread: its base URL and the server (``shutdown()`` stops it)."""
    from chest_ct_classifier.serving import create_app
    from chest_ct_classifier.serving.settings import ServingSettings

    app = create_app(
        ServingSettings(
            project_path=project_path,
            model_path=model_path or project_path / "no-model.keras",
            **settings,
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.fixture(scope="module")
def server(trained_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with default settings serving the small trained model, shared by a module."""
    base, running = serve(trained_model_path, tmp_path_factory.mktemp("project"))
    yield base
    running.shutdown()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``live_server(model_path, **settings) -> base URL``: an app of its own for one test,
    stopped after it; ``model_path=None`` serves an app with no model."""
    servers = []

    def start(model_path: Path | None = None, **settings) -> str:
        settings.setdefault("project_path", tmp_path)
        base, running = serve(model_path, **settings)
        servers.append(running)
        return base

    yield start
    for running in servers:
        running.shutdown()


@pytest.fixture(scope="session")
def sample_paths_by_label() -> dict[str, list[Path]]:
    return sample_paths()
