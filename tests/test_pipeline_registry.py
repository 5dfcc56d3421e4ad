from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project, pipelines

from chest_ct_classifier.config.batch_scoring import SPARK_TAG
from chest_ct_classifier.images.preprocessing import bytes_from_base64, preprocess_image_bytes
from chest_ct_classifier.pipeline_registry import TRAINING_FLOW, logged_input_example
from chest_ct_classifier.settings import CONFIG_LOADER_ARGS
from tests.conftest import PROJECT_ROOT


def test_every_pipeline_is_registered_and_default_is_the_training_flow():
    configure_project("chest_ct_classifier")
    pipelines.set_requested(None)
    assert set(pipelines) == {*TRAINING_FLOW, "inference", "batch_scoring", "__default__"}
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    flow_nodes = {n.name for name in TRAINING_FLOW for n in pipelines[name].nodes}
    assert default_nodes == flow_nodes
    assert "predict_images" not in default_nodes


def test_one_pipeline_can_be_requested_alone():
    configure_project("chest_ct_classifier")
    pipelines.set_requested(["inference"])
    try:
        assert [n.name for n in pipelines["inference"].nodes] == [
            "predict_images",
            "audit_batch_inference",
            "summarize_series",
        ]
    finally:
        pipelines.set_requested(None)


def test_the_training_flow_and_evaluation_register_the_serving_pipeline():
    from kedro_mlflow.pipeline.pipeline_ml import PipelineML

    from chest_ct_classifier.registry.champion_gate import MODEL_NAME

    configure_project("chest_ct_classifier")
    pipelines.set_requested(None)
    for name in ("__default__", "evaluation"):
        registering = pipelines[name]
        assert isinstance(registering, PipelineML), name
        assert registering.input_name == "serving_input"
        assert [n.name for n in registering.inference.nodes] == [
            "images_from_request",
            "predict_request_images",
        ]
        kwargs = registering.log_model_kwargs
        assert kwargs["registered_model_name"] == MODEL_NAME
        assert kwargs["code_paths"][0].endswith("chest_ct_classifier")
    assert not isinstance(pipelines["training"], PipelineML)
    assert not isinstance(pipelines["inference"], PipelineML)


def test_the_input_example_is_a_request_of_one_readable_image():
    example = logged_input_example()
    assert list(example.columns) == ["image"] and len(example) == 1
    image = preprocess_image_bytes(bytes_from_base64(example["image"][0]), 64)
    assert image.shape == (64, 64, 3)


def test_only_batch_scoring_has_spark_nodes_and_spark_yml_is_read():
    configure_project("chest_ct_classifier")
    pipelines.set_requested(None)
    with_spark = {
        name for name, p in pipelines.items() if any(SPARK_TAG in n.tags for n in p.nodes)
    }
    assert with_spark == {"batch_scoring"}
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)
    assert loader["spark"]["spark.app.name"] == "chest-ct-batch-scoring"
