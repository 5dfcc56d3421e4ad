"""The web app: an upload page and a JSON API over the trained classifier (``create_app``)."""

from chest_ct_classifier.serving.app_factory import create_app

__all__ = ["create_app"]
