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


def one_line(error: object) -> str:
    """An exception's text on one line (library messages can span several; the CLI prints one)."""
    return " ".join(str(error).split())
