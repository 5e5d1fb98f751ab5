"""Property tests: damaged files and odd masks fail with the kit's own clear errors.

The readers (``load_image``, ``load_label``) are given truncated NIfTI and DICOM files, random
bytes under image names, empty files and folders of junk; they must raise
:class:`~mosmoskit.data.readers.ImageReadError` (a ``ValueError``) naming the file, never an
exception from inside nibabel, pydicom, gzip, zlib or struct. ``LabelMap.check_mask`` is given
arbitrary arrays (every numeric dtype, NaN, inf, negative and huge values, empty arrays): it
either accepts them, when every value is an id of the map, or raises a ``ValueError`` that names
the source and shows an offending value.

Example counts are small (``max_examples`` 25-40) so that the file runs in well under 30 s.
"""

from __future__ import annotations

import gzip
import itertools
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import ImageReadError, load_image, load_label
from mosmoskit.labels import load_label_map

BTCV = load_label_map("btcv")
VALID_IDS = set(BTCV.labels.values())
SOURCE = "case_7/label.nii.gz"
# Hypothesis reuses the function-scoped tmp_path across examples: every example writes its own
# uniquely named file (see fresh_path), so no example sees another's.
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_COUNTER = itertools.count()

# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of one small, valid phantom image and label (.nii.gz) and the image as plain .nii."""
    root = generate_cohort(tmp_path_factory.mktemp("phantom"), n=1, seed=0, shape=(24, 24, 16),
                           spacing=(16.0, 16.0, 16.0), progress=False, overwrite=True)
    image = next((root / "imagesTr").glob("*.nii.gz"))
    label = next((root / "labelsTr").glob("*.nii.gz"))
    # the originals read: every failure below comes from the damage, not from the files
    load_label(label, BTCV, reference=load_image(image))
    return {"image_gz": image.read_bytes(), "label_gz": label.read_bytes(),
            "image_nii": gzip.decompress(image.read_bytes())}


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory) -> list[bytes]:
    """The bytes of the 3 slice files of a valid, tiny axial CT series."""
    folder = tmp_path_factory.mktemp("dicom")
    series_uid = generate_uid()
    paths = []
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series_uid, "CT", k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.0
        ds.Rows, ds.Columns = 6, 5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        ds.PixelData = (np.arange(30, dtype=np.uint16).reshape(6, 5) + 100 * k).tobytes()
        path = folder / f"s{k}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    assert load_image(folder).shape == (5, 6, 3)
    return [p.read_bytes() for p in paths]


def fresh_path(tmp_path: Path, name: str) -> Path:
    """A path that no earlier example used: a new sub-folder of tmp_path holding ``name``."""
    folder = tmp_path / f"ex{next(_COUNTER):05d}"
    folder.mkdir()
    return folder / name


def assert_read_error(call, path: Path, allowed: type[BaseException] = ImageReadError) -> BaseException:
    """``call()`` must raise ``allowed`` (anything else propagates and fails the test), naming ``path``."""
    with pytest.raises(allowed) as info:
        call()
    assert str(path) in str(info.value), f"the message does not name {path}: {info.value}"
    return info.value


