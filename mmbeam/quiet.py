"""Keep Beam's import-time noise out of mmbeam users' terminals.

Importing ``apache_beam`` logs ``apitools not found, and bigquery client libraries are not
available`` through ``logging.warning`` on the root logger, which also installs a root handler
(``logging.basicConfig``) that then prints every later warning of every library. Neither concerns
a user who never touches BigQuery. :func:`install` (run by ``import mmbeam``) drops those records
and takes back the handler that the dropped call installed, and nothing else.
"""

from __future__ import annotations

import logging

__all__ = ["BEAM_IMPORT_NOISE", "BeamImportNoiseFilter", "install"]

#: the starts of the records Beam logs while it is imported
BEAM_IMPORT_NOISE = ("apitools not found",)


class BeamImportNoiseFilter(logging.Filter):
    """Drops Beam's import-time records on the root logger, and the handler their
    ``logging.warning`` call added when the root logger had none."""

    def __init__(self, root: logging.Logger):
        super().__init__()
        self.root = root
        self.configured_before = bool(root.handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(BEAM_IMPORT_NOISE):
            return True
        if not self.configured_before:
            for handler in list(self.root.handlers):
                if _made_by_basic_config(handler):
                    self.root.removeHandler(handler)
        return False


def _made_by_basic_config(handler: logging.Handler) -> bool:
    formatter = handler.formatter
    return (type(handler) is logging.StreamHandler and formatter is not None
            and formatter._fmt == logging.BASIC_FORMAT)


def install() -> None:
    """Filter Beam's import noise on the root logger (once per process)."""
    root = logging.getLogger()
    if not any(isinstance(f, BeamImportNoiseFilter) for f in root.filters):
        root.addFilter(BeamImportNoiseFilter(root))
