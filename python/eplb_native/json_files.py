"""Reading a JSON file the user names (traces, expert maps, configs): every way it can fail is
one ValueError saying what was wrong, for the caller to prefix with the file's role and path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """The parsed content of the JSON file at ``path``.

    Raises:
        ValueError: the file is missing, a directory or unreadable, not UTF-8 text, not valid
            JSON, nested too deeply for the parser, or holds an integer with more digits than
            Python converts (4300 by default).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as error:
        msg = "no such file"
        raise ValueError(msg) from error
    except IsADirectoryError as error:
        msg = "is a directory, not a JSON file"
        raise ValueError(msg) from error
    except OSError as error:
        msg = f"unreadable ({error.strerror or error})"
        raise ValueError(msg) from error
    except UnicodeDecodeError as error:
        msg = f"not UTF-8 text ({error.reason} at byte {error.start})"
        raise ValueError(msg) from error
    return parse_json(text)


def parse_json(text: str) -> Any:
    """``json.loads(text)``, with every failure a ValueError saying what was wrong: not valid
    JSON, nested too deeply for the parser, or an integer with more digits than Python converts.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        msg = f"not valid JSON ({error})"
        raise ValueError(msg) from error
    except RecursionError as error:
        msg = "not readable JSON: arrays or objects nested too deeply"
        raise ValueError(msg) from error
    except ValueError as error:  # e.g. an integer literal past the int conversion digit limit
        msg = f"not readable JSON ({error})"
        raise ValueError(msg) from error


__all__ = ["parse_json", "read_json_file"]
