"""The base of every error a user can fix by changing what they gave herd (a file, an option, a
spec). Front ends (the CLI) report a HerdError in one line; anything else is a bug and keeps its
traceback. Each module's own error class derives from it (and from ValueError where a wrong value
is what it reports, so code catching ValueError still catches it)."""

from __future__ import annotations


class HerdError(Exception):
    """Something given to herd cannot be used as it is; the message says where and what to do."""


class UsageError(HerdError, ValueError):
    """A value given to herd (an option, a name, a spec, a weight) that it cannot use, where no
    module's own error class says more."""


class ImportFileError(HerdError, ValueError):
    """A file that cannot be imported, or files and options that do not fit the format; the
    message says where and why."""
