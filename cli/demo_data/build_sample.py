"""Rebuild the demo sample from the dev pack's xray-cls folder (deterministic; run from the repository root).

    python cli/demo_data/build_sample.py ../shared/data/xray-cls cli/demo_data

Keeps only images whose recorded licence is CC BY 4.0, CC BY 3.0 or CC BY (no NC, nothing unspecified), takes
every such COVID-19 image (there are 64) and a fixed number of normal and pneumonia images per dev-pack split
(the first by SHA-1 of the file name), and writes manifest.csv (the dev pack's columns plus ``dev_split``) and
ATTRIBUTION.md. The ``split`` column is the dev pack's patient-level split except for COVID-19: only 2 of the 64
permissive COVID-19 images sit in the dev pack's test split, so whole COVID-19 patients of its train split move to
the demo's test split (by SHA-1 of the patient id) until it holds at least ``COVID_TEST`` COVID-19 images.
PNG bytes are copied unchanged.
"""

import csv
import hashlib
import os
import shutil
import sys
from collections import Counter, defaultdict

PERMISSIVE = ("CC BY 4.0", "CC BY 3.0", "CC BY")
# Kermany normal / pneumonia images to take per dev-pack split (ieee8023 normals and pneumonias are all taken).
PER_SPLIT = {"normal": {"train": 26, "val": 8, "test": 10}, "pneumonia": {"train": 28, "val": 9, "test": 11}}
COVID_TEST = 12


def permissive(licence):
    text = licence.strip()
    return "NC" not in text and "ND" not in text and any(text == p or text.startswith(p + " ") for p in PERMISSIVE)


def sha(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def select(rows):
    rows = [r for r in rows if permissive(r["license"])]
    chosen = [r for r in rows if r["source"] == "ieee8023"]  # every permissive adult image (COVID and others)
    for label, quota in PER_SPLIT.items():
        for split, n in quota.items():
            pool = sorted((r for r in rows if r["source"] != "ieee8023" and r["label"] == label and r["split"] == split),
                          key=lambda r: sha(r["file"]))
            chosen += pool[:n]
    return chosen


def demo_splits(rows):
    """Patient -> demo split: the dev split, with dev-train COVID-19 patients moved to test as described above."""
    split = {r["patient_id"]: r["split"] for r in rows}
    covid = defaultdict(int)
    for r in rows:
        if r["label"] == "covid":
            covid[r["patient_id"]] += 1
    in_test = sum(n for p, n in covid.items() if split[p] == "test")
    for patient in sorted((p for p in covid if split[p] == "train"), key=sha):
        if in_test >= COVID_TEST:
            break
        split[patient] = "test"
        in_test += covid[patient]
    return split


def main(src, dst):
    with open(os.path.join(src, "manifest.csv"), newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames)
        rows = list(reader)
    chosen = sorted(select(rows), key=lambda r: r["file"])
    split = demo_splits(chosen)
    os.makedirs(os.path.join(dst, "images"), exist_ok=True)
    out_fields = fields[:fields.index("split") + 1] + ["dev_split"] + fields[fields.index("split") + 1:]
    with open(os.path.join(dst, "manifest.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=out_fields, lineterminator="\n")
        writer.writeheader()
        for r in chosen:
            writer.writerow(dict(r, split=split[r["patient_id"]], dev_split=r["split"]))
            shutil.copyfile(os.path.join(src, r["file"]), os.path.join(dst, r["file"]))
    with open(os.path.join(dst, "ATTRIBUTION.md"), "w", encoding="utf-8") as fh:
        fh.write("# Per-image attribution of the demo sample\n\n"
                 "Each image: its label, where it comes from (repository, commit, path in that repository), its "
                 "licence as recorded by the source, and the original publication or case page. Images were "
                 "converted to 8-bit grayscale, resized and letterboxed to 256 x 256 (see README.md).\n\n"
                 "| file | label | source | licence | original | repository path |\n|---|---|---|---|---|---|\n")
        for r in chosen:
            fh.write(f"| {os.path.basename(r['file'])} | {r['label']} | {r['source']} | {r['license']} | "
                     f"{r['url_or_doi']} | {r['source_repo']}@{r['source_commit'][:7]}:{r['source_path']} |\n")
    counts = Counter((r["label"], split[r["patient_id"]]) for r in chosen)
    size = sum(os.path.getsize(os.path.join(dst, r["file"])) for r in chosen)
    print(f"{len(chosen)} images, {size / 1e6:.2f} MB, {len({r['patient_id'] for r in chosen})} patients")
    for label in ("covid", "normal", "pneumonia"):
        print(label, {s: counts[(label, s)] for s in ("train", "val", "test")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
