"""Keep native decoder messages (OpenCV, libpng, libjpeg, libtiff) off stderr; hand them to the typed error.

The C libraries behind OpenCV print warnings ("libpng warning: ...", "Corrupt JPEG data: ...",
"[ WARN:0] ... imread_") straight to file descriptor 2, below Python's ``sys.stderr``. ``native_stderr``
points descriptor 2 at a private temporary file for the duration of a decode and returns what was written
there, so a reader can quote it in its ``InputError`` when the decode fails and drop it when the decode works.
The redirect is process-wide, so decodes are serialised by a lock; a message another thread writes to
descriptor 2 during those few milliseconds lands in the same capture instead of the terminal.
"""

import contextlib
import os
import sys
import tempfile
import threading

_LOCK = threading.Lock()
_SINK = None
# At most this many characters of decoder text go into an error message.
MAX_MESSAGE = 300


class Captured:
    """What the native code wrote while captured (``text``, filled in when the block exits)."""

    def __init__(self):
        self.text = ""

    def summary(self):
        """The captured lines joined by "; ", shortened to ``MAX_MESSAGE`` characters ("" when none)."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        joined = "; ".join(dict.fromkeys(lines))  # repeated warnings once
        return joined if len(joined) <= MAX_MESSAGE else joined[:MAX_MESSAGE - 3] + "..."


def _sink():
    global _SINK
    if _SINK is None:
        _SINK = tempfile.TemporaryFile(mode="w+b")
    return _SINK


def _stderr_fd():
    try:
        return sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
    except (AttributeError, OSError, ValueError):
        return 2


@contextlib.contextmanager
def native_stderr():
    """Capture descriptor 2 while the block runs; yields a ``Captured`` whose ``text`` is set on exit."""
    captured = Captured()
    with _LOCK:
        fd = _stderr_fd()
        try:
            saved = os.dup(fd)
        except OSError:  # no descriptor 2 at all (daemonised): nothing can reach a terminal anyway
            yield captured
            return
        sink = _sink()
        sink.seek(0)
        sink.truncate()
        for stream in (sys.stderr, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
