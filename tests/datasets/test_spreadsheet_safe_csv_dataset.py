import pandas as pd

from chest_ct_classifier.datasets.spreadsheet_safe_csv_dataset import SpreadsheetSafeCSVDataset


def test_formula_like_cells_are_escaped_on_disk_and_restored_on_load(tmp_path):
    names = ['=HYPERLINK("http://x")', "+1.png", "-2.png", "@sum.png", "'quoted.png", "ok.png"]
    table = pd.DataFrame({"image": names, "p": [-0.5, 0.1, 0.2, 0.3, 0.4, 0.5]})
    dataset = SpreadsheetSafeCSVDataset(filepath=str(tmp_path / "predictions.csv"),
                                        save_args={"index": False})  # fmt: skip
    dataset.save(table)
    text = (tmp_path / "predictions.csv").read_text()
    for line in text.splitlines()[1:5]:
        assert line.lstrip('"').startswith("'"), line  # no cell starts like a formula
    assert "-0.5" in text  # numbers are left alone
    pd.testing.assert_frame_equal(dataset.load(), table)
