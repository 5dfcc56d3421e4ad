"""Grad-CAM: where in the image the model looked for its answer (Selvaraju et al., 2017).

The heatmap weighs a convolution's feature maps (``CAM_LAYER``) by the gradient of the chosen
class's logit (the input of the softmax), keeps the positive part and scales it to [0, 1].
"""

from __future__ import annotations

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from chest_ct_classifier.model.architecture import OUTPUT_LAYER

CAM_LAYER = "block4_conv3"
"""Every path to the answer passes this convolution: the head reads block 4's pooled output as
well as block 5's (``model.architecture.build_classifier``), so block 5's maps alone would miss
part of the evidence. 28x28 maps at 224 px."""


def grad_cam(
    model: keras.Model,
    image: np.ndarray,
    class_index: int | None = None,
    layer_name: str = CAM_LAYER,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap for one preprocessed image, and the model's class probabilities for it.

    Args:
        model: the classifier (VGG16 base plus head, softmax output layer ``head_output``).
        image: (H, W, 3) float32, as ``preprocess_image_bytes`` returns it.
        class_index: the class to explain; the predicted one when None.
        layer_name: the convolution whose feature maps are weighed.

    Returns:
        heatmap: (H, W) float32 in [0, 1] (all zeros when no region speaks for the class);
        probabilities: (n_classes,) float32, the same as the model's own output.
    """
    output_layer = model.get_layer(OUTPUT_LAYER)
    probe = keras.Model(
        model.input, [model.get_layer(layer_name).output, output_layer.input, model.output]
    )
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        feature_maps, head_input, probabilities = probe(batch, training=False)
        logits = tf.matmul(head_input, output_layer.kernel) + output_layer.bias
        chosen = int(np.argmax(probabilities[0])) if class_index is None else int(class_index)
        score = logits[:, chosen]
    gradients = tape.gradient(score, feature_maps)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feature_maps, axis=-1))[0]
    cam = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0].numpy()
    peak = float(cam.max())
    heatmap = (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)
    return heatmap, np.asarray(probabilities[0], dtype=np.float32)


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over a uint8 RGB image of the same size."""
    colours = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255.0
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    return np.clip(blended.round(), 0, 255).astype(np.uint8)
