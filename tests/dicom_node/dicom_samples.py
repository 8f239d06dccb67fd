"""CR and CT instances made from the dev pack's DICOM, with fresh UIDs (a module, not conftest: several conftest
modules share that name)."""

import os

import numpy as np
from peers import CR_STORAGE


def new_uid():
    from pydicom.uid import generate_uid

    return generate_uid()


def cr_instance(source, path, small=False, study_uid=None, series_uid=None, uncompressed=False):
    """The dev pack's chest CR re-tagged as CR Image Storage (it ships as Secondary Capture) with new UIDs.

    ``small``: a 128x128 uncompressed crop (fast for the fault tests); else the 1024x1024 JPEG baseline file,
    decoded to explicit VR little endian with ``uncompressed``.
    """
    import pydicom

    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if small or uncompressed:
        pixels = np.ascontiguousarray(ds.pixel_array[384:640:2, 384:640:2] if small else ds.pixel_array)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        for key in ("LossyImageCompressionMethod",):
            if key in ds:
                delattr(ds, key)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def ct_series(source, folder, count=4, study_uid=None):
    """``count`` slices of the dev pack's CT slice, 2.5 mm apart, each with its own SOP Instance UID."""
    import pydicom

    os.makedirs(str(folder), exist_ok=True)
    series = new_uid()
    for k in range(count):
        ds = pydicom.dcmread(source)
        arr = ds.pixel_array.copy()
        arr[40:70, 40:90] = 1424  # a 400 HU block: the lesion the tiny segmenter finds
        ds.PixelData = arr.tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
        ds.SeriesInstanceUID = series
        if study_uid:
            ds.StudyInstanceUID = study_uid
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 2.5 * k]
        ds.InstanceNumber = k + 1
        ds.save_as(os.path.join(str(folder), f"slice_{count - k:03d}.dcm"), enforce_file_format=True)
    return str(folder)
