"""Entry point for ``python -m chest_ct_classifier``: runs the Kedro project (``kedro run``'s
options), or, as ``python -m chest_ct_classifier predict PATH...``, predicts images."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

from chest_ct_classifier import cli


def main(*args, **kwargs) -> None:
    if args and args[0] and args[0][0] == "predict":
        cli.cli(args[0], prog_name="python -m chest_ct_classifier")
        return
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    run(*args, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
