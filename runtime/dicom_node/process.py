"""From queued instances to DICOM results: X-ray images one by one, CT series as studies."""

from __future__ import annotations

import os
import shutil
import tempfile

from lungedge.runtime import report
from lungedge.runtime.dicom_node.writers import DicomResults, ModelInfo, ct_seg_sc, ct_sr, xray_results
from lungedge.runtime.errors import BundleError, InputError


def selftest_bundles(config, log):
    """Run the golden self-test of every configured bundle that has golden data; raise SelfTestFailed on a miss.

    A bundle without golden data is opened untested (with a warning), unlike ``lungedge serve``, which refuses it.
    """
    from lungedge.runtime.bundle import Bundle
    from lungedge.runtime.errors import LungedgeError
    from lungedge.runtime.selftest import run_selftest
    from lungedge.runtime.service.daemon import SelfTestFailed

    results = []
    for bundle_dir in (config.xray_bundle, config.xray_lung_bundle, config.ct_bundle, config.ct_lesion_bundle,
                       config.ct_lung_bundle):
        if not bundle_dir:
            continue
        bundle = Bundle.load(bundle_dir)
        if not bundle.manifest.get("golden"):
            log.warning("bundle %s has no golden data: opened without a self-test", bundle.manifest["name"])
            continue
        try:
            result = run_selftest(bundle_dir, backend=config.backend, threads=config.threads)
        except LungedgeError as exc:
            raise SelfTestFailed(f"self-test of {bundle_dir} could not run: {exc}") from None
        if not result["passed"]:
            raise SelfTestFailed(f"self-test of {result['bundle']} [{result['artifact']} on {result['backend']}] "
                                 f"failed: {result['reason']}; refusing to serve")
        results.append(result)
    return results


class Processor:
    """The configured bundles, opened once; ``xray(path)`` and ``ct(paths)`` return (result, DicomResults)."""

    def __init__(self, config):
        from lungedge.runtime.pipelines import CtStudyPipeline, XrayPipeline

        self.config = config
        self._open_list = []
        self.xray = self.ct_study = None
        self.xray_model = self.xray_lung_model = self.ct_model = self.ct_lesion_model = None
        if config.xray_bundle:
            classifier = self._open(config.xray_bundle)
            lung = self._open(config.xray_lung_bundle) if config.xray_lung_bundle else None
            self.xray = XrayPipeline(classifier, lung)
            self.xray_model = ModelInfo.from_predictor(classifier)
            self.xray_lung_model = ModelInfo.from_predictor(lung, role="lung_segmenter") if lung else None
        if config.ct_bundle or config.ct_lesion_bundle:
            classifier = self._open(config.ct_bundle) if config.ct_bundle else None
            lesion = self._open(config.ct_lesion_bundle) if config.ct_lesion_bundle else None
            lung = self._open(config.ct_lung_bundle) if config.ct_lung_bundle else None
            try:
                self.ct_study = CtStudyPipeline(classifier=classifier, lesion_segmenter=lesion, lung_segmenter=lung,
                                                batch_size=config.batch_size, rule=config.rule, keep_masks=True)
            except ValueError as exc:
                raise BundleError(f"rule: {exc}") from None
            main = classifier or lesion
            self.ct_model = ModelInfo.from_predictor(main, role="classifier" if classifier else "lesion_segmenter")
            self.ct_lesion_model = ModelInfo.from_predictor(lesion, role="lesion_segmenter") if lesion else None

    def _open(self, bundle_dir):
        from lungedge.runtime.predictor import Predictor

        predictor = Predictor.from_bundle(bundle_dir, backend=self.config.backend, threads=self.config.threads)
        self._open_list.append(predictor)
        return predictor

    @property
    def modalities(self):
        return tuple(m for m, pipe in (("xray", self.xray), ("ct", self.ct_study)) if pipe is not None)

    def run_xray(self, path):
        """One X-ray instance: classification (lung-guided with a lung bundle), SR + SEG + SC."""
        from lungedge.runtime.io.dicom import _open as open_dicom
        from lungedge.runtime.predictor import load_input

        if self.xray is None:
            raise BundleError("no X-ray bundle is configured")
        array, meta, source = load_input(path)
        result = self.xray.predict_image(array, meta, source)
        header = open_dicom(path, os.path.basename(path), stop_before_pixels=True)
        return result, xray_results(header, array, meta, result, self.xray_model, self.xray_lung_model)

    def run_ct(self, paths, on_sr=None):
        """One CT series (its instance files): the study pipeline, SR + SEG (lesion, lung) + SC of the key slice.

        ``on_sr(result, sr)`` is called as soon as the SR exists, before the slower SEG and SC are built, so the
        SR can be on its way to the PACS meanwhile.
        """
        from lungedge.runtime.io import dicom

        if self.ct_study is None:
            raise BundleError("no CT bundle is configured")
        folder = tempfile.mkdtemp(prefix="lungedge-series-")
        try:
            for i, path in enumerate(paths):
                os.symlink(os.path.abspath(path), os.path.join(folder, f"{i:05d}.dcm"))
            headers = dicom.series_headers(folder)  # read once: the order, the checks and the SR's evidence
            source = {"series": "dicom-node", "instances": len(paths)}
            result = self.ct_study.run_slices(dicom.iter_dicom_series(folder, headers=headers), source)
            sources = [ds for _, ds in headers]
            sr = ct_sr(sources, result, self.ct_model, self.ct_lesion_model)
            if on_sr is not None:
                on_sr(result, sr)
            index = self._key_slice(result)
            array, meta = dicom.read(headers[index][0])
            seg, sc = ct_seg_sc(sources, result, self.ct_model, masks=result.get("masks") or {},
                                key_slice=(index, array, meta), lesion_model=self.ct_lesion_model)
            return result, DicomResults(sr=sr, seg=seg, sc=sc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _key_slice(result):
        """The slice with the largest lesion, else the one with the highest probability, else the middle one."""
        rows = result.get("per_slice") or []
        if not rows:
            raise InputError("the CT study has no slices")
        if rows[0].get("lesion_pixels") is not None:
            return max(range(len(rows)), key=lambda i: rows[i]["lesion_pixels"])
        if rows[0].get("covid_probability") is not None:
            return max(range(len(rows)), key=lambda i: rows[i]["covid_probability"])
        return len(rows) // 2

    def close(self):
        for predictor in self._open_list:
            predictor.close()
        self._open_list = []


def save_results(folder, result, objects):
    """Write the DICOM objects and the JSON result durably into ``folder``; returns the DICOM paths."""
    from lungedge.runtime.dicom_node.store import write_durably, write_json_durably

    os.makedirs(folder, exist_ok=True)
    paths, written = [], {}
    for name, ds in (("sr", objects.sr), ("seg", objects.seg), ("sc", objects.sc)):
        if ds is None:
            continue
        path = os.path.join(folder, name + ".dcm")
        write_durably(path, encode(ds))
        paths.append(path)
        written[name] = name + ".dcm"
    json_result = report.jsonable(result)
    json_result["input"] = {"kind": "dicom", "instances": json_result.get("input", {}).get("instances", 1)}
    json_result["dicom"] = written
    write_json_durably(os.path.join(folder, "result.json"), json_result)
    return paths


def encode(ds):
    """A dataset as the bytes of a DICOM file (preamble, file meta, explicit VR little endian body)."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
