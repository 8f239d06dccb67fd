"""tegrastats parser on lines recorded on real Jetsons (JetPack 5 and 6), nvpmodel, and the sampler."""

import os
import stat
import time

import pytest

from lungedge.benchmarks import tegrastats as T

# Recorded tegrastats output, copied verbatim from public logs (only the line breaks of wrapped logs joined).
# JetPack 5 (L4T R35), Xavier NX: uppercase sensors, rails in mW, GR3D clock in brackets.
JP5_XAVIER_NX = ("RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off] "
                 "EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C AO@37.5C GPU@37.5C "
                 "PMIC@50C VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW")
# JetPack 5, AGX Orin 64GB (2023-04-24): absent sensors at -256C, no VDD_IN rail, NC placeholder rails.
JP5_AGX_ORIN = ("04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) CPU [0%@729,0%@729,"
                "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 "
                "GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C Tboard@32C SOC2@39.343C Tdiode@33.25C "
                "SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C CV2@-256C VDD_GPU_SOC 2399mW/2399mW "
                "VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
# JetPack 6 (L4T R36), Orin Nano 8GB: lowercase sensors, GR3D_FREQ without a clock, swap on zram.
JP6_ORIN_NANO = ("12-30-2025 00:20:08 RAM 6677/7620MB (lfb 1x2MB) SWAP 4635/20194MB (cached 180MB) CPU [28%@960,20%@960,"
                 "19%@960,30%@960,21%@729,22%@729] GR3D_FREQ 33% cpu@52.25C soc2@51.968C soc0@52.187C gpu@52.156C "
                 "tj@52.812C soc1@52.812C VDD_IN 6167mW/6167mW VDD_CPU_GPU_CV 1215mW/1215mW VDD_SOC 1663mW/1663mW")
JP6_ORIN_NANO_IDLE = ("06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) CPU [1%@1420,"
                      "2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C "
                      "gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW "
                      "VDD_SOC 1475mW/1475mW")
JP6_ORIN_NANO_LOAD = ("11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,"
                      "14%@729,13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off NVJPG off "
                      "NVJPG1 off VIC off OFA off APE 200 cpu@53.968C soc2@52.437C soc0@50.75C gpu@53.343C tj@53.968C "
                      "soc1@51.656C VDD_IN 12479mW/12479mW VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW")
# JetPack 4 (L4T R32), TX2-class: rails without units.
JP4_TX2 = ("RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) CPU [44%@1421,49%@2031,67%@2034,17%@1420,"
           "25%@1419,8%@1420] EMC_FREQ 1%@1866 GR3D_FREQ 0%@114 APE 150 MTS fg 1% bg 1% PLL@42.5C MCPU@42.5C PMIC@50C "
           "Tboard@38C GPU@39.5C BCPU@42.5C thermal@41.3C Tdiode@39.25C VDD_SYS_GPU 182/182 VDD_SYS_SOC 730/730 "
           "VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 VDD_SYS_CPU 1917/1917 VDD_SYS_DDR 1241/1241")


def test_jetpack5_xavier_nx():
    s = T.parse_line(JP5_XAVIER_NX)
    assert s["timestamp"] is None
    assert (s["ram_used_mb"], s["ram_total_mb"], s["swap_used_mb"], s["swap_total_mb"]) == (2690, 6854, 479, 3427)
    assert [c and c["freq_mhz"] for c in s["cpu"]] == [1904, 1906, 1905, 1907, None, None]
    assert s["cpu"][1]["load"] == 7
    assert (s["emc_load"], s["emc_freq_mhz"], s["gpu_load"], s["gpu_freq_mhz"]) == (0, 1600, 0, 510)
    assert s["temps"] == {"aux": 39.0, "cpu": 39.5, "ao": 37.5, "gpu": 37.5, "pmic": 50.0}
    assert s["rails"]["VDD_CPU_GPU_CV"] == {"now_mw": 696, "avg_mw": 696}
    assert (s["power_mw"], s["power_source"]) == (5079, "VDD_IN")


def test_jetpack5_agx_orin_absent_sensors_and_no_vdd_in():
    s = T.parse_line(JP5_AGX_ORIN)
    assert s["timestamp"] == "04-24-2023 00:01:24"
    assert len(s["cpu"]) == 12 and all(c["freq_mhz"] == 729 for c in s["cpu"])
    assert s["gpu_load"] == 0 and s["gpu_freq_mhz"] == 0  # GR3D2_FREQ is the second GPC, not read as GR3D
    assert "cv0" not in s["temps"] and "gpu" not in s["temps"]  # -256C: sensor off
    assert s["temps"]["tj"] == 42.593 and s["temps"]["tboard"] == 32.0
    assert "NC" not in s["rails"]
    assert set(s["rails"]) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert s["power_mw"] == 2399 + 400 + 4032 + 301
    assert s["power_source"].startswith("sum of ")


@pytest.mark.parametrize("line,ram,gpu,power,tj", [
    (JP6_ORIN_NANO, 6677, 33, 6167, 52.812),
    (JP6_ORIN_NANO_IDLE, 3452, 0, 4824, 50.25),
    (JP6_ORIN_NANO_LOAD, 6185, 63, 12479, 53.968),
])
def test_jetpack6_orin_nano(line, ram, gpu, power, tj):
    s = T.parse_line(line)
    assert s["timestamp"] is not None
    assert s["ram_used_mb"] == ram and s["ram_total_mb"] == 7620
    assert s["gpu_load"] == gpu
    assert s["power_mw"] == power and s["power_source"] == "VDD_IN"
    assert s["temps"]["tj"] == tj and "soc2" in s["temps"] and "cpu" in s["temps"]
    assert len(s["cpu"]) == 6
    assert set(s["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_jetpack6_gpu_clock_in_brackets():
    s = T.parse_line(JP6_ORIN_NANO_LOAD)
    assert (s["gpu_freq_mhz"], s["emc_load"], s["emc_freq_mhz"]) == (621, 43, 2133)
    s = T.parse_line(JP6_ORIN_NANO)
    assert s["gpu_freq_mhz"] is None and s["emc_load"] is None


def test_jetpack4_rails_without_units():
    s = T.parse_line(JP4_TX2)
    assert s["rails"]["VDD_SYS_GPU"] == {"now_mw": 182, "avg_mw": 182}
    assert s["power_mw"] == 5297
    assert s["gpu_freq_mhz"] == 114
    assert "RAM" not in s["rails"] and "SWAP" not in s["rails"]


def test_not_a_tegrastats_line():
    with pytest.raises(T.TegrastatsError):
        T.parse_line("tegrastats: command not found")


def test_summary_energy_and_throttling():
    samples = [T.parse_line(x) for x in (JP6_ORIN_NANO_IDLE, JP6_ORIN_NANO, JP6_ORIN_NANO_LOAD)]
    summary = T.summarize(samples)
    assert summary["samples"] == 3
    assert summary["power_mw_mean"] == pytest.approx((4824 + 6167 + 12479) / 3)
    assert summary["ram_used_mb_max"] == 6677 and summary["gpu_load_max"] == 63
    assert summary["temps_c_max"]["tj"] == 53.968
    assert summary["throttled"] is False
    # 3 samples at a mean of 7.823 W over 2 s and 10 images: 1.56 J per image
    assert T.energy_per_image(samples, 2.0, 10) == pytest.approx(7.823333 * 2.0 / 10, rel=1e-5)
    hot = T.parse_line(JP6_ORIN_NANO.replace("tj@52.812C", "tj@91.5C"))
    assert T.summarize([hot])["throttled"] is True
    # the CPU clock falls from 1420 to 729 MHz while the cores stay busy
    busy = [T.parse_line(JP6_ORIN_NANO_IDLE.replace("CPU [1%@1420", "CPU [90%@1420")),
            T.parse_line(JP6_ORIN_NANO_IDLE.replace("CPU [1%@1420", "CPU [90%@729"))]
    assert any("CPU clock" in r for r in T.throttling(busy))


def test_nvpmodel_query_output():
    assert T.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert T.parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n1\n") == {"mode": "15W", "id": 1}
    assert T.parse_nvpmodel("command not found") is None


def test_sampler_with_a_recorded_tegrastats(tmp_path):
    """The sampler runs whatever `tegrastats` it is given; here a script replaying recorded lines."""
    fake = tmp_path / "tegrastats"
    fake.write_text("#!/bin/sh\nwhile true; do\n"
                    f"echo '{JP6_ORIN_NANO_IDLE}'\nsleep 0.02\necho '{JP6_ORIN_NANO_LOAD}'\nsleep 0.02\ndone\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    sampler = T.TegrastatsSampler(interval_ms=20, exe=str(fake))
    assert sampler.available
    with sampler:
        t0 = time.monotonic()
        deadline = t0 + 30  # a deadline, not a duration: the loop ends as soon as five samples are in
        while len(sampler.window(t0, time.monotonic())) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        t1 = time.monotonic()
    window = sampler.window(t0, t1)
    assert len(window) >= 5
    assert {s["power_mw"] for s in window} <= {4824, 12479}
    assert T.TegrastatsSampler(exe=None).available in (False, True)  # True only on a Jetson with tegrastats


def test_sampler_off_jetson_is_inert(monkeypatch):
    monkeypatch.setenv("PATH", os.devnull)
    sampler = T.TegrastatsSampler()
    assert not sampler.available
    with sampler:
        pass
    assert sampler.window(0, time.monotonic()) == []
