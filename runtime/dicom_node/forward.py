"""The C-STORE SCU: results go to each configured destination, with back-off while it is unreachable.

An unreachable destination (no association) costs nothing but time: its results wait in the outbox and go out
when it answers again, however long that takes. A destination that answers and refuses an instance (a failure
status) gets it again after a back-off, and after ``max_rejections`` refusals it goes to dead-letter/.
"""

from __future__ import annotations

import logging

log = logging.getLogger("lungedge.dicom_node")

RESULT_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def backoff(base, cap):
    """Seconds to wait before attempt ``n + 1``: base, 2 base, 4 base... capped at ``cap``."""
    def delay(attempt):
        return min(float(cap), float(base) * (2 ** max(0, int(attempt) - 1)))
    return delay


class Forwarder:
    """Sends the store's due outbox rows, one association per destination and round."""

    def __init__(self, config, store):
        self.config, self.store = config, store
        self.destinations = {d.name: d for d in config.destinations}
        self.delay = backoff(config.retry_base_seconds, config.retry_max_seconds)

    def _ae(self, paths):
        """An AE proposing each file's SOP class (SR, SEG, SC...) in the syntaxes the files are written in."""
        import pydicom
        from pynetdicom import AE

        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        classes = {}
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # unreadable result file: send_c_store reports it below
                continue
            syntax = str(ds.file_meta.TransferSyntaxUID)
            classes.setdefault(str(ds.SOPClassUID), {syntax, *RESULT_SYNTAXES})
        for uid, syntaxes in sorted(classes.items())[:128]:
            ae.add_requested_context(uid, sorted(syntaxes))
        return ae

    def run_once(self):
        """Try every due row once; returns how many were sent."""
        sent = 0
        for name, rows in self.store.due().items():
            dest = self.destinations.get(name)
            if dest is None:  # removed from the configuration: keep the rows for when it comes back
                continue
            sent += self._send(dest, rows)
        return sent

    def _send(self, dest, rows):
        ae = self._ae([path for _, path in rows])
        try:
            assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        except OSError as exc:
            assoc, error = None, f"{type(exc).__name__}: {exc}"
        if assoc is None or not assoc.is_established:
            error = "association refused or destination unreachable" if assoc is not None else error
            self.store.postpone([row_id for row_id, _ in rows], self.delay, error)
            log.warning("destination %s unreachable: %d results wait for it", dest.name, len(rows))
            return 0
        sent = 0
        try:
            for index, (row_id, path) in enumerate(rows):
                try:
                    status = assoc.send_c_store(path)
                except Exception as exc:  # unreadable file, or the peer accepted no context for its SOP class
                    dead = self.store.rejected(row_id, self.config.max_rejections, self.delay,
                                               f"cannot send ({type(exc).__name__}: {exc})")
                    log.warning("could not send a result to %s (%s)%s", dest.name, type(exc).__name__,
                                "; moved to dead-letter" if dead else "; will retry")
                    continue
                if not status or "Status" not in status:  # the association broke mid-way
                    self.store.postpone([r for r, _ in rows[index:]], self.delay, "association lost")
                    log.warning("lost the association to %s; %d results wait", dest.name, len(rows) - index)
                    break
                code = int(status.Status)
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                    self.store.sent(row_id)
                    sent += 1
                else:
                    dead = self.store.rejected(row_id, self.config.max_rejections, self.delay,
                                               f"status 0x{code:04X}")
                    log.warning("%s refused a result with status 0x%04X%s", dest.name, code,
                                "; moved to dead-letter" if dead else "; will retry")
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        return sent
