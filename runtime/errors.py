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
