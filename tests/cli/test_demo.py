"""The shipped demo sample (licences, splits, size, attribution) and, marked slow, the whole demo."""

import csv
import os
from collections import Counter

import pytest

from lungedge.cli.demo import DEMO_DATA
from lungedge.runtime.datasets import check_patient_splits, read_manifest_csv

PERMISSIVE = {"CC BY 4.0", "CC BY 3.0", "CC BY", "CC BY 4.0 (Kermany et al. 2018, Mendeley Data rscbjbr9sj v2)"}


def rows():
    with open(os.path.join(DEMO_DATA, "manifest.csv"), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sample_is_small_permissive_and_complete():
    table = rows()
    assert 150 <= len(table) <= 200
    assert {r["license"] for r in table} <= PERMISSIVE
    files = [os.path.join(DEMO_DATA, r["file"]) for r in table]
    assert all(os.path.isfile(f) for f in files)
    assert sum(os.path.getsize(f) for f in files) < 6_000_000
    on_disk = set(os.listdir(os.path.join(DEMO_DATA, "images")))
    assert on_disk == {os.path.basename(f) for f in files}  # nothing shipped that the manifest does not list
    for column in ("file", "label", "patient_id", "split", "dev_split", "source", "license", "url_or_doi"):
        assert all(r[column] for r in table), column


def test_splits_are_per_patient_and_every_class_is_in_every_split():
    records = read_manifest_csv(DEMO_DATA)
    check_patient_splits(records)
    counts = Counter((r.label, r.split) for r in records)
    for label in ("covid", "normal", "pneumonia"):
        assert counts[(label, "test")] >= 10 and counts[(label, "val")] >= 8 and counts[(label, "train")] >= 25


def test_only_covid_patients_left_their_dev_split():
    moved = [r for r in rows() if r["split"] != r["dev_split"]]
    covid_patients = {r["patient_id"] for r in rows() if r["label"] == "covid"}
    assert moved and all(r["patient_id"] in covid_patients and r["dev_split"] == "train" and r["split"] == "test"
                         for r in moved)


def test_attribution_and_readme():
    attribution = open(os.path.join(DEMO_DATA, "ATTRIBUTION.md"), encoding="utf-8").read()
    assert all(os.path.basename(r["file"]) in attribution for r in rows())
    readme = open(os.path.join(DEMO_DATA, "README.md"), encoding="utf-8").read()
    for needle in ("Cohen JP", "Kermany D", "paediatric", "CC BY 4.0", "confound"):
        assert needle in readme, needle


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The whole demo with one training epoch and a short benchmark (minutes on two cores)."""
    pytest.importorskip("torch")
    from lungedge.cli.demo import run_demo

    results = run_demo(out=str(tmp_path), epochs=1, bench_options=dict(rounds=5, batch_rounds=3, memory_runs=2,
                                                                        n_boot=200))
    names = [r["name"] for r in results["rows"]]
    assert results["rows"][0]["info"]["backend"] == "torch" and len(names) >= 3
    assert any(r["info"]["precision"] == "int8" for r in results["rows"])
    assert os.path.isfile(tmp_path / "report" / "report.md") and os.path.isfile(tmp_path / "report" / "roc.png")
