"""Entry point for ``python -m chest_ct_classifier``: runs the Kedro project (``kedro run``'s
options), or the command line's commands: ``python -m chest_ct_classifier predict PATH...``,
``python -m chest_ct_classifier audit verify LOG``."""

import sys
from pathlib import Path

from kedro.framework.cli.project import run
from kedro.framework.project import configure_project

from chest_ct_classifier import cli


def main(*args, **kwargs) -> None:
    if args and args[0] and args[0][0] in cli.cli.commands:
        cli.cli(args[0], prog_name="python -m chest_ct_classifier")
        return
    configure_project(Path(__file__).parent.name)
    # Kedro's own `run` (find_run_command would look for a `run` in this project's cli.py,
    # which holds only `predict`)
    run(*args, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
