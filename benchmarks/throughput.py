"""Throughput on a shared box: images per second and CPU-seconds per 1,000 images, with 1 and 2 workers.

Three ways a folder of X-rays gets processed, each run over the same real images:

* ``infer``: ``lungedge infer FILES --bundle B --out DIR`` as shipped (one image per model call, JSON and
  overlay written per image), ``workers`` processes each given an equal share of the files.
* ``batch``: ``workers`` processes each reading its share and calling ``Predictor.predict_images`` on batches of
  N (what a batching caller of the runtime gets; no outputs written).
* ``service``: ``workers`` bedside services (``lungedge serve --http-port``), each fed by one client thread
  POSTing its share one image at a time (the service runs one inference at a time by design).

Wall time covers the whole job (process start, model load and self-test excluded only for the service, which is
started and checked before its clock starts). CPU time is the workers' user + system time (children's rusage for
``infer``/``batch``; /proc/PID/stat of the service processes for ``service``, clients not included).

    lungedge bench throughput --bundle B --data DIR [--images 200] [--batch 1 8] [--workers 1 2] [--threads 1]
                              [--modes infer batch service] [--out DIR]
"""

import argparse
import datetime
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SCHEMA = "lungedge.bench-throughput/1"
MODES = ("infer", "batch", "service")


def image_files(data_dir, n, split="test"):
    """``n`` image paths of the dev pack (the ``split`` first, then the others), cycled when there are fewer."""
    from lungedge.runtime.datasets import read_manifest_csv

    records = read_manifest_csv(data_dir)
    files = [r.image for r in records if r.split == split] + [r.image for r in records if r.split != split]
    if not files:
        raise ValueError(f"no images in {data_dir}")
    return [files[i % len(files)] for i in range(n)]


