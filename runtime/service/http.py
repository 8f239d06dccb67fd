"""The optional HTTP endpoint on 127.0.0.1: ``POST /predict`` with image bytes, ``GET /health``."""

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from lungedge.runtime import report
from lungedge.runtime.errors import BackendUnavailable, BundleError, EngineMismatch, InputError, LungedgeError
from lungedge.runtime.service.labels import verdict

HTTP_HOST = "127.0.0.1"  # never another interface: the endpoint has no authentication
UPLOAD_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif", "image/bmp": ".bmp",
                   "application/dicom": ".dcm"}
HTTP_STATUS = ((InputError, 422), (EngineMismatch, 500), (BackendUnavailable, 503), (BundleError, 500))

log = logging.getLogger("lungedge.service")


def _upload_name(query, content_type):
    """A safe file name for an upload: ``?name=`` (base name only) or ``upload`` plus a suffix from its type."""
    given = os.path.basename((parse_qs(query).get("name") or [""])[0])
    if given and not given.startswith(".") and all(c.isalnum() or c in "._-" for c in given):
        return given
    return "upload" + UPLOAD_SUFFIXES.get((content_type or "").split(";")[0].strip().lower(), "")


def _handler_for(service):
    class Handler(BaseHTTPRequestHandler):
        server_version = "lungedge"
        timeout = 30  # seconds a client may stall before its connection is dropped

        def log_message(self, fmt, *args):  # the default writes to stderr with the client address
            log.debug("http: " + fmt, *args)

        def _reply(self, status, body):
            data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, type_name, message):
            self._reply(status, {"error": {"type": type_name, "message": message}})

        def do_GET(self):
            if urlsplit(self.path).path != "/health":
                return self._error(404, "NotFound", "GET /health or POST /predict")
            self._reply(200, {"status": "ok", "bundle": service.predictor.info,
                              "selftest": report.jsonable(service.selftests)})

        def do_POST(self):
            url = urlsplit(self.path)
            if url.path != "/predict":
                return self._error(404, "NotFound", "POST the image bytes to /predict")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._error(411, "LengthRequired", "send a Content-Length header")
            if int(length) > service.config.max_upload_bytes:
                self.close_connection = True
                return self._error(413, "TooLarge", f"upload of {length} bytes exceeds the "
                                                    f"{service.config.max_upload_bytes}-byte limit")
            data = self.rfile.read(int(length))
            try:
                result = service.predict_upload(data, _upload_name(url.query, self.headers.get("Content-Type")))
            except Exception as exc:  # reported to the caller; the service keeps serving
                status = next((code for cls, code in HTTP_STATUS if isinstance(exc, cls)), 500)
                message = str(exc) if isinstance(exc, LungedgeError) else f"unexpected {type(exc).__name__}: {exc}"
                log.warning("http upload failed (%s)", type(exc).__name__)
                return self._error(status, type(exc).__name__, message)
            log.info("http upload: %s", verdict(result))
            self._reply(200, result)

        def do_PUT(self):
            self._error(405, "MethodNotAllowed", "GET /health or POST /predict")

        do_DELETE = do_PATCH = do_PUT

    return Handler


def serve_in_thread(service, port):
    """Start the endpoint for ``service`` on HTTP_HOST:``port`` (0: any free port); returns (server, thread)."""
    httpd = ThreadingHTTPServer((HTTP_HOST, port), _handler_for(service))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="lungedge-http",
                              daemon=True)
    thread.start()
    return httpd, thread
