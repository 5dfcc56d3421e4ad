"""Kedro pipelines, one folder each; registered by find_pipelines."""
