"""Every exception whose message is meant for the user, in one place.

The CLI and the node print a :class:`UserFacingError` as one line (exit code 2 for commands and
start-up); it is raised where the input is read (a file, an option, a parameter, a message). A
plain ``ValueError`` / ``KeyError`` / ``TypeError`` means a bug in this package and surfaces as
one, with its traceback.
"""
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


class CacheModeError(ConfigurationError):
    """A cache mode name or spec is not known, malformed, or names a mode that cannot run here."""


class ImageConversionError(UserFacingError):
    """An image message cannot be converted (unsupported encoding, inconsistent size/step/data)."""


class DatasetError(UserFacingError):
    """A dataset directory or episode file is missing, malformed or inconsistent."""


class SimCommandError(UserFacingError):
    """A command for the simulated arm is malformed (wrong size, unknown joint, bad timing)."""


class RenderingUnavailableError(UserFacingError):
    """No offscreen OpenGL context could be created for MuJoCo."""


class UnknownTaskError(UserFacingError):
    """A task family or target object name that the simulator does not know."""


class EvalError(UserFacingError):
    """The evaluation could not run: a node did not start, died, or did not answer."""


class InvalidInputError(UserFacingError):
    """A value given to the control layer (action, joint state, pose, setting) is unusable."""


class InstructionError(ConfigurationError):
    """An instruction is empty or does not fit in the model's context."""


class PolicyServerError(UserFacingError):
    """The policy server could not be reached, timed out, or refused a request (its reason
    included)."""


class TrainingError(UserFacingError):
    """A training run cannot start or resume: unusable data, bad options, or a --out that holds
    another run or something else."""


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
