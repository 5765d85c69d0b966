"""The Flower app folder that `fedreid server run` submits (what `flwr run DIR` packages).

From a source checkout it is the checkout itself (its pyproject.toml declares the app). An
installed fedreid has no checkout: the folder is then written afresh — a pyproject.toml that
names the installed ``server.app:app`` and ``clients.app:app`` and the run config table — and
the SuperLink and SuperNodes import the code from the same installed package.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from fedreid.config.loader import flower_run_config_toml

_COMPONENTS = """[tool.flwr.app]
publisher = "fedreid"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "clients.app:app"
"""


def checkout_app_dir() -> Path | None:
    """The source checkout this package runs from, when it holds the Flower app."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        app = tomllib.loads(pyproject.read_text()).get("tool", {}).get("flwr", {}).get("app")
    except tomllib.TOMLDecodeError:
        return None
    return root if app else None


def write_app_dir(folder: Path) -> Path:
    """Write a Flower app folder for the installed fedreid into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    version = metadata.version("fedreid")
    project = (f'[project]\nname = "fedreid"\nversion = "{version}"\n'
               f'dependencies = []\n\n')
    (folder / "pyproject.toml").write_text(project + _COMPONENTS + "\n" + flower_run_config_toml())
    return folder


def flower_app_dir(scratch: Path) -> Path:
    """The checkout when there is one, else a folder written under ``scratch``."""
    return checkout_app_dir() or write_app_dir(scratch / "flower-app")
