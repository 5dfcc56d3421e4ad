"""The network: VGG16 architecture and its pretrained weights, the activation cache of the
frozen layers, two-phase training, calibration, the forward passes in each numeric precision,
and Grad-CAM explanations."""
