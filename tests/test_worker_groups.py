"""`make test` runs each test file whole on one worker, so that a file's module fixtures (a
served app, a `dvc repro`) are made once: a guard against the grouping silently stopping, as it
did with pytest 9.2 and pytest-xdist 3.8 (pyproject.toml)."""

import pytest


def test_under_make_test_this_file_is_one_group(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under `pytest -n N --dist loadgroup` (make test)")
    assert request.node.nodeid.endswith("@tests/test_worker_groups.py")
