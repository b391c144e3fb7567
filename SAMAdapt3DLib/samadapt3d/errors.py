"""Errors with messages a user can act on. Every user-facing failure is one of these."""
import re

#: numpy scalar reprs such as `np.float64(200.0)` or `np.int64(3)`, which say nothing to a user
_NUMPY_SCALAR = re.compile(r"\bnp\.(?:float|int|uint|bool|complex|str)\w*\(([^()]*)\)")


class SAMAdapt3DError(Exception):
    """Base class: the CLI prints the message and exits non-zero; the Slicer module shows it."""

    def __str__(self) -> str:
        # messages are built with f-strings from numpy values in many places: show the numbers plainly
        return _NUMPY_SCALAR.sub(r"\1", super().__str__())


class InputError(SAMAdapt3DError, ValueError):
    """A volume, mask or prompt that cannot be used (wrong shape, NaN, outside the image, ...)."""


class CheckpointError(SAMAdapt3DError):
    """A weight file that cannot be loaded: missing, corrupt, untrusted or with the wrong keys."""


class ModelNotFoundError(SAMAdapt3DError, LookupError):
    """An unknown model name, or a model file that does not exist."""


class DeviceError(SAMAdapt3DError):
    """A device that is not there (e.g. --device cuda without a GPU), or out of memory on it."""


class CancelledError(SAMAdapt3DError):
    """The user cancelled a running operation; nothing was changed."""
