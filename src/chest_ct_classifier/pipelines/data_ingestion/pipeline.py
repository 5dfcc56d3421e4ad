"""Data ingestion: fetch the source, index every image, keep the usable ones."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import assess_data_quality, index_images, select_usable_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                index_images,
                inputs=["raw_images", "params:data_ingestion", "params:preprocessing.dicom_window"],
                outputs=["image_index", "ingestion_summary"],
                name="index_images",
            ),
            node(
                assess_data_quality,
                inputs=["image_index", "params:data_ingestion"],
                outputs=["image_table", "data_quality", "data_quality_report"],
                name="assess_data_quality",
            ),
            node(
                select_usable_images,
                inputs=["raw_images", "image_table"],
                outputs="ingested_images",
                name="select_usable_images",
            ),
        ]
    )
