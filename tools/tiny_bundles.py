"""Write the tests' tiny ONNX bundles (32 px, a few kB) into a folder, for benchmarks run without real bundles.

    python tools/tiny_bundles.py bundles/tiny     # -> xray-cls-tiny, ct-cls-tiny, ct-lesion-tiny, xray-lung-tiny
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "runtime"))
from tinymodels import classifier_model, segmenter_model, write_bundle  # noqa: E402


def main(out):
    os.makedirs(out, exist_ok=True)
    write_bundle(os.path.join(out, "xray-cls-tiny"), classifier_model(3), "classification", "xray",
                 ["covid", "normal", "pneumonia"], {"covid": 0.4}, positive_label="covid")
    write_bundle(os.path.join(out, "xray-lung-tiny"), segmenter_model(1), "segmentation", "xray",
                 ["background", "lung"], {"mask": 0.5}, kind="probabilities")
    write_bundle(os.path.join(out, "ct-cls-tiny"), classifier_model(2, seed=3), "classification", "ct",
                 ["covid", "non-covid"], {"covid": 0.5}, positive_label="covid")
    write_bundle(os.path.join(out, "ct-lesion-tiny"), segmenter_model(1, cut=1.8), "segmentation", "ct",
                 ["background", "lesion"], {"mask": 0.5}, kind="probabilities")
    print(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bundles/tiny")
