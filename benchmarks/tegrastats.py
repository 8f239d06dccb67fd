"""Jetson power, memory, load and temperature during a benchmark: a ``tegrastats`` parser and sampler.

``parse_line`` reads one line of ``tegrastats`` as printed by JetPack 4 to 6 (Xavier and Orin; uppercase
``CPU@45.5C`` sensors on JetPack 5, lowercase ``cpu@48.5C`` on JetPack 6; rails with or without ``mW``).
``TegrastatsSampler`` runs ``tegrastats --interval MS`` in the background and stamps each line with
``time.monotonic()``, so a benchmark phase (``t0``, ``t1``) can be cut out of the record and turned into
mean power and energy per image. ``nvpmodel -q`` gives the power mode. Off a Jetson the sampler reports
``available = False`` and every Jetson field of the results stays ``None``.

Throttling cannot be read from tegrastats itself; ``summarize`` flags it from the two symptoms it shows:
a junction (or hottest) temperature at or above ``THROTTLE_TEMP_C``, or the CPU or GPU clock falling well
below the highest clock seen in the run while the load stays high.
"""

import re
import shutil
import subprocess
import threading
import time

# Sensors that report -256C are powered off or absent (CV0@-256C on Orin): not a temperature.
ABSENT_TEMP_C = -256.0
# Orin and Xavier start software clock throttling in the high 80s to 90s degrees C (junction); 85 warns early.
THROTTLE_TEMP_C = 85.0
# A clock below this share of the run's highest clock under load counts as throttled.
CLOCK_DROP_RATIO = 0.85
# Rails that are placeholders on AGX Orin carrier boards.
NOT_A_RAIL = ("NC",)

_TIMESTAMP = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_RAIL = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


class TegrastatsError(ValueError):
    """A line that is not tegrastats output (no RAM field)."""


def _cpu_cores(body, shared_freq):
    cores = []
    for item in body.split(","):
        item = item.strip()
        if not item or item == "off":
            cores.append(None)
            continue
        load, _, freq = item.partition("@")
        freq = freq or shared_freq
        cores.append({"load": int(load.rstrip("%")), "freq_mhz": int(freq) if freq else None})
    return cores


def parse_line(line):
    """One tegrastats line as a dict (MB, %, MHz, degrees C, mW); raises TegrastatsError for other text."""
    line = line.strip()
    ram = _RAM.search(line)
    if not ram:
        raise TegrastatsError(f"not a tegrastats line (no RAM field): {line[:60]!r}")
    out = {"timestamp": None, "ram_used_mb": int(ram.group(1)), "ram_total_mb": int(ram.group(2)),
           "swap_used_mb": None, "swap_total_mb": None, "cpu": [], "emc_load": None, "emc_freq_mhz": None,
           "gpu_load": None, "gpu_freq_mhz": None, "temps": {}, "rails": {}}
    stamp = _TIMESTAMP.match(line)
    if stamp:
        out["timestamp"] = stamp.group(1)
    swap = _SWAP.search(line)
    if swap:
        out["swap_used_mb"], out["swap_total_mb"] = int(swap.group(1)), int(swap.group(2))
    cpu = _CPU.search(line)
    if cpu:
        out["cpu"] = _cpu_cores(cpu.group(1), cpu.group(2))
    emc = _EMC.search(line)
    if emc:
        out["emc_load"] = int(emc.group(1))
        out["emc_freq_mhz"] = int(emc.group(2)) if emc.group(2) else None
    gr3d = _GR3D.search(line)
    if gr3d:
        out["gpu_load"] = int(gr3d.group(1))
        if gr3d.group(2):
            out["gpu_freq_mhz"] = max(int(f) for f in gr3d.group(2).split(",") if f)
    for name, value in _TEMP.findall(line):
        if float(value) > ABSENT_TEMP_C:
            out["temps"][name.lower()] = float(value)
    for name, now, avg in _RAIL.findall(line):
        if name not in NOT_A_RAIL:
            out["rails"][name] = {"now_mw": int(now), "avg_mw": int(avg)}
    out["power_mw"], out["power_source"] = total_power(out["rails"])
    return out


def total_power(rails):
    """(mW, source): the board input VDD_IN where the module reports it, else the sum of its rails."""
    if "VDD_IN" in rails:
        return rails["VDD_IN"]["now_mw"], "VDD_IN"
    if rails:
        return sum(r["now_mw"] for r in rails.values()), "sum of " + "+".join(sorted(rails))
    return None, None