def shares(items, workers):
    return [items[w::workers] for w in range(workers)]


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid):
    """User + system CPU seconds of a live process from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _run_procs(cmds, env=None):
    """Start every command, wait for all; returns wall seconds and children CPU seconds.

    Their stderr goes to temporary files, not pipes: a pipe read only after the first worker ends would block
    the second one once full (progress bars, logs) and serialise the workers."""
    logs = [tempfile.TemporaryFile() for _ in cmds]
    try:
        cpu0, t0 = _children_cpu(), time.perf_counter()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=log, env=env) for c, log in zip(cmds, logs)]
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
        errors = []
        for p, log in zip(procs, logs):
            if p.returncode != 0:
                log.seek(0)
                errors.append(f"exit {p.returncode}: {log.read().decode(errors='replace').strip().splitlines()[-1:]}")
    finally:
        for log in logs:
            log.close()
    if errors:
        raise RuntimeError("; ".join(errors))
    return wall, _children_cpu() - cpu0


def _env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)  # keep numpy/OpenCV from adding threads beyond the model's
    return env


def run_infer(bundle, files, workers, threads, work):
    cmds, outs = [], []
    for w, part in enumerate(shares(files, workers)):
        outs.append(os.path.join(work, f"infer-{w}"))
        cmds.append([sys.executable, "-c", "import sys; from lungedge.runtime.cli import main; sys.exit(main())",
                     "infer", *part, "--bundle", bundle, "--threads", str(threads), "--out", outs[-1]])
    wall, cpu = _run_procs(cmds, _env(threads))
    written = sum(1 for o in outs for f in os.listdir(o) if f.endswith(".json"))
    if written != len(files):  # one JSON per input (repeated names get their own stems)
        raise RuntimeError(f"lungedge infer wrote {written} results for {len(files)} inputs")
    return wall, cpu


def batch_worker(bundle, files, batch, threads):
    """Body of one ``batch`` worker process."""
    from lungedge.runtime.io import read_any
    from lungedge.runtime.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    done = 0
    for start in range(0, len(files), batch):
        items = []
        for path in files[start:start + batch]:
            array, meta = read_any(path)
            items.append((array, meta, {"file": os.path.basename(path)}))
        done += len(predictor.predict_images(items))
    return done


def run_batch(bundle, files, workers, threads, batch):
    cmds = [[sys.executable, "-m", "lungedge.benchmarks.throughput", "--child",
             json.dumps({"bundle": bundle, "files": part, "batch": batch, "threads": threads})]
            for part in shares(files, workers)]
    return _run_procs(cmds, _env(threads))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port, proc, log_path, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(log_path, "rb") as fh:
                tail = fh.read().decode(errors="replace")[-300:]
            raise RuntimeError(f"service exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"service on port {port} not healthy after {timeout} s")


def run_service(bundle, files, workers, threads, work):
    procs, ports, logs = [], [], []
    try:
        for w in range(workers):
            port = _free_port()
            folder = os.path.join(work, f"service-{w}")
            os.makedirs(os.path.join(folder, "watch"))
            os.makedirs(os.path.join(folder, "out"))
            cmd = [sys.executable, "-m", "lungedge.runtime.service", "--bundle", bundle, "--watch",
                   os.path.join(folder, "watch"), "--out", os.path.join(folder, "out"), "--threads", str(threads),
                   "--http-port", str(port), "--poll-seconds", "5"]
            # Its log goes to a file: a pipe nobody reads fills up after a few hundred requests and blocks it.
            log_file = open(os.path.join(folder, "service.log"), "wb")  # noqa: SIM115 - closed in finally
            logs.append(log_file)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, env=_env(threads)))
            ports.append(port)
        for port, proc, log_file in zip(ports, procs, logs):
            _wait_healthy(port, proc, log_file.name)
        cpu0 = [_proc_cpu(p.pid) for p in procs]
        errors = []

        def client(port, part):
            for path in part:
                with open(path, "rb") as fh:
                    data = fh.read()
                req = urllib.request.Request(f"http://127.0.0.1:{port}/predict?name={os.path.basename(path)}",
                                             data=data, headers={"Content-Type": "image/png"}, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        r.read()
                except OSError as exc:
                    errors.append(str(exc))
        t0 = time.perf_counter()
        clients = [threading.Thread(target=client, args=(port, part))
                   for port, part in zip(ports, shares(files, workers))]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - t0
        cpu = sum(_proc_cpu(p.pid) - c for p, c in zip(procs, cpu0))
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
        return wall, cpu
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log_file in logs:
            log_file.close()


def _measure(mode, bundle, files, batch, w, threads):
    work = tempfile.mkdtemp(prefix="lungedge-throughput-")
    try:
        if mode == "infer":
            return run_infer(bundle, files, w, threads, work)
        if mode == "batch":
            return run_batch(bundle, files, w, threads, batch)
        return run_service(bundle, files, w, threads, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_throughput(bundle, data, images=200, batches=(1, 8), workers=(1, 2), threads=1, modes=MODES, out=None,
                   progress=True, repeats=3):
    """Every (mode, batch, workers) point over the same ``images`` files, ``repeats`` times in rotation (so a
    burst of load from other processes hits every point alike); each point reports its median run."""
    from lungedge.benchmarks.environment import describe
    from lungedge.runtime.bundle import Bundle

    files = [os.path.abspath(f) for f in image_files(data, images)]
    bundle = os.path.abspath(bundle)
    manifest = Bundle.load(bundle).manifest
    plan = [(m, b, w) for m in modes for w in workers for b in (batches if m == "batch" else (1,))]
    load_before = os.getloadavg()
    runs = {key: [] for key in plan}
    errors = {}
    for _ in range(max(1, int(repeats))):
        for key in plan:
            if key in errors:
                continue
            try:
                runs[key].append(_measure(key[0], bundle, files, key[1], key[2], threads))
            except RuntimeError as exc:
                errors[key] = str(exc)
    points = []
    for (mode, batch, w) in plan:
        point = {"mode": mode, "batch": batch, "workers": w, "images": len(files)}
        if (mode, batch, w) in errors:
            point["error"] = errors[(mode, batch, w)]
        else:
            walls = sorted(runs[(mode, batch, w)])
            wall, cpu = sorted(runs[(mode, batch, w)])[len(walls) // 2]  # the median run by wall time
            point.update(wall_s=wall, cpu_s=cpu, images_per_s=len(files) / wall,
                         cpu_s_per_1000=1000.0 * cpu / len(files), runs=len(walls),
                         wall_s_all=[r[0] for r in walls])
        points.append(point)
        if progress:
            print(json.dumps(point), file=sys.stderr)
    results = {"schema": SCHEMA, "kind": "throughput",
               "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
               "bundle": {"path": bundle, "name": manifest["name"]}, "data": os.path.abspath(data),
               "threads_per_worker": threads, "repeats": repeats, "points": points,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "command": " ".join(["lungedge", "bench", "throughput", "--bundle", bundle, "--data", data,
                                    "--images", str(images), "--batch", *map(str, batches), "--workers",
                                    *map(str, workers), "--threads", str(threads), "--repeats", str(repeats),
                                    "--modes", *modes]
                                   + (["--out", out] if out else [])),
               "environment": describe(threads * max(workers))}
    if out:
        write_throughput(results, out)
    return results


def render_markdown(results):
    from lungedge.benchmarks.report import fmt, md_table

    rows = []
    for p in results["points"]:
        if "error" in p:
            rows.append([p["mode"], p["batch"], p["workers"], "error: " + p["error"], "", "", ""])
        else:
            rows.append([p["mode"], p["batch"], p["workers"], fmt(p["images_per_s"], 1), fmt(p["wall_s"], 2),
                         fmt(p["cpu_s"], 2), fmt(p["cpu_s_per_1000"], 1)])
    env = results["environment"]
    return "\n".join([
        "# Throughput", "",
        f"Bundle {results['bundle']['name']} over {results['points'][0]['images']} real images; "
        f"{results['threads_per_worker']} model thread(s) per worker; median of {results.get('repeats', 1)} runs per "
        f"point, points in rotation; CPU: {env.get('cpu_model', env.get('cpu'))} ({env.get('logical_cpus')} logical "
        "CPUs, shared with other processes)" + (f"; load average {results['loadavg_before'][0]:.2f} before, "
                                                 f"{results['loadavg_after'][0]:.2f} after."
                                                 if results.get("loadavg_before") else "."),
        "", "```", results["command"], "```", "",
        md_table(["mode", "batch", "workers", "images/s", "wall s", "CPU s", "CPU s / 1000 images"], rows), "",
        "infer: the shipped CLI (process start and model load included, outputs written); batch: runtime "
        "Predictor.predict_images in worker processes; service: lungedge serve over HTTP, one request at a time "
        "per service, CPU of the service processes only.", ""])


def write_throughput(results, out_dir):
    from lungedge.benchmarks.report import save_results

    os.makedirs(out_dir, exist_ok=True)
    save_results(results, os.path.join(out_dir, "results.json"))
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(render_markdown(results))


def main(argv=None):
    p = argparse.ArgumentParser(prog="lungedge bench throughput", description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--bundle")
    p.add_argument("--data")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="model threads per worker")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=3, help="runs per point (median reported)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        batch_worker(spec["bundle"], spec["files"], spec["batch"], spec["threads"])
        return 0
    if not a.bundle or not a.data:
        p.error("--bundle and --data are required")
    results = run_throughput(a.bundle, a.data, a.images, a.batch, a.workers, a.threads, a.modes, a.out,
                             repeats=a.repeats)
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
