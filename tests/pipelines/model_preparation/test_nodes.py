from chest_ct_classifier.model.pretrained_weights import PretrainedWeights, load_hed_conv_weights
from chest_ct_classifier.pipelines.model_preparation.nodes import prepare_classifier
from tests.conftest import settings

PARAMS = settings(
    "model_preparation",
    {
        "image_size": 32,
        "seed": 0,
        "head": {"pooling": "flatten", "normalize": False, "dense_units": 0, "dropout": 0.1},
    },
)


def test_fallback_weights_are_recorded_for_reports_and_tags():
    pretrained = PretrainedWeights(
        requested="imagenet",
        used="hed_bsds500",
        source="hed.h5",
        conv_weights=load_hed_conv_weights(),
        fallback_reason="offline",
    )
    model, info, tags = prepare_classifier(pretrained, PARAMS)
    assert info == {
        "requested": "imagenet",
        "used": "hed_bsds500",
        "source": "hed.h5",
        "fallback_reason": "offline",
    }
    assert tags == {
        "weights_used": "hed_bsds500",
        "weights_requested": "imagenet",
        "weights_fallback": "yes",
    }
    assert model.input_shape == (None, 32, 32, 3)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"head_output"}
