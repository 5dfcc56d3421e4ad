from kedro.framework.project import configure_project, pipelines

from chest_ct_classifier.pipeline_registry import TRAINING_FLOW


def test_every_pipeline_is_registered_and_default_is_the_training_flow():
    configure_project("chest_ct_classifier")
    pipelines.set_requested(None)
    assert set(pipelines) == {*TRAINING_FLOW, "inference", "__default__"}
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    flow_nodes = {n.name for name in TRAINING_FLOW for n in pipelines[name].nodes}
    assert default_nodes == flow_nodes
    assert "predict_images" not in default_nodes


def test_one_pipeline_can_be_requested_alone():
    configure_project("chest_ct_classifier")
    pipelines.set_requested(["inference"])
    try:
        assert [n.name for n in pipelines["inference"].nodes] == ["predict_images"]
    finally:
        pipelines.set_requested(None)
