import numpy as np
import pytest

from chest_ct_classifier.model.batches import map_batches


def test_answers_come_back_in_order_from_batches_of_at_most_the_size():
    seen = []

    def double(batch):
        seen.append(len(batch))
        return batch * 2

    progress = []
    out = map_batches(double, np.arange(10), 4, (), lambda done, total: progress.append(done))
    np.testing.assert_array_equal(out, np.arange(10) * 2)
    assert seen == [4, 4, 2]
    assert progress == [4, 8, 10]


def test_no_input_never_calls_the_function_and_is_shaped_like_its_answers():
    def refuse(batch):
        raise AssertionError("called with an empty batch")

    out = map_batches(refuse, np.zeros((0, 8, 8, 3)), 16, (4,))
    assert out.shape == (0, 4)
    assert map_batches(refuse, np.zeros((0, 3)), 2, (None, 5)).shape == (0, 0, 5)


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        map_batches(lambda b: b, np.arange(3), 0, ())
