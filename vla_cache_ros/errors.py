"""Exceptions whose message is meant for the user: the CLI and the node print them as one line."""
from __future__ import annotations


class UserFacingError(Exception):
    """An error caused by input the user controls (a file, an option, a parameter)."""


class CheckpointError(UserFacingError):
    """A model directory is missing, unsafe, malformed or inconsistent with its config."""


class BagError(UserFacingError):
    """A rosbag2 file or directory is missing, corrupt, or lacks a requested topic."""


class ConfigurationError(UserFacingError):
    """An option, parameter or configuration value is out of range or inconsistent."""


class DemoError(UserFacingError):
    """The live demo cannot go on (a child died, the node never reported, ...)."""


def one_line(error: object) -> str:
    """An exception's text on one line (library messages can span several; the CLI prints one)."""
    return " ".join(str(error).split())


USER_TEXT_LIMIT = 200
"""Characters of any user-supplied text (an instruction, a parameter value) that logs and
/diagnostics show; a 1 MB instruction must not become a 1 MB log line."""


def clip_text(text: str, limit: int = USER_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was when cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
