"""What every `fedreid` sub-command shares: the console, failing clearly, the data check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from fedreid.data.records import DataError

console = Console(soft_wrap=True)  # long paths stay on one line, copy-pastable


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def checked_dataset(path: Path, dataset: str, seed: int) -> dict[str, Any]:
    """Run the data check; a bad folder ends the command with the reader's message."""
    from fedreid.data.check import check_dataset

    try:
        return check_dataset(path, dataset, seed=seed)
    except (DataError, ValueError) as exc:
        fail(str(exc), code=1)
