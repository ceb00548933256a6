"""The exceptions of tflq: one family, rooted at :class:`tflq.Error`."""

from __future__ import annotations

import builtins
import os
from typing import Optional, Union


class Error(Exception):
    """Base class of every error tflq raises (KeyboardInterrupt aside)."""


class ModelError(Error, ValueError):
    """The model is not a valid TFLite model; the message names the file and, where known,
    the subgraph, tensor or buffer concerned."""


class OptionError(Error, ValueError):
    """An option has an invalid value (the same checks as the command line's flags)."""


class BatchError(Error):
    """A batch cannot start (for instance: the output folder is an input folder)."""


class ValidationError(Error):
    """A model could not be run in LiteRT, or its outputs hold new NaN or infinity."""


class FileError(Error, OSError):
    """A file could not be read or written; ``filename`` names it, ``errno`` is the
    operating system's error number when there is one."""

    def __str__(self) -> str:
        return str(self.strerror if self.strerror is not None else self.args[0])


class NotFoundError(FileError, builtins.FileNotFoundError):
    """A file or folder does not exist."""


class PermissionDeniedError(FileError, builtins.PermissionError):
    """Permission denied."""


class AlreadyExistsError(FileError, builtins.FileExistsError):
    """A file exists where it should not."""


class DirectoryError(FileError, builtins.IsADirectoryError):
    """A folder where a file is needed."""


class NotADirectoryError_(FileError, builtins.NotADirectoryError):
    """A file where a folder is needed."""


class NotARegularFileError(FileError):
    """An input that is not a regular file (folder, device, FIFO, socket)."""


class SameFileError(FileError):
    """The output would replace the input and ``in_place`` was not given."""


class ChangedError(FileError):
    """The input changed while it was being read; nothing was written."""


_KINDS = {
    "NotFound": NotFoundError,
    "PermissionDenied": PermissionDeniedError,
    "AlreadyExists": AlreadyExistsError,
    "IsADirectory": DirectoryError,
    "NotADirectory": NotADirectoryError_,
    "NotAFile": NotARegularFileError,
    "SameFile": SameFileError,
    "Changed": ChangedError,
}


def _os_error(
    kind: Optional[str],
    errno: Optional[int],
    message: str,
    filename: Union[str, "os.PathLike[str]", None],
) -> FileError:
    """Builds the exception of a file error (called by the native module)."""
    cls = _KINDS.get(kind or "", FileError)
    if kind == "NotAFile" and filename is not None and os.path.isdir(filename):
        cls = _NotAFileDir
    # OSError(errno, strerror): the whole message (it names the file) is the strerror.
    err = cls(errno, message) if errno is not None else cls(message)
    err.strerror = message
    if filename is not None:
        err.filename = os.fspath(filename)
    return err


class _NotAFileDir(NotARegularFileError, DirectoryError):
    """An input that is a folder."""

