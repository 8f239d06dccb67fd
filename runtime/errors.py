"""Typed errors of the runtime: each says what was wrong and what to do."""


class LungedgeError(Exception):
    """Base of every error the kit raises on purpose."""


class BundleError(LungedgeError):
    """A bundle folder or manifest is missing, malformed, tampered with, or too new."""


class InputError(LungedgeError):
    """An input image cannot be used: unreadable, wrong modality, wrong size, bad pixel values."""


class BackendUnavailable(LungedgeError):
    """A requested backend (or its provider, GPU, library) is not present; never silently replaced."""


class EngineMismatch(LungedgeError):
    """A TensorRT engine was built for another TensorRT version or GPU than the one at hand."""


class UnknownName(LungedgeError, KeyError):
    """A name that a registry or closed set does not hold (a task, an architecture, a backend, a precision).

    A ``KeyError`` too, so callers that looked names up in a dict keep working; unlike ``KeyError`` its text is
    the plain message (no quotes around it).
    """

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ConfigError(LungedgeError, ValueError):
    """A configuration or recipe value that cannot be used: says which key, what was given, what is allowed."""
