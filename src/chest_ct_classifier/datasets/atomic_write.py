"""Files written whole or not at all, by any number of runs at once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(target: Path, write: Callable[[Path], None], suffix: str = ".part") -> None:
    """``write`` a partial file of its own name (two runs never share one) beside ``target``,
    then rename it over ``target``: a reader sees the old file or the new one, never half of
    one, and a failed or killed write leaves at most its own partial file (removed on failure).
    ``suffix`` ends the partial name (Keras insists on ``.keras``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}{suffix}")
    try:
        write(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
