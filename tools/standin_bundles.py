"""Stand-in bundles for latency work where the trained bundles are not at hand: same architectures, untrained.

    python tools/standin_bundles.py --data ../shared/data/xray-cls --out bundles/standin [--size 128]

Writes training-run folders holding untrained registry models (DenseNet-121 baseline, student_m) and exports them:
``<out>/xray-cls-densenet121-baseline`` (FP32 ONNX) and ``<out>/xray-cls-student_m`` (FP32 + ONNX Runtime QDQ
INT8 from the compress side's quantizer, calibrated on 32 real train images through the runtime's preprocessing),
both exported by ``compress.pipeline.export_baseline`` with their golden files, so that ``lungedge selftest`` and the
bedside service accept them. Latency and memory do not depend on
the weights' values, so these time like the real models of the same shape (the real compressed student is also
pruned, so it is smaller and faster than this unpruned one); accuracy numbers from them mean nothing.
"""

import argparse
import json
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--task", default="xray-cls")
    p.add_argument("--baseline-arch", default="densenet121")
    p.add_argument("--student-arch", default="student_m")
    a = p.parse_args(argv)

    from lungedge.compress.pipeline import export_baseline
    from lungedge.compress.variants import add_int8_artifact
    from lungedge.models.standin import untrained_run as make_run
    from lungedge.runtime.datasets import read_manifest_csv, select

    runs = os.path.join(a.out, "runs")
    base_run = make_run(os.path.join(runs, f"{a.task}-{a.baseline_arch}"), a.task, a.baseline_arch, a.size, a.data)
    student_run = make_run(os.path.join(runs, f"{a.task}-{a.student_arch}"), a.task, a.student_arch, a.size, a.data)
    base = export_baseline(base_run, os.path.join(a.out, f"{a.task}-{a.baseline_arch}-baseline"), data_dir=a.data,
                           overwrite=True)
    student = export_baseline(student_run, os.path.join(a.out, f"{a.task}-{a.student_arch}"), data_dir=a.data,
                              overwrite=True)
    add_int8_artifact(student, select(read_manifest_csv(a.data), split="train")[:32])
    print(json.dumps({"baseline_run": base_run, "baseline_bundle": base, "student_bundle": student}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
