"""The watch folder: which dropped inputs have settled (stopped changing) and may be read."""

import logging
import os
import time

IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")

log = logging.getLogger("lungedge.service")


def is_ignored(name):
    """Hidden names and partial-upload suffixes are never picked up."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def entry_signature(path):
    """What must stay the same while an input settles: size and mtime (a folder: file count, total, latest)."""
    st = os.stat(path)
    if not os.path.isdir(path):
        return ("file", st.st_size, st.st_mtime_ns)
    count, total, latest = 0, 0, st.st_mtime_ns
    for root, _, files in os.walk(path):
        latest = max(latest, os.stat(root).st_mtime_ns)
        for f in files:
            fst = os.stat(os.path.join(root, f))
            count, total, latest = count + 1, total + fst.st_size, max(latest, fst.st_mtime_ns)
    return ("dir", count, total, latest)


class WatchFolder:
    """The inputs in WATCH that have stayed unchanged for ``settle_seconds``, oldest first.

    ``clock`` (seconds, monotonic) is ``time.monotonic`` except in tests.
    """

    SUBFOLDERS = (".processing", "done", "failed")

    def __init__(self, root, settle_seconds, clock=time.monotonic):
        self.root = root
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.processing, self.done, self.failed = (os.path.join(root, d) for d in self.SUBFOLDERS)
        self._seen = {}  # name -> (signature, clock time it was first seen with that signature)

    def prepare(self):
        """Create the folders; raise OSError if WATCH is missing or any of them is not writable."""
        if not os.path.isdir(self.root):
            raise OSError(f"watch folder {self.root} does not exist")
        for folder in (self.processing, self.done, self.failed):
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OSError(f"folder {folder} is not writable by this user")

    def ready(self):
        """Names ready to process now, oldest modification first."""
        now, found = self.clock(), []
        try:
            names = os.listdir(self.root)
        except OSError as exc:
            log.warning("cannot list the watch folder: %s", exc)
            return []
        for name in names:
            if is_ignored(name) or name in self.SUBFOLDERS:
                continue
            try:
                sig = entry_signature(os.path.join(self.root, name))
            except OSError:  # vanished or unreadable mid-copy: look again next poll
                continue
            previous = self._seen.get(name)
            if previous is None or previous[0] != sig:
                self._seen[name] = (sig, now)
                if self.settle_seconds > 0:
                    continue
            elif now - previous[1] < self.settle_seconds:
                continue
            found.append((sig[-1], name))
        self._seen = {k: v for k, v in self._seen.items() if k in names}
        return [name for _, name in sorted(found)]

    def forget(self, name):
        self._seen.pop(name, None)
