"""Bedside service: a watch folder (and optionally a local HTTP endpoint) in front of one self-tested bundle.

Folders (WATCH is where the modality, PACS router or a user drops files)::

    WATCH/<input>                  a new image, DICOM file, NIfTI volume or DICOM series folder
    WATCH/.processing/<input>      claimed and being read; found here at start-up only after a crash or power
                                   loss, and then moved to failed/ (error type "Interrupted") instead of being
                                   retried, so one input that kills the process cannot put it in a restart loop
    WATCH/done/<input>             read; its results are in OUT
    WATCH/failed/<input>           could not be read; ``<input>.error.json`` beside it names the typed error
    OUT/<stem>.json                the result, exactly as ``lungedge infer --out`` writes it
    OUT/<stem>_overlay.png         the overlay of a 2-D image
    OUT/<stem>.error.json          the error of a failed input, for whoever watches OUT

An input is picked up once it has stayed unchanged for ``settle_seconds`` (a file still being copied is left
alone); names starting with "." or ending in .part, .tmp, .partial or .crdownload are ignored. Every output is
written to a hidden temporary file, flushed to disk and renamed, the JSON last, so a reader of OUT never sees
half a file and a JSON's appearance means its overlay is there. An input moves to done/ or failed/ only after
its outputs are in place; a name already taken there or in OUT gets a "-1", "-2"... suffix, never an overwrite.

Logs name an input by a short hash of its file name (file names can carry patient names) unless
``log_names`` is set; nothing read from a DICOM header reaches a log line. Start-up runs the bundle's golden
self-test (``lungedge selftest``) on the serving backend and exits with EXIT_SELFTEST, serving nothing, if it
fails. SIGTERM or SIGINT finish the input in hand and stop. Under systemd (``Type=notify``) READY=1 is sent
only after the self-test passed.

Modules, by job: ``core`` (Service, ServiceConfig), ``watch`` (which inputs have settled), ``atomic`` (outputs
flushed and renamed into place, names that never overwrite), ``labels`` (log names without identifiers),
``http`` (the 127.0.0.1 endpoint), ``daemon`` (exit statuses, sd_notify, signals; shared with the DICOM node)
and ``cli`` (``lungedge serve``).
"""

from lungedge.runtime.service.atomic import STEM_EXTENSIONS, commit, free_name, split_name, write_json_atomic
from lungedge.runtime.service.cli import BACKENDS, ENV_DEFAULTS, build_parser, config_from_args, main
from lungedge.runtime.service.core import (
    ERROR_SCHEMA,
    InterruptedInput,
    OutputError,
    Service,
    ServiceConfig,
    utc_now,
)
from lungedge.runtime.service.daemon import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SELFTEST,
    EXIT_UNUSABLE,
    SelfTestFailed,
    sd_notify,
)
from lungedge.runtime.service.http import HTTP_HOST, HTTP_STATUS, UPLOAD_SUFFIXES
from lungedge.runtime.service.labels import input_label
from lungedge.runtime.service.watch import IGNORED_SUFFIXES, WatchFolder, entry_signature, is_ignored

__all__ = [
    "BACKENDS", "ENV_DEFAULTS", "ERROR_SCHEMA", "EXIT_FAILED", "EXIT_OK", "EXIT_SELFTEST", "EXIT_UNUSABLE",
    "HTTP_HOST", "HTTP_STATUS", "IGNORED_SUFFIXES", "STEM_EXTENSIONS", "UPLOAD_SUFFIXES", "InterruptedInput",
    "OutputError", "SelfTestFailed", "Service", "ServiceConfig", "WatchFolder", "build_parser", "commit",
    "config_from_args", "entry_signature", "free_name", "input_label", "is_ignored", "main", "sd_notify",
    "split_name", "utc_now", "write_json_atomic",
]
