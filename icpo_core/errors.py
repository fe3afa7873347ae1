"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file / dataset / key and what to do."""


class DataError(UserError):
    """An input dataset is missing, corrupt, schema-mismatched or empty after filtering."""
