"""Shared entry point for stage scripts: parse the command line, validate the config, report
user errors as one clear line (exit 2) instead of a stack trace from deep inside."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from stages.config import ConfigError, load_config, parse_cli
from stages.lineage import LineageError
from stages.run import AlreadyFinished


class UserError(Exception):
    """Bad input the user can fix (data file, CLI): its message names the file, line and field."""


def main_for(schema: type, default_config: str, body: Callable[[Any], None],
             argv: list[str] | None = None) -> int:
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING  # one voice under torchrun
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(schema, *parse_cli(argv, default_config))
        body(cfg)
    except AlreadyFinished as e:
        print(e)
        return 0
    except (ConfigError, LineageError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
