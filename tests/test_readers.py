"""Readers (NIfTI, DICOM), reorientation to RAS, save_like round trips, transforms, real scans."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mosmoskit.data.readers import (
    ImageReadError,
    Volume,
    check_aligned,
    load_image,
    load_label,
    save_like,
)
from mosmoskit.data.transforms import CheckLabelsd, ct_intensity_transform, load_transforms
from mosmoskit.labels import LabelMap, load_label_map

# LPS storage with anisotropic spacing: a file that is *not* RAS, as DICOM exports often are.
SPACING = (0.8, 0.8, 2.5)
ORIGIN = (12.0, -30.0, 40.0)


def lps_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def ramp(shape) -> np.ndarray:
    """Distinct values that tell every voxel apart: v = 100 i + 10 j + k."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (100 * i + 10 * j + k).astype(np.int16)


def value_at_world(vol_array: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Naive reference: index of each world point in a grid (rounded), then the value there."""
    idx = np.rint((np.linalg.inv(affine) @ np.c_[world, np.ones(len(world))].T)[: vol_array.ndim].T).astype(int)
    return vol_array[tuple(idx.T)]


# ---------------------------------------------------------------------------------------------
# NIfTI: reorientation
# ---------------------------------------------------------------------------------------------
def test_lps_nifti_is_flipped_to_ras_with_hand_computed_affine(tmp_path):
    data = ramp((4, 3, 5))
    path = write_nifti(tmp_path / "lps.nii.gz", data, lps_affine())
    vol = load_image(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, data[::-1, ::-1, :])
    # new origin = world position of the old voxel (3, 2, 0)
    expected = np.diag([0.8, 0.8, 2.5, 1.0])
    expected[:3, 3] = [12.0 - 0.8 * 3, -30.0 - 0.8 * 2, 40.0]
    np.testing.assert_allclose(vol.affine, expected, atol=1e-5)
    np.testing.assert_allclose(vol.original_affine, lps_affine(), atol=1e-6)
    assert vol.axcodes_original == ("L", "P", "S")
    assert vol.axcodes == ("R", "A", "S")
    assert vol.original_shape == (4, 3, 5)
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.source == str(path)


def test_permuted_oblique_axes_keep_every_voxel_at_its_world_position(tmp_path):
    # stored axes: (A, S, L) with a 5 degree rotation: a transpose and a flip are needed
    rot = np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]], dtype=float)
    c, s = np.cos(np.deg2rad(5)), np.sin(np.deg2rad(5))
    tilt = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = tilt @ rot @ np.diag([1.5, 2.0, 0.7])
    aff[:3, 3] = [5.0, 6.0, -7.0]
    data = ramp((3, 4, 6))
    vol = load_image(write_nifti(tmp_path / "asl.nii.gz", data, aff))
    assert vol.axcodes_original == ("A", "S", "L")
    assert vol.shape == (6, 3, 4)
    idx = np.argwhere(np.ones(vol.shape, bool))
    world = (vol.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    stored_affine = nib.load(str(tmp_path / "asl.nii.gz")).affine
    np.testing.assert_array_equal(vol.array[tuple(idx.T)], value_at_world(data, stored_affine, world))


def test_2d_nifti_is_reoriented_in_plane(tmp_path):
    data = ramp((5, 4, 1))[..., 0]
    vol = load_image(write_nifti(tmp_path / "slice.nii.gz", data, lps_affine()))
    assert vol.ndim == 2 and vol.shape == (5, 4) and vol.axcodes_original == ("L", "P")
    np.testing.assert_array_equal(vol.array, data[::-1, ::-1])


@pytest.mark.parametrize(
    "affine",
    [lps_affine(), np.diag([1.0, 1.0, 1.0, 1.0]), np.array([[0, 0, 2.0, 1], [0, -1.0, 0, 2], [1.5, 0, 0, 3], [0, 0, 0, 1]])],
    ids=["lps", "ras", "permuted"],
)
def test_save_like_round_trip_reproduces_the_file(tmp_path, affine):
    data = ramp((4, 3, 5)).astype(np.float32) - 250.5
    src = write_nifti(tmp_path / "src.nii.gz", data, affine)
    vol = load_image(src)
    out = save_like(vol.array, vol, tmp_path / "out" / "copy.nii.gz")
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_array_equal(b.get_fdata(), a.get_fdata())
    np.testing.assert_array_equal(b.affine, a.affine)
    assert b.shape == a.shape
    assert not list((tmp_path / "out").glob(".*tmp*")), "atomic write left a temporary file"


def test_save_like_round_trip_2d(tmp_path):
    data = ramp((5, 4, 1))[..., 0]
    src = write_nifti(tmp_path / "slice.nii.gz", data, lps_affine())
    vol = load_image(src)
    out = nib.load(str(save_like(vol.array, vol, tmp_path / "copy.nii.gz", dtype=np.int16)))
    assert out.shape == (5, 4) and out.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(out.dataobj), data)
    np.testing.assert_array_equal(out.affine, nib.load(str(src)).affine)


def test_save_like_mask_and_channels(tmp_path):
    vol = load_image(write_nifti(tmp_path / "img.nii.gz", ramp((4, 3, 5)), lps_affine()))
    mask = vol.array > 300  # bool -> uint8 on disk
    out = nib.load(str(save_like(mask, vol, tmp_path / "mask.nii.gz")))
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj), (ramp((4, 3, 5)) > 300).astype(np.uint8))
    maps = np.stack([vol.array, -vol.array])  # (C, X, Y, Z): written channel-last
    out4 = nib.load(str(save_like(maps, vol, tmp_path / "maps.nii.gz")))
    assert out4.shape == (4, 3, 5, 2)
    np.testing.assert_array_equal(out4.get_fdata()[..., 1], -ramp((4, 3, 5)))
    back = load_image(tmp_path / "maps.nii.gz", channel=1)
    np.testing.assert_array_equal(back.array, -vol.array)


def test_save_like_rejects_bad_input(tmp_path):
    vol = load_image(write_nifti(tmp_path / "img.nii.gz", ramp((4, 3, 5)), lps_affine()))
    with pytest.raises(ValueError, match=r"shape \(3, 3, 5\) is not on the grid"):
        save_like(np.zeros((3, 3, 5)), vol, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="fractional values"):
        save_like(vol.array + 0.5, vol, tmp_path / "x.nii.gz", dtype="uint16")
    with pytest.raises(ValueError, match="do not fit in uint8"):
        save_like(vol.array, vol, tmp_path / "x.nii.gz", dtype=np.uint8)
    with pytest.raises(ValueError, match=r"must end with \.nii"):
        save_like(vol.array, vol, tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------
# NIfTI: bad files
# ---------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: no such file"):
        load_image(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("kind", ["random_bytes", "truncated", "text"])
def test_files_that_are_not_images(tmp_path, kind):
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "truncated":
        good = write_nifti(tmp_path / "good.nii.gz", ramp((20, 20, 20)), lps_affine())
        path.write_bytes(good.read_bytes()[:400])
    else:
        path = tmp_path / "notes.nii"
        path.write_text("this is not an image\n" * 40)
    with pytest.raises(ImageReadError, match=rf"{path.name}: cannot read as NIfTI") as info:
        load_image(path)
    assert info.value.__cause__ is not None, "the library's exception should be chained"


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("liver normal")
    with pytest.raises(ImageReadError, match=r"report.txt: unsupported image format"):
        load_image(path)


def test_nan_values_are_counted(tmp_path):
    data = ramp((4, 3, 5)).astype(np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    with pytest.raises(ImageReadError, match=r"4 of 60 voxels are not finite \(3 NaN, 1 infinite\)"):
        load_image(write_nifti(tmp_path / "nan.nii.gz", data, lps_affine()))
    with pytest.raises(ImageReadError, match="60 of 60"):
        load_image(write_nifti(tmp_path / "allnan.nii.gz", np.full((4, 3, 5), np.nan, np.float32), lps_affine()))


def test_4d_needs_a_channel_and_singleton_is_squeezed(tmp_path):
    data = np.stack([ramp((4, 3, 5)), ramp((4, 3, 5)) + 1000], axis=-1)
    path = write_nifti(tmp_path / "multi.nii.gz", data, lps_affine())
    with pytest.raises(ImageReadError, match=r"holds 2 volumes.*pass channel=k \(0\.\.1\)"):
        load_image(path)
    vol = load_image(path, channel=1)
    np.testing.assert_array_equal(vol.array, (ramp((4, 3, 5)) + 1000)[::-1, ::-1])
    with pytest.raises(ValueError, match="channel=2 is out of range"):
        load_image(path, channel=2)
    single = write_nifti(tmp_path / "single.nii.gz", ramp((4, 3, 5))[..., None], lps_affine())
    assert load_image(single).shape == (4, 3, 5)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------
def small_mask(shape=(4, 3, 5)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[:2, :, :2] = 1  # spleen
    m[2:, 1:, 3:] = 6  # liver
    return m


def test_label_lines_up_across_storage_orientations(tmp_path):
    img = load_image(write_nifti(tmp_path / "img.nii.gz", ramp((4, 3, 5)), lps_affine()))
    # the same grid stored as LAS (y flipped): different bytes, same world positions
    las = lps_affine().copy()
    las[:3, 1] *= -1
    las[:3, 3] = (lps_affine() @ np.array([0, 2, 0, 1.0]))[:3]  # old last row is the new first
    mask = small_mask()
    path = write_nifti(tmp_path / "seg_las.nii.gz", mask[:, ::-1, :].copy(), las)
    seg = load_label(path, load_label_map("btcv"), reference=img)
    assert seg.array.dtype == np.uint8 and seg.axcodes_original == ("L", "A", "S")
    np.testing.assert_array_equal(seg.array, mask[::-1, ::-1, :])
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-5)
    check_aligned(seg, img)  # the public check agrees


def test_label_that_does_not_line_up_names_both_files_and_differences(tmp_path):
    img = load_image(write_nifti(tmp_path / "img.nii.gz", ramp((4, 3, 5)), lps_affine()))
    shifted = write_nifti(tmp_path / "shifted.nii.gz", small_mask(), lps_affine(origin=(12.0, -30.0, 42.5)))
    with pytest.raises(ValueError, match=r"(?s)shifted.nii.gz does not line up with .*img.nii.gz.*origin.*differs") as info:
        load_label(shifted, load_label_map("btcv"), reference=img)
    assert "spacing (mm): (0.8, 0.8, 2.5) vs (0.8, 0.8, 2.5)\n" in str(info.value)
    flipped = lps_affine()
    flipped[:3, 0] *= -1  # same shape and header spacing, mirrored in x: the classic LR error
    with pytest.raises(ValueError, match=r"(?s)axis codes as stored: RPS vs LPS"):
        load_label(write_nifti(tmp_path / "rps.nii.gz", small_mask(), flipped), load_label_map("btcv"), reference=img)
    with pytest.raises(ValueError, match=r"shape \(RAS\): \(4, 3, 4\) vs \(4, 3, 5\)"):
        load_label(write_nifti(tmp_path / "short.nii.gz", small_mask((4, 3, 4)), lps_affine()), load_label_map("btcv"), reference=img)
    # within tolerance: float32 rounding of the header must not count as a difference
    tiny = write_nifti(tmp_path / "tiny.nii.gz", small_mask(), lps_affine(origin=(12.0 + 2e-4, -30.0, 40.0)))
    load_label(tiny, load_label_map("btcv"), reference=img)


def test_label_values_are_checked_with_the_file_name(tmp_path):
    btcv = load_label_map("btcv")
    bad = small_mask()
    bad[0, 0, 0] = 14
    with pytest.raises(ValueError, match=r"bad.nii.gz: label values \[14\] are not in label map 'btcv'"):
        load_label(write_nifti(tmp_path / "bad.nii.gz", bad, lps_affine()), btcv)
    frac = small_mask().astype(np.float32)
    frac[1, 1, 1] = 0.5
    with pytest.raises(ValueError, match=r"frac.nii.gz: label mask has non-integer values such as \[0.5\]"):
        load_label(write_nifti(tmp_path / "frac.nii.gz", frac, lps_affine()), btcv)
    four_d = np.stack([small_mask(), small_mask()], axis=-1)
    with pytest.raises(ImageReadError, match="holds 2 volumes"):
        load_label(write_nifti(tmp_path / "4d.nii.gz", four_d, lps_affine()), btcv)
    # integer-valued floats are fine (many tools save masks as float32)
    ok = load_label(write_nifti(tmp_path / "float.nii.gz", small_mask().astype(np.float32), lps_affine()), btcv)
    assert ok.array.dtype == np.uint8 and set(np.unique(ok.array)) == {0, 1, 6}


def test_raw_values_are_converted(tmp_path):
    mmwhs = load_label_map("mmwhs")
    raw = np.zeros((4, 3, 5), np.int16)
    raw[0] = 205
    raw[1] = 850
    seg = load_label(write_nifti(tmp_path / "heart.nii.gz", raw, np.eye(4)), mmwhs)
    assert seg.array[0].max() == mmwhs.id_of("left_ventricle_myocardium") == 1
    assert seg.array[1].max() == mmwhs.id_of("pulmonary_artery") == 7
    with pytest.raises(ValueError, match=r"heart.nii.gz: label values \[205, 850\]"):
        load_label(tmp_path / "heart.nii.gz", mmwhs, raw=False)


def test_volume_validates_fields():
    with pytest.raises(ValueError, match="must be 2D or 3D"):
        Volume(np.zeros(3), np.eye(4), np.eye(4), (3,), (1.0,), ("R",), "x")
    with pytest.raises(ValueError, match="finite 4x4"):
        Volume(np.zeros((2, 2)), np.eye(3), np.eye(4), (2, 2), (1.0, 1.0), ("R", "A"), "x")


# ---------------------------------------------------------------------------------------------
# DICOM (synthetic)
# ---------------------------------------------------------------------------------------------
def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    pixel_spacing=(0.7, 0.6),
    z_positions=None,
    origin=(-100.0, -80.0, 0.0),
    names=None,
    instance_numbers=None,
    series_uid=None,
    intercept=-1024.0,
) -> list[Path]:
    """Write volume (columns X, rows Y, slices) as an axial LPS series; stored = volume - intercept."""
    folder.mkdir(parents=True, exist_ok=True)
    n = volume.shape[2]
    z_positions = list(z_positions if z_positions is not None else np.arange(n) * 2.0)
    names = names or [f"s{k:03d}.dcm" for k in range(n)]
    instance_numbers = instance_numbers or list(range(1, n + 1))
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.InstanceNumber = instance_numbers[k]
        ds.ImagePositionPatient = [origin[0], origin[1], float(z_positions[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(pixel_spacing)  # (between rows, between columns)
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
        stored = (volume[:, :, k].T - intercept).astype(np.uint16)  # pixel_array is (rows, columns)
        ds.PixelData = stored.tobytes()
        path = folder / names[k]
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def test_dicom_series_is_ordered_by_position_not_name_or_instance_number(tmp_path):
    vol = ramp((6, 5, 4)).astype(np.float32) - 1000.0
    z = [10.0, 12.0, 14.0, 16.0]
    # file names and instance numbers both run against the slice positions
    write_dicom_series(
        tmp_path / "series", vol, z_positions=z, names=["d.dcm", "a.dcm", "c.dcm", "b.dcm"], instance_numbers=[3, 4, 1, 2]
    )
    img = load_image(tmp_path / "series")
    assert img.axcodes_original == ("L", "P", "S")
    assert img.original_shape == (6, 5, 4)
    assert img.spacing == pytest.approx((0.6, 0.7, 2.0))  # columns 0.6 mm apart, rows 0.7 mm
    np.testing.assert_array_equal(img.array, vol[::-1, ::-1, :])  # HU restored by the rescale
    # RAS affine by hand: DICOM voxel (c, r, k) sits at LPS (-100 + 0.6 c, -80 + 0.7 r, 10 + 2 k)
    expected = np.diag([0.6, 0.7, 2.0, 1.0])
    expected[:3, 3] = [100.0 - 0.6 * 5, 80.0 - 0.7 * 4, 10.0]
    np.testing.assert_allclose(img.affine, expected, atol=1e-6)


def test_dicom_parity_with_transforms_and_single_file(tmp_path):
    vol = ramp((6, 5, 3)).astype(np.float32) - 500.0
    files = write_dicom_series(tmp_path / "series", vol, z_positions=[4.0, 0.0, 2.0])
    img = load_image(tmp_path / "series")
    np.testing.assert_array_equal(img.array, vol[::-1, ::-1, [1, 2, 0]])  # z = 0, 2, 4
    out = load_transforms(("image",), label_keys=())({"image": str(tmp_path / "series")})
    np.testing.assert_array_equal(out["image"][0].numpy(), img.array)
    np.testing.assert_allclose(out["image"].affine.numpy(), img.affine, atol=1e-6)
    one = load_image(files[1])  # the file holding volume slice 1 (at z = 0)
    assert one.ndim == 2
    np.testing.assert_array_equal(one.array, vol[::-1, ::-1, 1])
    np.testing.assert_allclose(one.affine[:3, 2], [0, 0, 2.0])  # slice normal x thickness


def test_dicom_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match=r"empty: folder holds no DICOM files \(0 file"):
        load_image(empty)
    (empty / "README.txt").write_text("not dicom")
    with pytest.raises(ImageReadError, match=r"folder holds no DICOM files \(1 file"):
        load_image(empty)
    vol = ramp((4, 4, 3)).astype(np.float32)
    write_dicom_series(tmp_path / "dup", vol, z_positions=[0.0, 2.0, 2.0])
    with pytest.raises(ImageReadError, match=r"dup: 1 pair\(s\) of slices share a position"):
        load_image(tmp_path / "dup")
    write_dicom_series(tmp_path / "gap", ramp((4, 4, 4)).astype(np.float32), z_positions=[0.0, 2.0, 4.0, 8.0])
    with pytest.raises(ImageReadError, match=r"gap: uneven slice gaps \(median 2.0000 mm, range 2.0000-4.0000 mm\)"):
        load_image(tmp_path / "gap")
    mixed = tmp_path / "mixed"
    write_dicom_series(mixed, vol, names=["a1.dcm", "a2.dcm", "a3.dcm"])
    write_dicom_series(mixed, vol, names=["b1.dcm", "b2.dcm", "b3.dcm"])
    with pytest.raises(ImageReadError, match=r"mixed: folder mixes 2 DICOM series"):
        load_image(mixed)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage it is given
def test_corrupt_dicom_files(tmp_path):
    (good,) = write_dicom_series(tmp_path / "ok", ramp((8, 8, 1)).astype(np.float32))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(ImageReadError, match=r"truncated.dcm: cannot read as DICOM") as info:
        load_image(truncated)
    assert info.value.__cause__ is not None
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 10)
    with pytest.raises(ImageReadError, match=r"garbage.dcm: cannot read as DICOM"):
        load_image(garbage)


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------
def test_load_transforms_match_load_image_and_resample(tmp_path):
    shape = (10, 8, 6)
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    aff = lps_affine()
    world = np.einsum("ab,bijk->aijk", aff[:3, :3], np.stack([i, j, k]).astype(float)) + aff[:3, 3, None, None, None]
    image = (2.0 * world[0] - 3.0 * world[1] + 0.5 * world[2]).astype(np.float32)  # linear in world
    mask = small_mask(shape)
    write_nifti(tmp_path / "img.nii.gz", image, aff)
    write_nifti(tmp_path / "seg.nii.gz", mask, aff)
    sample = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "seg.nii.gz")}

    out = load_transforms(("image", "label"))(sample)
    ref = load_image(sample["image"])
    assert out["image"].shape == (1, *shape)
    np.testing.assert_array_equal(out["image"][0].numpy(), ref.array)
    np.testing.assert_allclose(out["label"].affine.numpy(), ref.affine, atol=1e-6)

    res = load_transforms(("image", "label"), spacing=(1.6, 1.6, 5.0))(sample)
    assert res["image"].shape == (1, 6, 5, 4)  # MONAI covers the extent: ceil(extent / spacing) + 1
    np.testing.assert_allclose(np.abs(np.diag(res["image"].affine.numpy())[:3]), (1.6, 1.6, 5.0))
    # bilinear reproduces a linear function exactly at every voxel inside the source grid
    new = res["image"][0].numpy()
    a = res["image"].affine.numpy()
    ii = np.argwhere(np.ones(new.shape, bool))
    w = (a @ np.c_[ii, np.ones(len(ii))].T)[:3].T
    src = (np.linalg.inv(ref.affine) @ np.c_[w, np.ones(len(w))].T)[:3].T
    inside = np.all((src >= 0) & (src <= np.array(shape) - 1), axis=1)
    assert inside.sum() >= 20
    expected = 2.0 * w[:, 0] - 3.0 * w[:, 1] + 0.5 * w[:, 2]
    np.testing.assert_allclose(new[tuple(ii[inside].T)], expected[inside], atol=1e-3)
    # nearest keeps ids: no value that is not in the original mask
    assert set(np.unique(res["label"].numpy())) <= {0.0, 1.0, 6.0}


def test_load_transforms_argument_errors():
    with pytest.raises(ValueError, match=r"label_keys \['seg'\] are not among keys"):
        load_transforms(("image",), label_keys=("seg",))
    with pytest.raises(ValueError, match="orientation must name each axis once"):
        load_transforms(orientation="RAR")
    with pytest.raises(ValueError, match="spacing must be 2 or 3 positive numbers"):
        load_transforms(spacing=(1.0, -1.0, 1.0))


def test_ct_intensity_window():
    t = ct_intensity_transform(window=(-175, 250))
    out = t({"image": np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0], dtype=np.float32)})["image"]
    np.testing.assert_allclose(np.asarray(out), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="window must be two finite numbers low < high"):
        ct_intensity_transform(window=(250, -175))


def test_check_labels_names_the_file_and_converts_raw(tmp_path):
    bad = small_mask()
    bad[0, 0, 0] = 99
    write_nifti(tmp_path / "bad_seg.nii.gz", bad, lps_affine())
    chain = load_transforms(("label",), label_keys=("label",))
    sample = chain({"label": str(tmp_path / "bad_seg.nii.gz")})
    with pytest.raises(ValueError, match=r"bad_seg.nii.gz: label values \[99\] are not in label map 'btcv'"):
        CheckLabelsd(("label",), load_label_map("btcv"))(sample)
    good = chain({"label": str(write_nifti(tmp_path / "good.nii.gz", small_mask(), lps_affine()))})
    assert CheckLabelsd(("label",), "btcv")(good)["label"] is good["label"]

    raw = np.zeros((4, 3, 5), np.int16)
    raw[1] = 420
    heart = chain({"label": str(write_nifti(tmp_path / "heart.nii.gz", raw, np.eye(4)))})
    converted = CheckLabelsd(("label",), "mmwhs")(heart)["label"]
    assert converted.meta["filename_or_obj"].endswith("heart.nii.gz")
    assert set(np.unique(converted.numpy())) == {0, load_label_map("mmwhs").id_of("left_atrium")}
    with pytest.raises(ValueError, match="needs a label_map"):
        CheckLabelsd(("label",))


# ---------------------------------------------------------------------------------------------
# real scans (skipped when ../shared/data is absent)
# ---------------------------------------------------------------------------------------------
def _names_with(label_map: LabelMap, prefixes) -> list[int]:
    return [label_map.id_of(n) for n in label_map.foreground_names if n.startswith(prefixes)]


def hu_consistent(image: np.ndarray, label: np.ndarray, lm: LabelMap, spacing) -> dict[str, bool]:
    """Plausibility of HU under a label: liver/spleen soft tissue, bones dense, far air at -1000."""
    from scipy import ndimage

    bones = np.isin(label, _names_with(lm, ("vertebrae", "rib_", "humerus", "costal")))
    far = (label == 0) & (ndimage.distance_transform_edt(label == 0, sampling=spacing) > 100.0)
    return {
        "liver": 40 <= image[label == lm.id_of("liver")].mean() <= 200,
        "spleen": 40 <= image[label == lm.id_of("spleen")].mean() <= 200,
        "bone_mean": image[bones].mean() > 150,
        # 64% of bone-labelled voxels exceed 150 HU when aligned; < 40% after any flip
        "bone_fraction": (image[bones] > 150).mean() > 0.55,
        "far_background_air": image[far].mean() < -950,
    }


@pytest.fixture(scope="module")
def dicom_pair(totalseg):
    lm = load_label_map("totalseg_ct")
    img = load_image(totalseg / "ct_dicom")
    seg = load_label(totalseg / "ct_dicom_labels.nii.gz", lm, reference=img)
    return img, seg, lm


@pytest.mark.shared_data
def test_real_ct_nifti_pair(totalseg):
    lm = load_label_map("totalseg_ct")
    img = load_image(totalseg / "ct_abdomen_3mm.nii.gz")
    seg = load_label(totalseg / "ct_abdomen_3mm_labels.nii.gz", lm, reference=img)
    assert img.shape == (122, 101, 112) and img.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert len(lm.check_mask(seg.array)) == 61
    liver = np.argwhere(seg.array == lm.id_of("liver")).mean(0)
    spleen = np.argwhere(seg.array == lm.id_of("spleen")).mean(0)
    assert liver[0] > spleen[0], "in RAS the liver (patient's right) has the larger x index"
    btcv = load_label_map("btcv")
    remapped = lm.remap_to(btcv, drop_unmatched=True)(seg.array)
    present = btcv.check_mask(remapped, source="remapped")
    assert set(present) == set(btcv.foreground_names) - {"esophagus"} and len(present) == 12


@pytest.mark.shared_data
def test_real_dicom_and_las_label_line_up(dicom_pair, totalseg):
    img, seg, lm = dicom_pair
    assert img.shape == seg.shape == (512, 512, 20)
    assert img.axcodes_original == ("L", "P", "S") and seg.axcodes_original == ("L", "A", "S")
    assert img.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    checks = hu_consistent(img.array, seg.array, lm, img.spacing)
    assert all(checks.values()), checks


@pytest.mark.shared_data
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_real_dicom_flipped_label_fails_the_hu_check(dicom_pair, axis):
    img, seg, lm = dicom_pair
    checks = hu_consistent(img.array, np.flip(seg.array, axis), lm, img.spacing)
    assert not all(checks.values()), f"a label flipped along axis {axis} should not look aligned: {checks}"


@pytest.mark.shared_data
def test_real_dicom_slices_follow_image_position(dicom_pair, totalseg):
    img, _, _ = dicom_pair
    files = sorted((totalseg / "ct_dicom").glob("*.dcm"))
    z = [float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z, reverse=True), "precondition: file names run from head to feet"
    top = pydicom.dcmread(str(files[0]))
    hu = top.pixel_array.astype(np.float32) * float(top.RescaleSlope) + float(top.RescaleIntercept)
    # last canonical slice = most superior; DICOM (rows, cols) -> (cols, rows), LPS -> RAS flips x, y
    np.testing.assert_array_equal(img.array[:, :, -1], hu.T[::-1, ::-1])
    assert img.affine[2, 3] == pytest.approx(min(z)) and img.affine[2, 2] == pytest.approx(2.0)


@pytest.mark.shared_data
def test_real_mr_pair(totalseg, tmp_path):
    lm = load_label_map("totalseg_mr")
    img = load_image(totalseg / "mr_abdomen_3mm.nii.gz")
    seg = load_label(totalseg / "mr_abdomen_3mm_labels.nii.gz", lm, reference=img)
    assert img.axcodes_original == ("L", "P", "S") and img.shape == (117, 91, 20)
    present = lm.check_mask(seg.array)
    assert {"liver", "spleen", "kidney_left", "kidney_right"} <= set(present)
    liver = np.argwhere(seg.array == lm.id_of("liver")).mean(0)
    spleen = np.argwhere(seg.array == lm.id_of("spleen")).mean(0)
    assert liver[0] > spleen[0]
    # writing back lands on the stored LPS grid byte for byte
    raw = nib.load(str(totalseg / "mr_abdomen_3mm_labels.nii.gz"))
    out = nib.load(str(save_like(seg.array, img, tmp_path / "seg.nii.gz")))
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(raw.dataobj))
    np.testing.assert_allclose(out.affine, raw.affine, atol=1e-5)