# ---------------------------------------------------------------------------------- NIfTI files
@settings(max_examples=40, **SETTINGS)
@given(keep=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
@example(keep=0.0)
def test_nifti_gz_cut_anywhere_raises_image_read_error(tmp_path, phantom_files, keep):
    raw = phantom_files["image_gz"]
    path = fresh_path(tmp_path, "image.nii.gz")
    path.write_bytes(raw[: int(keep * len(raw))])
    assert_read_error(lambda: load_image(path), path)
    assert_read_error(lambda: load_label(path, BTCV), path)


@settings(max_examples=25, **SETTINGS)
@given(removed=st.integers(min_value=1, max_value=40))
@example(removed=1)  # only the last byte of the gzip size field is missing
@example(removed=8)  # the whole 8-byte trailer (CRC and size) is missing: the voxels still decode
def test_nifti_gz_missing_its_last_bytes_is_refused(tmp_path, phantom_files, removed):
    """nibabel reads only the bytes the voxels need: a file cut in its last bytes used to load."""
    raw = phantom_files["label_gz"]
    path = fresh_path(tmp_path, "label.nii.gz")
    path.write_bytes(raw[:-removed])
    error = assert_read_error(lambda: load_label(path, BTCV), path)
    assert isinstance(error, ImageReadError)


@settings(max_examples=30, **SETTINGS)
@given(keep=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_plain_nifti_cut_anywhere_raises_image_read_error(tmp_path, phantom_files, keep):
    raw = phantom_files["image_nii"]
    path = fresh_path(tmp_path, "image.nii")
    path.write_bytes(raw[: int(keep * len(raw))])
    assert_read_error(lambda: load_image(path), path)


@settings(max_examples=40, **SETTINGS)
@given(data=st.binary(max_size=1500), suffix=st.sampled_from([".nii.gz", ".nii", ".dcm"]),
       gzipped=st.booleans())
def test_random_bytes_under_an_image_name_raise_image_read_error(tmp_path, data, suffix, gzipped):
    # gzipped random bytes get past the gzip layer and reach the NIfTI header parser
    payload = gzip.compress(data) if gzipped and suffix == ".nii.gz" else data
    path = fresh_path(tmp_path, f"scan{suffix}")
    path.write_bytes(payload)
    assert_read_error(lambda: load_image(path), path)
    assert_read_error(lambda: load_label(path, BTCV), path)


@settings(max_examples=40, **SETTINGS)
@given(edits=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=4))
def test_nifti_with_a_damaged_header_loads_or_fails_clearly(tmp_path, phantom_files, edits):
    """Flipped header bytes: a volume comes back, or a ValueError naming the file (never another error)."""
    raw = bytearray(phantom_files["image_nii"])
    for position, value in edits:
        raw[position] = value
    path = fresh_path(tmp_path, "label.nii")
    path.write_bytes(bytes(raw))
    try:
        volume = load_image(path)
    except ImageReadError as err:
        assert str(path) in str(err)
    else:
        assert volume.array.dtype == np.float32 and np.isfinite(volume.array).all()
        assert volume.source == str(path)
    try:
        load_label(path, BTCV)
    except ValueError as err:  # unreadable (ImageReadError) or values outside the map
        assert str(path) in str(err)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".dcm"])
def test_empty_file_raises_image_read_error(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert_read_error(lambda: load_image(path), path)
    assert_read_error(lambda: load_label(path, BTCV), path)


@pytest.mark.parametrize(
    "data, what",
    [
        (np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), "structured"),
        (np.ones((4, 4, 3), dtype=np.complex64) * (1 + 2j), "complex"),
    ],
    ids=["rgb", "complex"],
)
def test_nifti_of_non_grey_voxels_is_refused(tmp_path, data, what):
    """An RGB NIfTI used to fail with a bare TypeError from torch; complex voxels lost their
    imaginary part with only a warning."""
    path = tmp_path / f"{what}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    error = assert_read_error(lambda: load_image(path), path)
    assert what in str(error)
    assert_read_error(lambda: load_label(path, BTCV), path)


# ----------------------------------------------------------------------------------- DICOM input
@settings(max_examples=30, **SETTINGS)
@given(files=st.lists(st.tuples(st.sampled_from(["IM0001", "slice.dcm", "notes.txt", "x"]),
                                st.binary(max_size=400), st.booleans()), max_size=4))
def test_folder_of_junk_is_not_a_dicom_series(tmp_path, files):
    """Folders of stray files, some starting with the DICOM preamble (b"DICM" at byte 128)."""
    folder = fresh_path(tmp_path, "series")
    folder.mkdir()
    for k, (name, data, preamble) in enumerate(files):
        (folder / f"{k}_{name}").write_bytes((b"\0" * 128 + b"DICM" if preamble else b"") + data)
    assert_read_error(lambda: load_image(folder), folder)


