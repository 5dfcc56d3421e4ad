"""Data ingestion: fetch the source, index every image, keep the usable ones."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import index_images, select_usable_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                index_images,
                inputs=["raw_images", "params:data_ingestion"],
                outputs=["image_index", "ingestion_summary"],
                name="index_images",
            ),
            node(
                select_usable_images,
                inputs=["raw_images", "image_index"],
                outputs="ingested_images",
                name="select_usable_images",
            ),
        ]
    )