def parse_nvpmodel(text):
    """{"mode": "MAXN", "id": 0} from ``nvpmodel -q`` output (id None when not printed)."""
    mode = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not mode:
        return None
    ident = re.search(r"^\s*(\d+)\s*$", text[mode.end():], re.MULTILINE)
    return {"mode": mode.group(1), "id": int(ident.group(1)) if ident else None}


def query_nvpmodel(timeout=5.0):
    """The current power mode via ``nvpmodel -q``; None off a Jetson or when the tool fails."""
    exe = shutil.which("nvpmodel")
    if not exe:
        return None
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvpmodel(done.stdout + done.stderr)


def _mean(values):
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


def throttling(samples, temp_limit=THROTTLE_TEMP_C, drop=CLOCK_DROP_RATIO):
    """Reasons to suspect throttling in a list of parsed samples (empty list: none seen)."""
    reasons = []
    hottest = _max([s["temps"].get("tj", max(s["temps"].values()) if s["temps"] else None) for s in samples])
    if hottest is not None and hottest >= temp_limit:
        reasons.append(f"junction temperature reached {hottest:.1f} C (limit {temp_limit:.0f} C)")
    busy_cpu = [c["freq_mhz"] for s in samples for c in s["cpu"] if c and c["freq_mhz"] and c["load"] >= 50]
    if busy_cpu and min(busy_cpu) < drop * max(busy_cpu):
        reasons.append(f"CPU clock fell to {min(busy_cpu)} MHz under load (peak {max(busy_cpu)} MHz)")
    busy_gpu = [s["gpu_freq_mhz"] for s in samples if s["gpu_freq_mhz"] and (s["gpu_load"] or 0) >= 50]
    if busy_gpu and min(busy_gpu) < drop * max(busy_gpu):
        reasons.append(f"GPU clock fell to {min(busy_gpu)} MHz under load (peak {max(busy_gpu)} MHz)")
    return reasons


def summarize(samples):
    """Means and peaks of a list of parsed samples: power per rail, RAM, GPU load, temperatures, throttling."""
    if not samples:
        return None
    rails = sorted({name for s in samples for name in s["rails"]})
    temps = sorted({name for s in samples for name in s["temps"]})
    reasons = throttling(samples)
    return {
        "samples": len(samples),
        "power_mw_mean": _mean([s["power_mw"] for s in samples]),
        "power_mw_max": _max([s["power_mw"] for s in samples]),
        "power_source": samples[-1]["power_source"],
        "rails_mw_mean": {r: _mean([s["rails"].get(r, {}).get("now_mw") for s in samples]) for r in rails},
        "ram_used_mb_max": _max([s["ram_used_mb"] for s in samples]),
        "ram_total_mb": samples[-1]["ram_total_mb"],
        "gpu_load_mean": _mean([s["gpu_load"] for s in samples]),
        "gpu_load_max": _max([s["gpu_load"] for s in samples]),
        "temps_c_max": {t: _max([s["temps"].get(t) for s in samples]) for t in temps},
        "throttled": bool(reasons),
        "throttle_reasons": reasons,
    }


def energy_per_image(samples, seconds, images):
    """Joules per image from the mean power of ``samples`` over ``seconds`` spent on ``images`` images."""
    watts = _mean([s["power_mw"] for s in samples])
    if watts is None or images <= 0:
        return None
    return watts / 1000.0 * seconds / images


class TegrastatsSampler:
    """``tegrastats --interval MS`` in the background; ``window(t0, t1)`` returns the parsed samples in between.

    Times are ``time.monotonic()`` at the moment a line was read. ``exe`` defaults to the ``tegrastats`` on
    PATH; without one the sampler is inert (``available`` False) so the same benchmark runs anywhere.
    """

    def __init__(self, interval_ms=100, exe=None):
        self.interval_ms = int(interval_ms)
        self.exe = exe or shutil.which("tegrastats")
        self.samples = []  # (monotonic seconds, parsed line)
        self._proc = None
        self._thread = None
        self._lock = threading.Lock()

    @property
    def available(self):
        return self.exe is not None

    def start(self):
        if not self.available or self._proc is not None:
            return self
        self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                parsed = parse_line(line)
            except TegrastatsError:
                continue
            with self._lock:
                self.samples.append((time.monotonic(), parsed))

    def stop(self):
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(timeout=5)
        self._proc = None

    def window(self, t0, t1):
        """Parsed samples read between monotonic times t0 and t1."""
        with self._lock:
            return [s for t, s in self.samples if t0 <= t <= t1]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
