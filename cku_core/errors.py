"""Errors that carry one sentence a user can act on: what is wrong, and how to fix it."""


class CKUError(Exception):
    """Base class: the CLI prints `error: <message>` and exits non-zero, without a traceback."""


class UnsupportedModelError(CKUError):
    pass


class ConfigError(CKUError):
    pass


class MaskError(CKUError):
    pass


class InvariantError(CKUError):
    """Locked or frozen weights moved during unlearning (or nothing moved at all)."""


class DataError(CKUError):
    pass
