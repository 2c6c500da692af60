"""The one exception family of reblur-deploy.

Library code raises these with messages a user can act on; the CLI prints ``str(error)`` as one
line on stderr and exits non-zero (with a traceback only under ``--verbose``).
"""


class ReblurError(Exception):
    """Base class of every error reblur-deploy raises on purpose."""


class InputError(ReblurError, ValueError):
    """An image, tensor or file given as input cannot be used (shape, dtype, range, contents)."""


class WeightsError(ReblurError):
    """A weight file is missing, unsafe, corrupt or does not fit its declared architecture."""


class ConfigError(ReblurError, ValueError):
    """An unknown model name or an invalid constructor or command option."""


class DependencyError(ReblurError, ImportError):
    """An optional dependency (onnxruntime, tensorrt, ...) is needed but not installed."""


class NotAvailableError(ReblurError):
    """A feature that this release does not provide yet."""
