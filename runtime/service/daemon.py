"""What a long-running process needs under systemd: exit statuses, sd_notify, stop on SIGTERM/SIGINT.

Shared by ``lungedge serve`` and ``lungedge dicom-node``, so both answer systemd and their callers alike.
"""

import contextlib
import logging
import os
import signal
import socket

from lungedge.runtime.errors import LungedgeError

EXIT_OK = 0  # stopped on request
EXIT_FAILED = 1  # stopped because an output could not be written (the input in hand went back to WATCH)
EXIT_UNUSABLE = 2  # could not start: bad bundle, missing backend, unusable folders, usage error
EXIT_SELFTEST = 3  # the golden self-test failed or could not run: refused to serve

log = logging.getLogger("lungedge.service")


class SelfTestFailed(LungedgeError):
    """The bundle's golden self-test failed or could not run on the serving backend; the service refuses to serve."""


def sd_notify(message):
    """Send ``message`` to systemd's notify socket when run under ``Type=notify``; False when not."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message.split("=")[0], exc)
        return False
    return True


@contextlib.contextmanager
def stop_on_signals(stop):
    """Inside the block SIGTERM and SIGINT call ``stop()``; the previous handlers come back after it."""
    previous = {sig: signal.signal(sig, lambda *_: stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_status(start, logger):
    """Call ``start()``; None when it worked, else the EXIT_* status of why not (logged to ``logger``)."""
    try:
        start()
    except SelfTestFailed as exc:
        logger.error("%s", exc)
        return EXIT_SELFTEST
    except (LungedgeError, OSError) as exc:
        logger.error("cannot start: %s", exc)
        return EXIT_UNUSABLE
    return None
