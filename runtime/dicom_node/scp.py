"""The storage SCP (pynetdicom): C-ECHO, and C-STORE of CR, DX and CT images into the durable inbox.

Only the configured calling AE titles get an association; the others are refused (and logged by AE title and
address only). A presentation context is accepted only for a configured modality's SOP classes and for transfer
syntaxes this installation can decode, so a peer learns at association time what it cannot send. An instance
gets its success status only after it is fsynced in the inbox and queued in the database.
"""

from __future__ import annotations

import io
import logging
import ssl

from lungedge.runtime.errors import InputError

log = logging.getLogger("lungedge.dicom_node")

VERIFICATION = "1.2.840.10008.1.1"
SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "xray",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "xray",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1": "xray",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.2": "ct",  # CT Image Storage
}
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian
COMPRESSED = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Non-Hierarchical, First-Order Prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)
MODALITY_CODES = {"CR": "xray", "DX": "xray", "CT": "ct"}
# C-STORE statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210


class CorruptDataset(InputError):
    """A received dataset cannot be parsed, or its pixel data does not match its header."""


def decodable_syntaxes():
    """The transfer syntaxes accepted: uncompressed ones, and each compressed one a decoder is installed for."""
    from lungedge.runtime.io.dicom import _decoder_available

    return list(UNCOMPRESSED) + [uid for uid in COMPRESSED if _decoder_available(uid)]


def check_dataset(data):
    """Parse an encoded instance fully (pixels not decoded); returns its dataset or raises CorruptDataset."""
    import pydicom

    from lungedge.runtime.io.dicom import _silence

    _silence(pydicom)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        for _ in ds.iterall():  # parses every element: a bad length or a truncated value raises here
            pass
    except Exception as exc:  # pydicom raises many types on damaged data
        raise CorruptDataset(f"the dataset cannot be parsed ({type(exc).__name__})") from None
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise CorruptDataset("the dataset holds no image (PixelData, Rows or Columns missing)")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in UNCOMPRESSED:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * frames * samples * ((int(ds.get("BitsAllocated", 8)) + 7) // 8)
        have = len(ds.PixelData)
        if have < expected:
            raise CorruptDataset(f"pixel data holds {have} bytes, the header says {expected}")
    return ds


def ssl_context(cert, key, ca=None):
    """A server TLS context; with ``ca`` the peer must present a certificate that ``ca`` signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(certfile=cert, keyfile=key)
    context.verify_mode = ssl.CERT_REQUIRED if ca else ssl.CERT_NONE
    return context


class StorageSCP:
    """pynetdicom application entity feeding a NodeStore; ``start`` binds, ``stop`` shuts down."""

    def __init__(self, config, store, modalities, on_received=None):
        self.config, self.store, self.modalities = config, store, tuple(modalities)
        self.on_received = on_received
        self.server = None
        self.syntaxes = decodable_syntaxes()

    def _ae(self):
        from pynetdicom import AE

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO/DEBUG lines can quote datasets
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allowed_callers)
        ae.require_called_aet = True
        ae.maximum_associations = 16
        if self.config.max_pdu:
            ae.maximum_pdu_size = self.config.max_pdu
        ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED))
        for uid, modality in SOP_CLASSES.items():
            if modality in self.modalities:
                ae.add_supported_context(uid, self.syntaxes)
        return ae

    def start(self):
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_REJECTED, self.handle_rejected), (evt.EVT_ABORTED, self.handle_aborted)]
        context = None
        if self.config.tls_cert:
            context = ssl_context(self.config.tls_cert, self.config.tls_key, self.config.tls_ca)
        self.server = self._ae().start_server((self.config.host, self.config.port), block=False,
                                              evt_handlers=handlers, ssl_context=context)
        return self.address

    @property
    def address(self):
        return self.server.server_address[:2] if self.server else None

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- handlers (each runs in its association's thread) -----------------------------------------------------

    @staticmethod
    def _peer(event):
        requestor = event.assoc.requestor
        return f"{requestor.ae_title} at {requestor.address}"

    def handle_echo(self, event):
        log.info("C-ECHO from %s", self._peer(event))
        return SUCCESS

    def handle_rejected(self, event):
        log.warning("refused an association from %s (calling AE title not allowed, or wrong called AE title)",
                    self._peer(event))

    def handle_aborted(self, event):
        log.warning("association from %s aborted; nothing of an unfinished transfer was acknowledged",
                    self._peer(event))

    def handle_store(self, event):
        """Write the instance durably, then answer; corrupt data gets 0xC210 and a typed error file."""
        data = event.encoded_dataset(include_meta=True)
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            ds = check_dataset(data)
            modality = SOP_CLASSES[sop_class]
            code = str(ds.get("Modality", "") or "").upper()
            if code and MODALITY_CODES.get(code) != modality:
                raise InputError(f"modality {code!r} does not match the SOP class")
            if str(ds.get("SOPInstanceUID", "")) != str(event.request.AffectedSOPInstanceUID):
                raise CorruptDataset("the dataset's SOP Instance UID differs from the request's")
        except InputError as exc:
            status = CANNOT_UNDERSTAND if isinstance(exc, CorruptDataset) else DOES_NOT_MATCH_SOP_CLASS
            error = {"schema": "lungedge.error/1", "error": {"type": type(exc).__name__, "message": str(exc)},
                     "status": f"0x{status:04X}", "sop_class": sop_class}
            try:
                name = self.store.reject(data, error)
            except OSError as oserr:
                log.error("cannot keep a refused instance: %s", oserr)
                return OUT_OF_RESOURCES
            log.warning("refused an instance from %s with status 0x%04X (%s), kept as failed/%s",
                        self._peer(event), status, type(exc).__name__, name)
            return status
        try:
            new = self.store.receive(str(ds.SOPInstanceUID), str(ds.get("SeriesInstanceUID", "")), modality, data)
        except (OSError, ValueError) as exc:
            log.error("cannot store a received instance (%s): %s", type(exc).__name__, exc)
            return OUT_OF_RESOURCES
        if self.on_received is not None:
            self.on_received()
        log.debug("stored an instance from %s%s", self._peer(event), "" if new else " (a resend, kept once)")
        return SUCCESS
