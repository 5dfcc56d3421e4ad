"""Custom Kedro datasets for what kedro-datasets and kedro-mlflow do not cover."""
