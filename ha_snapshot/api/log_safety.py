"""What the API process writes to its log may not be steered by clients.

A request's path, query, headers and body reach log messages as
arguments; :func:`safe` escapes control characters (a ``%0a`` in a URL
would otherwise start a forged log line) and bounds the length (a 60 KB
id is logged as its first :data:`LIMIT` characters and its size).
:func:`install` applies it to the arguments of every log record made in
the process, whichever module logs.

May import the standard library only.
"""

import logging
import re

LIMIT = 256
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029]')
_installed = False


def _escape(match) -> str:
    code = ord(match.group())
    return '\\x%02x' % code if code < 0x100 else '\\u%04x' % code


def safe(value, limit: int = LIMIT) -> str:
    """``value`` as one bounded line of text."""
    text = value if isinstance(value, str) else (
        value.decode('utf-8', 'backslashreplace')
        if isinstance(value, bytes) else str(value))
    if len(text) > limit:
        text = '%s...(%d characters)' % (text[:limit], len(text))
    return _CONTROL.sub(_escape, text)


def _clean(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return safe(value, limit=4 * LIMIT)


def sanitize(record: logging.LogRecord) -> None:
    """Escape and bound the arguments (and a plain message) of a record."""
    args = record.args
    if isinstance(args, dict):
        record.args = {k: _clean(v) for k, v in args.items()}
    elif args:
        record.args = tuple(_clean(a) for a in args)
    elif isinstance(record.msg, str) and _CONTROL.search(record.msg):
        record.msg = _CONTROL.sub(_escape, record.msg)


def install() -> None:
    """Sanitize every log record made from now on in this process."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        sanitize(record)
        return record
    logging.setLogRecordFactory(factory)
