"""Chest CT cancer classifier: a Kedro project for VGG16 transfer learning on chest CT images."""

__version__ = "0.1.0"
