"""The suite's exceptions: one root, then errors the user can fix and errors the suite made.

- ``UserError`` (also a ``ValueError``): something the person running a job can fix: the
  config, the arguments, the input data, an artifact or the encoders.  The message names
  what was wrong (the key, column, file or value).  Jobs (``tsa_lib.cli.main_guard``)
  report it in one line and exit with code 2.
- ``InternalError`` (also a ``RuntimeError``): the suite broke one of its own promises (rows
  went missing, a model gave non-finite scores).  Jobs let it through with its traceback.

Any other exception (a plain ``ValueError`` from a shape check, a Spark error) is a bug or
an environment problem and also keeps its traceback.
"""

from __future__ import annotations


class TsaError(Exception):
    """Root of every exception the suite raises on purpose."""


class UserError(TsaError, ValueError):
    """Something the user can fix: reported in one line, exit code 2."""


class ConfigError(UserError):
    """A config value or key is wrong (the message names the dotted key and the value)."""


class DataError(UserError):
    """The input data cannot be used as configured (a missing column, an empty run date, a
    unit mismatch, too few labels)."""


class ArtifactError(UserError):
    """A model artifact is missing, incomplete, broken or does not fit the encoders."""


class EncoderError(UserError):
    """An encoder artifact is missing, malformed or does not fit the data."""


class InternalError(TsaError, RuntimeError):
    """The suite broke a promise of its own: kept with its traceback."""
