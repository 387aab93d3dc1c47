"""The one error type the command line turns into a single line and exit code 2, and keeping a library's own
log lines about a failure that is reported that way from reaching the user."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(Exception):
    """Bad input: a config field, file or store that cannot be used as asked.

    The message names the field or file and what was expected; it is printed alone, without a
    traceback, before any work starts.
    """


@contextmanager
def quiet_logger(name: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Only records of `level` and above from logger `name` (and its children) while the block runs."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def first_line(err: BaseException) -> str:
    """The first line of the error that started `err`: libraries wrap a parser's or the hub's error in their own."""
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(err).split("\n")[0].split()) or type(err).__name__
