"""Typed errors. Library code raises these; only cli.py turns them into an exit code.

Every message is one line: the cause, then advice ("... Try ...").
"""


class FaceSplatError(Exception):
    """Base class. `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(FaceSplatError):
    """The user's input (file, folder, flag) cannot be used."""

    exit_code = 2


class StageError(FaceSplatError):
    """A stage ran but could not produce a usable result (no face, too few registered frames...)."""

    exit_code = 3


class DeviceError(FaceSplatError):
    """The requested compute device is missing or ran out of memory."""

    exit_code = 4


class Cancelled(FaceSplatError):
    """The user interrupted the run (Ctrl-C / SIGTERM). The workspace stays resumable."""

    exit_code = 130
