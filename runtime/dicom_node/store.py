"""Durable state of the node: the inbox, the work queue and the outbox, in one folder with a SQLite database.

Layout of ``state``::

    inbox/<SOPInstanceUID>.dcm    received instances, each fsynced and renamed into place before C-STORE success;
                                  deleted once processed unless the node keeps its inputs (``keep_inputs``)
    results/<key>/                sr.dcm, seg.dcm, sc.dcm (what exists) and result.json (no patient identifiers)
    failed/<name>                 inputs that could not be used, each with <name>.error.json (typed error)
    dead-letter/<AET>/<file>      results a destination refused ``max_rejections`` times, with .error.json
    queue.sqlite                  instances (received -> done | failed) and outbox rows (pending -> sent | dead)

The database runs in WAL mode with ``synchronous=FULL``: a row committed is on disk. An instance is marked done
in the same transaction that queues its results for forwarding, so a kill at any moment leaves it either
queued (and processed again after the restart, giving the same UIDs and files) or done, never both or neither.
A file in inbox/ without a row (a kill between the rename and the insert) is registered again at start-up.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, path TEXT NOT NULL, modality TEXT NOT NULL, series_uid TEXT NOT NULL,
    received REAL NOT NULL, state TEXT NOT NULL DEFAULT 'received', processed INTEGER NOT NULL DEFAULT 0,
    result TEXT, processed_at REAL);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state, modality, series_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, last_error TEXT,
    queued REAL NOT NULL, sent REAL, UNIQUE (path, destination));
"""


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path, data):
    """Write bytes through a hidden temporary file, fsync it, rename it into place and fsync the folder."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(folder)


def write_json_durably(path, data):
    write_durably(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def safe_name(uid):
    """A file name from a UID (digits and dots), refusing anything else."""
    text = str(uid).strip()
    if not text or len(text) > 64 or any(c not in "0123456789." for c in text):
        raise ValueError("not a DICOM UID")
    return text


class NodeStore:
    """The state folder and its queue database; every method is safe to call from any thread."""

    def __init__(self, root):
        self.root = root
        self.inbox, self.results, self.failed, self.dead = (os.path.join(root, d) for d in
                                                            ("inbox", "results", "failed", "dead-letter"))
        for folder in (root, self.inbox, self.results, self.failed, self.dead):
            os.makedirs(folder, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(os.path.join(root, "queue.sqlite"), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._clean_temporaries()

    def close(self):
        with self._lock:
            self._db.close()

    def _clean_temporaries(self):
        for folder in (self.inbox, self.failed):
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(folder, name))

    def _run(self, sql, args=(), many=False):
        with self._lock:
            cur = self._db.executemany(sql, args) if many else self._db.execute(sql, args)
            return cur.fetchall()

    # -- receiving --------------------------------------------------------------------------------------------

    def receive(self, sop_uid, series_uid, modality, data):
        """Write one received instance durably and queue it; False if it was already received (a resend)."""
        path = os.path.join(self.inbox, safe_name(sop_uid) + ".dcm")
        if self._run("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)):
            return False
        write_durably(path, data)
        self._run("INSERT OR IGNORE INTO instances (sop_uid, path, modality, series_uid, received) "
                  "VALUES (?, ?, ?, ?, ?)", (sop_uid, path, modality, series_uid, time.time()))
        return True

    def reject(self, data, error):
        """Keep an instance that could not be received (corrupt), with its typed error; returns its file name."""
        name = f"received-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.dcm"
        write_durably(os.path.join(self.failed, name), data)
        write_json_durably(os.path.join(self.failed, name + ".error.json"), error)
        return name

    def recover(self, describe):
        """Register inbox files that have no row (a kill between rename and insert); returns how many."""
        known = {row[0] for row in self._run("SELECT path FROM instances")}
        count = 0
        for name in sorted(os.listdir(self.inbox)):
            path = os.path.join(self.inbox, name)
            if name.startswith(".") or path in known:
                continue
            sop_uid, series_uid, modality = describe(path)
            self._run("INSERT OR IGNORE INTO instances (sop_uid, path, modality, series_uid, received) "
                      "VALUES (?, ?, ?, ?, ?)", (sop_uid, path, modality, series_uid, os.path.getmtime(path)))
            count += 1
        return count

    # -- the work queue ---------------------------------------------------------------------------------------

    def next_xray(self):
        rows = self._run("SELECT sop_uid, path FROM instances WHERE state = 'received' AND modality = 'xray' "
                         "ORDER BY received LIMIT 1")
        return rows[0] if rows else None

    def settled_series(self, settle_seconds, now=None):
        """Series UIDs of queued CT instances whose newest instance arrived ``settle_seconds`` ago or more."""
        now = time.time() if now is None else now
        rows = self._run("SELECT series_uid, MAX(received) FROM instances WHERE state = 'received' AND "
                         "modality = 'ct' GROUP BY series_uid ORDER BY MIN(received)")
        return [uid for uid, newest in rows if now - newest >= settle_seconds]

    def series_instances(self, series_uid):
        return self._run("SELECT sop_uid, path FROM instances WHERE state = 'received' AND modality = 'ct' AND "
                         "series_uid = ? ORDER BY received", (series_uid,))

    def complete(self, sop_uids, result_dir, files, destinations):
        """Mark instances done and queue ``files`` for each destination, in one transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sop in sop_uids:
                    self._db.execute("UPDATE instances SET state = 'done', processed = processed + 1, result = ?, "
                                     "processed_at = ? WHERE sop_uid = ? AND state = 'received'",
                                     (result_dir, now, sop))
                for dest in destinations:
                    for path in files:
                        self._db.execute("INSERT OR IGNORE INTO outbox (path, destination, queued) VALUES (?, ?, ?)",
                                         (path, dest, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def queue(self, files, destinations):
        """Queue ``files`` for each destination now (an SR sent ahead of its SEG and SC); repeats are ignored."""
        now = time.time()
        self._run("INSERT OR IGNORE INTO outbox (path, destination, queued) VALUES (?, ?, ?)",
                  [(path, dest, now) for dest in destinations for path in files], many=True)

    def release_inputs(self, sop_uids):
        """Delete the inbox files of processed instances (after ``complete`` committed: never needed again)."""
        for sop in sop_uids:
            rows = self._run("SELECT path FROM instances WHERE sop_uid = ? AND state = 'done'", (sop,))
            if rows and rows[0][0].startswith(self.inbox + os.sep) and os.path.exists(rows[0][0]):
                os.unlink(rows[0][0])

    def fail(self, sop_uids, error):
        """Move instances to failed/ with their error JSON and mark them failed."""
        for sop in sop_uids:
            rows = self._run("SELECT path FROM instances WHERE sop_uid = ?", (sop,))
            if not rows:
                continue
            name = os.path.basename(rows[0][0])
            write_json_durably(os.path.join(self.failed, name + ".error.json"), error)
            if os.path.exists(rows[0][0]):
                os.replace(rows[0][0], os.path.join(self.failed, name))
                fsync_dir(self.failed)
            self._run("UPDATE instances SET state = 'failed', path = ? WHERE sop_uid = ?",
                      (os.path.join(self.failed, name), sop))

    def counts(self):
        """{"received": n, "done": n, "failed": n, "pending": n, "sent": n, "dead": n}."""
        out = dict.fromkeys(("received", "done", "failed", "pending", "sent", "dead"), 0)
        for state, n in self._run("SELECT state, COUNT(*) FROM instances GROUP BY state"):
            out[state] = n
        for state, n in self._run("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            out[state] = n
        return out

    def instances(self):
        """[(sop_uid, state, processed, result)] of every instance."""
        return self._run("SELECT sop_uid, state, processed, result FROM instances ORDER BY received")

    # -- the outbox -------------------------------------------------------------------------------------------

    def due(self, now=None):
        """{destination: [(id, path), ...]} of pending rows whose next try has come, SRs first."""
        now = time.time() if now is None else now
        out = {}
        # SRs first: they carry the finding, and a PACS user waits for them, not for the SEG or SC.
        for row_id, path, dest in self._run("SELECT id, path, destination FROM outbox WHERE state = 'pending' AND "
                                            "next_try <= ? ORDER BY (path NOT LIKE '%sr.dcm'), id", (now,)):
            out.setdefault(dest, []).append((row_id, path))
        return out

    def next_due(self):
        rows = self._run("SELECT MIN(next_try) FROM outbox WHERE state = 'pending'")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def sent(self, row_id):
        self._run("UPDATE outbox SET state = 'sent', sent = ? WHERE id = ?", (time.time(), row_id))

    def postpone(self, row_ids, delay_for_attempt, error):
        """The destination was unreachable: try again after a back-off; nothing is given up."""
        now = time.time()
        for row_id in row_ids:
            rows = self._run("SELECT attempts FROM outbox WHERE id = ?", (row_id,))
            attempts = rows[0][0] + 1 if rows else 1
            self._run("UPDATE outbox SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                      (attempts, now + delay_for_attempt(attempts), error, row_id))

    def rejected(self, row_id, max_rejections, delay_for_attempt, error):
        """The destination refused the instance; after ``max_rejections`` it goes to dead-letter/ (True)."""
        path, dest, rejections = self._run("SELECT path, destination, rejections FROM outbox WHERE id = ?",
                                           (row_id,))[0]
        rejections += 1
        if rejections < max_rejections:
            self._run("UPDATE outbox SET rejections = ?, attempts = attempts + 1, next_try = ?, last_error = ? "
                      "WHERE id = ?", (rejections, time.time() + delay_for_attempt(rejections), error, row_id))
            return False
        folder = os.path.join(self.dead, dest.split("@")[0])
        os.makedirs(folder, exist_ok=True)
        name = os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path)
        with open(path, "rb") as fh:
            write_durably(os.path.join(folder, name), fh.read())
        write_json_durably(os.path.join(folder, name + ".error.json"),
                           {"schema": "lungedge.error/1", "destination": dest, "rejections": rejections,
                            "error": {"type": "DestinationRefused", "message": error}})
        self._run("UPDATE outbox SET state = 'dead', rejections = ?, last_error = ? WHERE id = ?",
                  (rejections, error, row_id))
        return True
