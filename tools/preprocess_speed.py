"""X-ray preprocessing and postprocessing, old way against new, interleaved in one process on real test images.

    python tools/preprocess_speed.py --data ../shared/data/xray-cls --size 128 --out docs/benchmarks/preprocess-fused

``stepwise`` runs the manifest steps one by one (``preprocess_stepwise``, the definition); ``fused`` is what
``preprocess`` does for 8-bit-valued X-rays (bit-identical output, checked here on every image). Postprocessing
compares numpy's softmax on a logits row (the old classify path) with the plain-Python one now used. Rounds
alternate the two ways so load from other processes hits both alike; medians per image are reported.
"""

import argparse
import json
import os
import sys
import time


def main(argv=None):
    import numpy as np

    from lungedge.benchmarks.data import load_split
    from lungedge.benchmarks.environment import describe
    from lungedge.runtime import preprocess as P
    from lungedge.runtime.predictor import softmax, softmax_list

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--per-label", type=int, default=10)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out")
    a = p.parse_args(argv)

    images = load_split(a.data, "test", "classification", max_images=a.per_label)
    steps = P.xray_steps(a.size)
    for im in images:  # the claim the speed rests on: same output, bit for bit
        fast, ref = P.preprocess(im.array, im.meta, steps), P.preprocess_stepwise(im.array, im.meta, steps)
        if not (np.array_equal(fast[0], ref[0]) and fast[1] == ref[1]):
            raise SystemExit(f"fused and stepwise preprocessing differ on {im.file}")
    rows = [np.random.default_rng(i).normal(0, 2, 3).astype(np.float32) for i in range(len(images))]
    ways = {"preprocess_stepwise": lambda im, r: P.preprocess_stepwise(im.array, im.meta, steps),
            "preprocess_fused": lambda im, r: P.preprocess(im.array, im.meta, steps),
            "softmax_numpy": lambda im, r: softmax(np.asarray(r, np.float64).ravel()),
            "softmax_python": lambda im, r: softmax_list(np.asarray(r, np.float64).ravel().tolist())}
    times = {k: [] for k in ways}
    load_before = os.getloadavg()
    for _ in range(a.rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            for im, r in zip(images, rows):
                fn(im, r)
            times[name].append((time.perf_counter() - t0) / len(images) * 1e6)
    med = {k: float(np.median(v)) for k, v in times.items()}
    results = {"schema": "lungedge.preprocess-speed/1", "images": len(images), "size": a.size, "rounds": a.rounds,
               "median_us_per_image": med, "all_us_per_image": times,
               "preprocess_speedup": med["preprocess_stepwise"] / med["preprocess_fused"],
               "softmax_speedup": med["softmax_numpy"] / med["softmax_python"], "bit_identical": True,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "command": " ".join(["python", "tools/preprocess_speed.py", "--data", a.data, "--size", str(a.size),
                                    "--per-label", str(a.per_label), "--rounds", str(a.rounds)]
                                   + (["--out", a.out] if a.out else [])),
               "environment": describe(1)}
    text = "\n".join([
        "# X-ray preprocessing: stepwise vs fused", "",
        f"{len(images)} real test images (256 x 256 PNG) to a {a.size}-px network input; median microseconds per "
        f"image over {a.rounds} interleaved rounds; outputs checked bit-identical on every image.", "",
        "```", results["command"], "```", "",
        "| step | old (us) | new (us) | speed-up |", "|---|---|---|---|",
        f"| preprocess | {med['preprocess_stepwise']:.1f} | {med['preprocess_fused']:.1f} | "
        f"{results['preprocess_speedup']:.2f}x |",
        f"| softmax of one logits row | {med['softmax_numpy']:.1f} | {med['softmax_python']:.1f} | "
        f"{results['softmax_speedup']:.2f}x |", "",
        f"CPU: {results['environment']['cpu_model']} ({results['environment']['logical_cpus']} logical CPUs), "
        f"load average {load_before[0]:.2f} before, {results['loadavg_after'][0]:.2f} after (shared machine).", ""])
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        with open(os.path.join(a.out, "report.md"), "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