@settings(max_examples=30, **SETTINGS)
@given(victim=st.integers(0, 2), keep=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
@example(victim=0, keep=0.0)  # the first slice emptied: without it the series still looks regular
@example(victim=2, keep=0.1)  # the last slice cut before its "DICM" marker
def test_dicom_series_with_a_truncated_slice_raises_image_read_error(tmp_path, dicom_series, victim, keep):
    folder = fresh_path(tmp_path, "series")
    folder.mkdir()
    for k, raw in enumerate(dicom_series):
        (folder / f"s{k}.dcm").write_bytes(raw[: int(keep * len(raw))] if k == victim else raw)
    assert_read_error(lambda: load_image(folder), folder)


def test_dicom_slice_without_pixel_data_raises_image_read_error(tmp_path, dicom_series):
    path = tmp_path / "s0.dcm"
    path.write_bytes(dicom_series[0])
    ds = pydicom.dcmread(str(path))
    del ds.PixelData
    ds.save_as(str(path))
    assert_read_error(lambda: load_image(path), path)


# ---------------------------------------------------------------------------------- label checks
def _expected_outcome(arr: np.ndarray) -> tuple[str, str] | None:
    """What check_mask must do with ``arr``, computed independently: None (accept), or (kind,
    text the message must contain)."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            return "non-finite", "nan"
        if np.isinf(arr).any():
            return "non-finite", "inf"
        if (arr != np.round(arr)).any():
            return "fraction", "non-integer"
        values = sorted(float(v) if abs(float(v)) >= 2.0**63 else int(v) for v in np.unique(arr))
    else:
        values = sorted(set(arr.ravel().tolist()))  # Python ints: exact for uint64 too
    unexpected = [v for v in values if v not in VALID_IDS]
    return ("unexpected", str(unexpected[0])) if unexpected else None


NUMERIC_DTYPES = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                           hnp.boolean_dtypes())
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
# mostly valid ids with an occasional stranger, so that the accepting path is exercised too
MOSTLY_VALID = hnp.arrays(np.int16, SHAPES, elements=st.one_of(st.integers(0, 13), st.integers(-3, 20)))


@settings(max_examples=50, deadline=None)
@given(arr=st.one_of(hnp.arrays(NUMERIC_DTYPES, SHAPES), MOSTLY_VALID))
@example(arr=np.array([0.0, np.nan, np.inf]))
@example(arr=np.array([1e20, 3.0]))
@example(arr=np.array([2**64 - 1, 1], dtype=np.uint64))
@example(arr=np.array([-(2**63), 0], dtype=np.int64))
@example(arr=np.zeros((0, 3), dtype=np.float32))
@example(arr=np.array([True, False]))
def test_check_mask_accepts_valid_ids_or_names_the_offending_values(arr):
    expected = _expected_outcome(arr)
    try:
        present = BTCV.check_mask(arr, source=SOURCE)
    except ValueError as err:
        message = str(err)
        assert expected is not None, f"valid mask refused: {message}"
        assert message.startswith(SOURCE), message
        assert expected[1] in message.lower() if expected[0] == "non-finite" else expected[1] in message, (
            f"{expected} not shown in {message!r}")
    else:
        assert expected is None, f"mask with {expected} accepted"
        ids = {int(v) for v in np.asarray(arr, dtype=np.float64).ravel()} if arr.size else set()
        assert present == tuple(BTCV.names[i] for i in sorted(ids) if i != 0)


@pytest.mark.parametrize(
    "mask, shown",
    [
        (torch.tensor([0.0, 2.0, 7.0], dtype=torch.bfloat16), None),  # no numpy dtype: used to raise TypeError
        (torch.tensor([0.0, float("nan")]), "nan"),
        ([[1], [1, 2]], "not a regular array"),  # ragged nested lists: numpy's own ValueError, unnamed
        (np.array(["1"]), "must hold integers"),
    ],
    ids=["bfloat16", "tensor-nan", "ragged", "strings"],
)
def test_check_mask_on_tensors_and_non_arrays(mask, shown):
    if shown is None:
        assert BTCV.check_mask(mask, source=SOURCE) == ("kidney_right", "stomach")
        return
    with pytest.raises(ValueError) as info:
        BTCV.check_mask(mask, source=SOURCE)
    assert str(info.value).startswith(SOURCE) and shown in str(info.value)
