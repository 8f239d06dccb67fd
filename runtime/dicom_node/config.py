"""The node's configuration: a frozen dataclass, read from a JSON file (unknown keys refused) or CLI flags."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from lungedge.runtime.configs import config_from_dict

AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")  # 1-16 chars, no backslash


def check_ae_title(title, what="AE title"):
    """Return ``title`` stripped, or raise ValueError when it is not a valid AE title."""
    text = str(title).strip()
    if not AE_TITLE.match(text):
        raise ValueError(f"{what} {title!r} is not a DICOM AE title (1-16 printable ASCII characters, no backslash)")
    return text


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the results go to (a PACS, or back to the cart)."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self):
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "destination AE title"))
        if not 0 < int(self.port) <= 65535:
            raise ValueError(f"destination port {self.port} is not a TCP port")

    @property
    def name(self):
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text):
        """``AET@host:port``."""
        match = re.match(r"^([^@]+)@(.+):([0-9]+)$", str(text))
        if not match:
            raise ValueError(f"destination {text!r} is not AET@host:port")
        return cls(match.group(1), match.group(2), int(match.group(3)))


@dataclass(frozen=True)
class NodeConfig:
    """Everything the DICOM node needs; ``state`` holds the inbox, queue database, outbox and dead letters."""

    state: str
    xray_bundle: Optional[str] = None
    xray_lung_bundle: Optional[str] = None
    ct_bundle: Optional[str] = None
    ct_lesion_bundle: Optional[str] = None
    ct_lung_bundle: Optional[str] = None
    ae_title: str = "LUNGEDGE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_callers: Tuple[str, ...] = ()
    destinations: Tuple[Destination, ...] = ()
    backend: str = "onnxruntime"
    threads: Optional[int] = None
    rule: str = "mean"
    batch_size: int = 8
    ct_settle_seconds: float = 5.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    max_rejections: int = 5
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    poll_seconds: float = 0.2
    max_pdu: int = 0  # 0: no limit; tests set it small to split instances into many PDUs
    keep_inputs: bool = False  # keep received instances in inbox/ after processing (else deleted)

    def __post_init__(self):
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title))
        callers = tuple(check_ae_title(t, "allowed calling AE title") for t in self.allowed_callers)
        if not callers:
            raise ValueError("allowed_callers is empty: name the calling AE titles (carts, PACS) that may send")
        object.__setattr__(self, "allowed_callers", callers)
        dests = tuple(d if isinstance(d, Destination) else Destination.parse(d) if isinstance(d, str)
                      else config_from_dict(Destination, d) for d in self.destinations)
        object.__setattr__(self, "destinations", dests)
        if not (self.xray_bundle or self.ct_bundle or self.ct_lesion_bundle):
            raise ValueError("configure at least one bundle: xray_bundle, ct_bundle or ct_lesion_bundle")
        if self.xray_lung_bundle and not self.xray_bundle:
            raise ValueError("xray_lung_bundle goes with an xray_bundle")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.ct_settle_seconds < 0 or self.retry_base_seconds <= 0 or self.max_rejections < 1:
            raise ValueError("ct_settle_seconds >= 0, retry_base_seconds > 0 and max_rejections >= 1 are required")

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        for key in ("allowed_callers", "destinations"):
            if key in data:
                data[key] = tuple(data[key])
        return config_from_dict(cls, data)

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
