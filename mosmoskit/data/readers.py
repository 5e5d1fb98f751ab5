"""Read images and label masks from NIfTI files and DICOM series into one canonical orientation.

Every array the kit works on is in **RAS** orientation: increasing the index along array axis 0
moves towards the patient's Right, along axis 1 towards Anterior, along axis 2 towards Superior
(the ``affine`` is then close to diagonal with positive spacings). Files come in any orientation (NIfTI
exported from DICOM is often LPS or LAS; a DICOM series read slice by slice is LPS), so a mask and
its image that "have the same shape" may still be mirror images of each other. Reorienting both to
RAS from their own affines is what makes them line up; :func:`load_label` then *checks* that they do.

Reading is done by MONAI's readers (``NibabelReader``; ``PydicomReader`` with one change: a series
is ordered by slice position, ``ImagePositionPatient`` projected on the slice normal, instead of by
``InstanceNumber``, which scanners do not always number in spatial order) and reoriented by MONAI's
``Orientation``, so these arrays equal what :func:`mosmoskit.data.transforms.load_transforms` gives.

Every failure raises with the path and what is wrong: a missing path, a file that is not an image,
an empty DICOM folder, NaN values, a 4D file where one volume was expected, a mask whose values are
not in its label map, a mask that does not line up with its image. Damaged files (a ``.nii.gz``
cut short by an interrupted copy, random bytes under an image name, a folder of junk where a DICOM
series was expected) raise :class:`ImageReadError` naming the file, with the library's own
exception (nibabel, pydicom, gzip, zlib, struct ...) chained as its cause, never that exception
bare. A ``.nii.gz`` whose gzip stream ends early is refused even when the voxels themselves could
be decoded (only the stream's end, with its checksum, is missing), since nothing then vouches for
their integrity.

Example:
    >>> from mosmoskit.data.readers import load_image, load_label, save_like  # doctest: +SKIP
    >>> from mosmoskit.labels import load_label_map
    >>> ct = load_image("ct.nii.gz")                                           # doctest: +SKIP
    >>> ct.array.shape, ct.axcodes_original, ct.spacing                        # doctest: +SKIP
    ((122, 101, 112), ('R', 'A', 'S'), (3.0, 3.0, 3.0))
    >>> seg = load_label("seg.nii.gz", load_label_map("totalseg_ct"), reference=ct)  # doctest: +SKIP
    >>> save_like(seg.array == 5, ct, "liver.nii.gz", dtype="uint8")           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import zlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pydicom
import pydicom.misc
from monai.data import ImageReader, NibabelReader, PydicomReader
from monai.data.utils import to_affine_nd
from monai.transforms import LoadImage, Orientation
from monai.utils import MetaKeys, ensure_tuple

from mosmoskit.io import atomic_path
from mosmoskit.labels import LabelMap

__all__ = [
    "CANONICAL_AXCODES",
    "DEFAULT_ALIGN_TOLERANCE_MM",
    "ImageReadError",
    "KitImageReader",
    "PositionSortedPydicomReader",
    "Volume",
    "affine_nd",
    "axcodes_of",
    "check_aligned",
    "image_format",
    "image_reader",
    "load_image",
    "load_label",
    "quiet_monai_readers",
    "save_like",
    "sort_slices_by_position",
]

#: The orientation every loaded array is put in (first ``ndim`` letters are used for 2D images).
CANONICAL_AXCODES: tuple[str, str, str] = ("R", "A", "S")
#: MONAI's Orientation needs the axis labels spelled out (its default is deprecated).
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
#: How far (mm) two grids' voxel centres may be apart and still count as the same grid. NIfTI stores
#: affines in float32, which alone moves a corner of a 500 mm field of view by ~1e-4 mm.
DEFAULT_ALIGN_TOLERANCE_MM = 1e-3
#: |det| of the affine's linear part below which it is called singular (axes collapsed).
_SINGULAR_DET = 1e-12
#: Largest deviation (mm) between slice gaps of a DICOM series before it is called non-uniform.
DEFAULT_SLICE_GAP_TOLERANCE_MM = 1e-2

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageReadError(ValueError):
    """A file or folder could not be read as an image (the message names it and says why)."""


# ---------------------------------------------------------------------------------------------
# the loaded volume
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Volume:
    """An image or mask in canonical RAS orientation, with what is needed to write results back.

    Attributes:
        array: the voxels, shape (X, Y, Z) for volumes or (X, Y) for 2D images, in RAS orientation
            (axis 0 towards the patient's Right, 1 Anterior, 2 Superior). float32 for images,
            an integer type for masks (uint8 when the label map has at most 256 classes).
        affine: (4, 4) voxel index -> RAS+ world (mm) of ``array``.
        original_affine: (4, 4) voxel index -> RAS+ world (mm) of the array as stored in the file
            (for DICOM: columns, rows, slices in increasing slice position).
        original_shape: spatial shape as stored in the file.
        spacing: mm per voxel along each axis of ``array``.
        axcodes_original: axis codes of the stored array, e.g. ``('L', 'P', 'S')`` for DICOM.
        source: the file or folder it was read from.
    """

    array: np.ndarray
    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    axcodes_original: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim not in (2, 3):
            raise ValueError(f"Volume({self.source}): array must be 2D or 3D, got shape {arr.shape}")
        for name in ("affine", "original_affine"):
            aff = np.asarray(getattr(self, name), dtype=np.float64)
            if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
                raise ValueError(f"Volume({self.source}): {name} must be a finite 4x4 matrix, got {aff.shape}")
            object.__setattr__(self, name, aff)
        if len(self.original_shape) != arr.ndim or len(self.axcodes_original) != arr.ndim:
            raise ValueError(
                f"Volume({self.source}): original_shape {self.original_shape} and axcodes_original "
                f"{self.axcodes_original} must have one entry per array axis ({arr.ndim})"
            )
        object.__setattr__(self, "original_shape", tuple(int(s) for s in self.original_shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "axcodes_original", tuple(self.axcodes_original))

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of ``array`` (canonical orientation)."""
        return tuple(self.array.shape)

    @property
    def axcodes(self) -> tuple[str, ...]:
        """Axis codes of ``array``: always the canonical ``('R', 'A', 'S')`` (or ``('R', 'A')``)."""
        return CANONICAL_AXCODES[: self.ndim]

    @property
    def origin(self) -> tuple[float, ...]:
        """World position (mm, RAS+) of the centre of voxel (0, 0, 0) of ``array``."""
        return tuple(float(v) for v in self.affine[:3, 3])


# ---------------------------------------------------------------------------------------------
# small geometry helpers
# ---------------------------------------------------------------------------------------------
def affine_nd(affine: np.ndarray, ndim: int) -> np.ndarray:
    """The (ndim+1, ndim+1) part of a 4x4 affine that acts on the first ``ndim`` voxel axes.

    A 2D image keeps a 4x4 affine (NIfTI always stores one); only its in-plane 2x2 block and
    translation decide its orientation, which is what MONAI's ``Orientation`` uses too.
    """
    return np.asarray(to_affine_nd(ndim, np.asarray(affine, dtype=np.float64)), dtype=np.float64)


def axcodes_of(affine: np.ndarray, ndim: int = 3) -> tuple[str, ...]:
    """Closest axis codes (e.g. ``('L', 'P', 'S')``) of the first ``ndim`` voxel axes of ``affine``."""
    ornt = nib.orientations.io_orientation(affine_nd(affine, ndim))
    return tuple(nib.orientations.ornt2axcodes(ornt, labels=_AXIS_LABELS))


def _spacing_of(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :ndim], axis=0))


def _corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates (2**ndim, 3) of the corner voxel centres of a grid."""
    ndim = len(shape)
    grid = np.stack(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij"), axis=-1).reshape(-1, ndim)
    idx = np.zeros((grid.shape[0], 4))
    idx[:, :ndim] = grid
    idx[:, 3] = 1.0
    return (idx @ np.asarray(affine).T)[:, :3]


def image_format(path: str | Path) -> str:
    """``"nifti"`` or ``"dicom"``, from the path: a folder is a DICOM series, ``.nii``/``.nii.gz``
    is NIfTI, ``.dcm`` (or any file starting with the DICOM preamble) is a single DICOM image.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageReadError: a file of another format (the message lists the supported ones).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(_DICOM_SUFFIXES):
        return "dicom"
    if pydicom.misc.is_dicom(str(path)):
        return "dicom"
    raise ImageReadError(
        f"{path}: unsupported image format; expected a NIfTI file (.nii, .nii.gz), a DICOM file "
        f"(.dcm) or a folder holding one DICOM series"
    )


# ---------------------------------------------------------------------------------------------
# DICOM: MONAI's PydicomReader, ordered by position
# ---------------------------------------------------------------------------------------------
def _dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (by the ``DICM`` preamble), sorted by name.

    Other files are ignored (a README, a DICOMDIR-less export's stray notes), except files named
    like slices (``.dcm``, ``.dicom``) that lack the preamble: an empty or truncated slice would
    otherwise vanish silently, and a series missing its first or last slice still looks regular.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    dicoms = [p for p in files if pydicom.misc.is_dicom(str(p))]
    damaged = [p for p in files if p.name.lower().endswith(_DICOM_SUFFIXES) and p not in dicoms]
    if damaged:
        names = ", ".join(f"{p.name} ({p.stat().st_size} bytes)" for p in damaged[:5])
        raise ImageReadError(
            f"{folder}: {len(damaged)} file(s) named like DICOM slices do not start with the DICOM preamble "
            f"(empty, truncated or not DICOM): {names}{' ...' if len(damaged) > 5 else ''}; the series would miss "
            f"those slices: restore them, or remove them if they are not part of the series"
        )
    if not dicoms:
        raise ImageReadError(
            f"{folder}: folder holds no DICOM files ({len(files)} file(s), none starting with the DICOM "
            f"preamble 'DICM'); give the folder of one DICOM series"
        )
    return dicoms


def _slice_normal(ds: Any, filename: str) -> np.ndarray:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        raise ImageReadError(f"{filename}: DICOM slice has no valid ImageOrientationPatient (0020,0037)")
    row, col = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:], dtype=np.float64)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ImageReadError(f"{filename}: ImageOrientationPatient {list(iop)} has parallel row and column directions")
    return normal / norm


def sort_slices_by_position(
    slices: Sequence[tuple[Any, str]],
    folder: str = "",
    gap_tolerance_mm: float = DEFAULT_SLICE_GAP_TOLERANCE_MM,
) -> tuple[list[tuple[Any, str]], float]:
    """Order the slices of one DICOM series along their normal and check they form a regular grid.

    The position of a slice is its ``ImagePositionPatient`` projected on the slice normal
    (row direction x column direction): the only ordering that is geometric. File names and
    ``InstanceNumber`` are often, but not always, in that order.

    Args:
        slices: (pydicom dataset, file name) pairs.
        folder: the series folder, for messages.
        gap_tolerance_mm: largest allowed deviation of a slice gap from the median gap.

    Returns:
        The pairs in increasing position, and the slice gap (mm).

    Raises:
        ImageReadError: several series, multi-frame files, differing orientation or slice size,
            a slice without position, two slices at the same position, or uneven slice gaps
            (each message names the folder and the offending files or values).
    """
    where = folder or (slices[0][1] if slices else "DICOM series")
    if not slices:
        raise ImageReadError(f"{where}: DICOM series has no slices")
    series = {}
    for ds, name in slices:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append(name)
    if len(series) > 1:
        detail = ", ".join(f"{uid or '<none>'} ({len(names)} files)" for uid, names in series.items())
        raise ImageReadError(
            f"{where}: folder mixes {len(series)} DICOM series: {detail}; put each series in its own folder"
        )
    first_ds, first_name = slices[0]
    normal = _slice_normal(first_ds, first_name)
    iop0 = np.asarray(first_ds.ImageOrientationPatient, dtype=np.float64)
    size0 = (getattr(first_ds, "Rows", None), getattr(first_ds, "Columns", None))
    keyed = []
    for ds, name in slices:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(f"{name}: multi-frame DICOM (NumberOfFrames={ds.NumberOfFrames}) is not supported")
        iop = np.asarray(getattr(ds, "ImageOrientationPatient", [np.nan] * 6), dtype=np.float64)
        if iop.shape != (6,) or not np.allclose(iop, iop0, atol=1e-4):
            raise ImageReadError(
                f"{where}: slices differ in ImageOrientationPatient ({first_name}: {iop0.tolist()}, "
                f"{name}: {iop.tolist()}); not one series"
            )
        size = (getattr(ds, "Rows", None), getattr(ds, "Columns", None))
        if size != size0:
            raise ImageReadError(f"{where}: slices differ in size ({first_name}: {size0}, {name}: {size})")
        ipp = getattr(ds, "ImagePositionPatient", None)
        if ipp is None or len(ipp) != 3:
            raise ImageReadError(f"{name}: DICOM slice has no ImagePositionPatient (0020,0032); cannot order the series")
        keyed.append((float(np.dot(np.asarray(ipp, dtype=np.float64), normal)), ds, name))
    keyed.sort(key=lambda k: k[0])
    positions = np.array([k[0] for k in keyed])
    gap = 0.0
    if len(keyed) > 1:
        gaps = np.diff(positions)
        dup = np.flatnonzero(gaps < gap_tolerance_mm)
        if dup.size:
            i = int(dup[0])
            raise ImageReadError(
                f"{where}: {dup.size} pair(s) of slices share a position, e.g. {keyed[i][2]} and "
                f"{keyed[i + 1][2]} at {positions[i]:.3f} mm; duplicated slices or several series"
            )
        gap = float(np.median(gaps))
        off = np.abs(gaps - gap)
        if off.max() > gap_tolerance_mm:
            raise ImageReadError(
                f"{where}: uneven slice gaps (median {gap:.4f} mm, range {gaps.min():.4f}-{gaps.max():.4f} mm); "
                f"missing slices? A regular grid cannot represent this series"
            )
    return [(ds, name) for _, ds, name in keyed], gap


class PositionSortedPydicomReader(PydicomReader):
    """MONAI ``PydicomReader`` that orders a series by slice position, not ``InstanceNumber``.

    It also lists the folder itself (regular files with the DICOM preamble only, so a
    sub-folder or a stray text file does not break reading), refuses mixed or irregular series
    instead of warning, and gives a single slice a proper third axis (the slice normal times
    ``SliceThickness``) where MONAI would use a fixed (0, 0, 1).

    Args:
        gap_tolerance_mm: see :func:`sort_slices_by_position`.
        kwargs: passed to ``PydicomReader``.
    """

    def __init__(self, gap_tolerance_mm: float = DEFAULT_SLICE_GAP_TOLERANCE_MM, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gap_tolerance_mm = float(gap_tolerance_mm)
        self._folder = ""

    def read(self, data, **kwargs):
        names = [data] if isinstance(data, (str, Path)) else list(data)
        if len(names) == 1 and Path(names[0]).is_dir():
            folder = Path(names[0])
            self._folder = str(folder)
            files = _dicom_files(folder)
            kwargs_ = {**self.kwargs, **kwargs}
            datasets = [pydicom.dcmread(str(f), **kwargs_) for f in files]
            self.has_series = len(datasets) > 1
            self.filenames = [[str(f) for f in files]] if self.has_series else [str(files[0])]
            return datasets if self.has_series else datasets[0]
        self._folder = ""
        return super().read(data, **kwargs)

    def _combine_dicom_series(self, data, filenames):
        ordered, gap = sort_slices_by_position(
            list(zip(data, filenames)), folder=self._folder, gap_tolerance_mm=self.gap_tolerance_mm
        )
        arrays = [self._get_array_data(ds, name) for ds, name in ordered]
        first, last = ordered[0][0], ordered[-1][0]
        spacing = [float(v) for v in getattr(first, "PixelSpacing", [1.0, 1.0])]
        metadata = self._get_meta_dict(first)
        metadata["spacing"] = np.asarray(spacing + [gap])
        # MONAI's _get_affine builds the slice axis from the first and last positions.
        metadata["lastImagePositionPatient"] = np.asarray(last.ImagePositionPatient, dtype=np.float64)
        metadata[MetaKeys.SPATIAL_SHAPE] = tuple(arrays[0].shape) + (len(arrays),)
        return np.stack(arrays, axis=-1), metadata

    def _get_meta_dict(self, img) -> dict:
        metadata = super()._get_meta_dict(img)
        # pruned metadata drops SliceThickness, which a single slice needs for its third axis
        if "00180050" not in metadata and getattr(img, "SliceThickness", None):
            metadata["00180050"] = {"vr": "DS", "Value": [float(img.SliceThickness)]}
        return metadata

    def _get_affine(self, metadata, lps_to_ras=True):
        affine = super()._get_affine(metadata, lps_to_ras)
        if "lastImagePositionPatient" not in metadata and "00200037" in metadata:
            # single slice: third axis = slice normal x thickness (MONAI puts a fixed (0,0,1),
            # which is degenerate for sagittal or coronal slices).
            iop = np.asarray(metadata["00200037"]["Value"], dtype=np.float64)
            normal = np.cross(iop[:3], iop[3:])
            thickness = metadata.get("00180050", {}).get("Value", [1.0])[0]
            column = normal * float(thickness or 1.0)
            if lps_to_ras:
                column[:2] *= -1.0
            affine[:3, 2] = column
        return affine

#: Voxel types an image may hold: numbers (bool, integers, floats). RGB NIfTI (a structured type),
#: complex values and strings are refused rather than cast (a cast would drop channels or phases).
_NUMERIC_KINDS = "biuf"


def _check_voxel_dtype(array: np.ndarray, path: str) -> None:
    """Raise :class:`ImageReadError` for voxels that are not plain numbers, or an empty voxel grid."""
    if array.dtype.kind not in _NUMERIC_KINDS:
        what = {"V": "structured (e.g. RGB) voxels", "c": "complex voxels"}.get(array.dtype.kind, "non-numeric voxels")
        raise ImageReadError(
            f"{path}: holds {what} of type {array.dtype}; the kit reads grey-value images and integer masks only "
            f"(convert the file to one real-valued channel first)"
        )
    if array.size == 0:
        raise ImageReadError(f"{path}: the image has no voxels (shape {tuple(array.shape)})")


def _check_gzip_complete(path: Path, header: Any) -> None:
    """Raise unless a ``.nii.gz`` file holds a complete gzip stream.

    nibabel decompresses only the bytes the voxels need, so a file cut inside the last few bytes
    of its stream (the deflate end marker and the gzip trailer with its CRC and size) still reads
    without error. The trailer's size field is compared with the size the header implies (one
    4-byte read); only when they differ (a truncated file, or a multi-member or padded gzip file)
    is the whole stream decompressed, which verifies it.

    Raises:
        ImageReadError: the gzip stream is truncated or corrupt (the message names the file).
    """
    if not path.name.lower().endswith(".gz"):
        return
    try:
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(
            header.get_data_dtype().itemsize)
    except Exception:  # a header nibabel accepted but cannot size: let the full check decide
        expected = -1
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() >= 18 and expected >= 0:  # 10-byte gzip header + 8-byte trailer at least
            fh.seek(-4, 2)
            if int.from_bytes(fh.read(4), "little") == expected % (1 << 32):
                return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as err:
        raise ImageReadError(
            f"{path}: the gzip stream is truncated or corrupt ({type(err).__name__}: {err}); the file was not "
            f"completely written or copied"
        ) from err


class KitImageReader(ImageReader):
    """The MONAI ``ImageReader`` the kit reads every image with (build it with :func:`image_reader`).

    It picks MONAI's ``NibabelReader`` for ``.nii``/``.nii.gz`` files and
    :class:`PositionSortedPydicomReader` for a DICOM folder or file (see :func:`image_format`),
    and turns any library exception into an :class:`ImageReadError` that names the path, with
    the library's exception chained as its cause.

    Args:
        gap_tolerance_mm: passed to the DICOM reader.
    """

    def __init__(self, gap_tolerance_mm: float = DEFAULT_SLICE_GAP_TOLERANCE_MM) -> None:
        super().__init__()
        self._nifti = NibabelReader()
        self._dicom = PositionSortedPydicomReader(gap_tolerance_mm=gap_tolerance_mm)
        self._active: ImageReader | None = None
        self._path = ""
        self._kind = ""

    def verify_suffix(self, filename) -> bool:
        names = ensure_tuple(filename)
        try:
            return len(names) == 1 and image_format(names[0]) in ("nifti", "dicom")
        except (FileNotFoundError, ImageReadError):
            return False

    def read(self, data, **kwargs):
        names = ensure_tuple(data)
        if len(names) != 1:
            raise ImageReadError(f"{list(names)}: the kit's reader reads one image per call, got {len(names)} paths")
        path = Path(names[0])
        fmt = image_format(path)
        self._active = self._nifti if fmt == "nifti" else self._dicom
        self._path, self._kind = str(path), "NIfTI" if fmt == "nifti" else "DICOM"
        return self._wrap(self._active.read, str(path), **kwargs)

    def get_data(self, img):
        if self._active is None:
            raise RuntimeError("get_data called before read")
        if self._active is self._nifti:
            for one in img if isinstance(img, (list, tuple)) else [img]:
                self._wrap(_check_gzip_complete, Path(self._path), one.header)
        array, meta = self._wrap(self._active.get_data, img)
        _check_voxel_dtype(np.asarray(array), self._path)
        return array, meta

    def _wrap(self, fn, *args, **kwargs):
        try:
            with quiet_monai_readers():
                return fn(*args, **kwargs)
        except (ImageReadError, FileNotFoundError):
            raise
        except Exception as err:  # nibabel/pydicom/gzip errors: name the file, keep the cause
            raise ImageReadError(
                f"{self._path}: cannot read as {self._kind}: {type(err).__name__}: {err}"
            ) from err


def image_reader(gap_tolerance_mm: float = DEFAULT_SLICE_GAP_TOLERANCE_MM) -> KitImageReader:
    """A fresh :class:`KitImageReader` (MONAI readers keep per-read state: one per loader).

    ``load_image`` and :func:`mosmoskit.data.transforms.load_transforms` both use it, so a
    volume loaded either way is the same array.

    Args:
        gap_tolerance_mm: passed to the DICOM reader.
    """
    return KitImageReader(gap_tolerance_mm=gap_tolerance_mm)


@contextlib.contextmanager
def quiet_monai_readers():
    """Silence MONAI's note that no GPU DICOM decoder (nvImageCodec) is installed.

    MONAI builds every default reader whenever a ``LoadImage`` is made, and its nvImageCodec
    reader says, on every CPU machine, that it falls back to pydicom, which is what we want.
    """
    logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def _loader():
    with quiet_monai_readers():
        return LoadImage(image_only=True, dtype=None, ensure_channel_first=False)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _read_raw(path: Path, channel: int | None):
    """Read ``path`` with MONAI and return (MetaTensor without channel axis, spatial shape).

    Extra non-spatial axes (4D NIfTI, RGB DICOM) must be selected with ``channel``; trailing
    singleton axes are dropped.
    """
    try:
        img = _loader()(str(path), reader=image_reader())
    except (ImageReadError, FileNotFoundError):
        raise
    except Exception as err:  # MONAI turning the voxels into a tensor: name the file, keep the cause
        raise ImageReadError(f"{path}: cannot read as an image: {type(err).__name__}: {err}") from err
    spatial = tuple(int(s) for s in np.asarray(img.meta["spatial_shape"]).ravel())
    extra = tuple(img.shape[len(spatial):])
    if tuple(img.shape[: len(spatial)]) != spatial:
        raise ImageReadError(f"{path}: array shape {tuple(img.shape)} does not start with spatial shape {spatial}")
    # squeeze trailing singleton axes ((X, Y, Z, 1) is a 3D volume written as 4D)
    while extra and extra[-1] == 1:
        img = img[..., 0]
        extra = extra[:-1]
    non_single = [e for e in extra if e != 1]
    if len(non_single) > 1:
        raise ImageReadError(f"{path}: image has shape {tuple(img.shape)}: more than one non-spatial axis is not supported")
    if non_single:
        n = non_single[0]
        img = img.reshape(*spatial, n)
        if channel is None:
            raise ImageReadError(
                f"{path}: {len(spatial) + 1}D image of shape {tuple(img.shape)} holds {n} volumes where one "
                f"{len(spatial)}D image was expected; pass channel=k (0..{n - 1}) to select one"
            )
        if not 0 <= int(channel) < n:
            raise ValueError(f"{path}: channel={channel} is out of range; the file holds {n} volumes (0..{n - 1})")
        img = img[..., int(channel)]
    elif channel not in (None, 0):
        raise ValueError(f"{path}: channel={channel} given but the file holds a single volume")
    if len(spatial) not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2D or 3D image, got spatial shape {spatial}")
    return img, spatial


def _to_canonical(img, spatial: tuple[int, ...], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient with MONAI; returns (array, canonical affine, original affine), all numpy."""
    original_affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(original_affine)) or abs(np.linalg.det(affine_nd(original_affine, len(spatial))[:-1, :-1])) < _SINGULAR_DET:
        raise ImageReadError(f"{path}: affine is singular or not finite, cannot orient the image:\n{original_affine}")
    orient = Orientation(axcodes="".join(CANONICAL_AXCODES[: len(spatial)]), labels=_AXIS_LABELS)
    try:
        out = orient(img[None])
    except Exception as err:  # an affine MONAI cannot turn into axis codes
        raise ImageReadError(
            f"{path}: cannot reorient the image to RAS from its affine ({type(err).__name__}: {err}):\n{original_affine}"
        ) from err
    array = out[0].detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out[0])
    return array, np.asarray(out.affine, dtype=np.float64), original_affine


def load_image(path: str | Path, channel: int | None = None) -> Volume:
    """Read an image (NIfTI file, DICOM series folder or single DICOM file) in RAS orientation.

    DICOM pixel values are rescaled (``RescaleSlope``/``RescaleIntercept``, so CT is in HU) and a
    series is ordered by slice position. The array is float32.

    Args:
        path: ``.nii``/``.nii.gz`` file, folder of one DICOM series, or a ``.dcm`` file.
        channel: for a file holding several volumes (4D NIfTI, shape (X, Y, Z, C)), which one to
            read; ``None`` refuses such files.

    Returns:
        A :class:`Volume` with ``array`` of shape (X, Y, Z) (or (X, Y) for 2D) in RAS.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: (a ``ValueError``) the file is not a readable image, a DICOM folder is
            empty or irregular, the image holds several volumes and ``channel`` is not given, or
            it holds NaN/infinite values (the message gives their count).
    """
    path = Path(path)
    img, spatial = _read_raw(path, channel)
    array, affine, original_affine = _to_canonical(img, spatial, path)
    array = array.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(array)))
        raise ImageReadError(
            f"{path}: {bad} of {array.size} voxels are not finite ({n_nan} NaN, {bad - n_nan} infinite); "
            f"fix or mask the file before using it"
        )
    ndim = len(spatial)
    return Volume(
        array=np.ascontiguousarray(array),
        affine=affine,
        original_affine=original_affine,
        original_shape=spatial,
        spacing=_spacing_of(affine, ndim),
        axcodes_original=axcodes_of(original_affine, ndim),
        source=str(path),
    )


def _label_dtype(label_map: LabelMap) -> np.dtype:
    """Smallest integer type for a map's ids: decided by the map, not the data, so it is stable."""
    n = label_map.num_classes
    return np.dtype(np.uint8) if n <= 256 else np.dtype(np.int16) if n <= 32768 else np.dtype(np.int32)


def check_aligned(
    volume: Volume, reference: Volume, tolerance_mm: float = DEFAULT_ALIGN_TOLERANCE_MM
) -> None:
    """Raise unless two volumes share one voxel grid: same shape, and every corner voxel centre
    within ``tolerance_mm`` of its counterpart (equivalent to same spacing, origin and axes).

    Raises:
        ValueError: naming both files and every difference: shapes, spacing, origin, axis codes as
            stored, and the largest corner distance.
    """
    same_shape = volume.shape == reference.shape
    dist = float("inf")
    if same_shape:
        dist = float(np.max(np.linalg.norm(_corners(volume.affine, volume.shape) - _corners(reference.affine, reference.shape), axis=1)))
    if same_shape and dist <= tolerance_mm:
        return
    rows = [
        ("shape (RAS)", volume.shape, reference.shape),
        ("shape as stored", volume.original_shape, reference.original_shape),
        ("spacing (mm)", tuple(round(s, 4) for s in volume.spacing), tuple(round(s, 4) for s in reference.spacing)),
        ("origin (mm, RAS)", tuple(round(o, 3) for o in volume.origin), tuple(round(o, 3) for o in reference.origin)),
        ("axis codes as stored", "".join(volume.axcodes_original), "".join(reference.axcodes_original)),
    ]
    lines = [f"  {name}: {a} vs {b}{'' if a == b else '   <- differs'}" for name, a, b in rows]
    if same_shape:
        lines.append(f"  largest distance between corresponding corner voxels: {dist:.4f} mm (tolerance {tolerance_mm} mm)")
    raise ValueError(
        f"{volume.source} does not line up with {reference.source} after both are put in RAS orientation:\n"
        + "\n".join(lines)
        + "\n  (resample the mask onto the image grid, or check that the pair belongs together)"
    )


def load_label(
    path: str | Path,
    label_map: LabelMap,
    reference: Volume | None = None,
    raw: bool | None = None,
    tolerance_mm: float = DEFAULT_ALIGN_TOLERANCE_MM,
) -> Volume:
    """Read a label mask in RAS orientation, check its values and (optionally) its grid.

    Args:
        path: NIfTI file (or DICOM, rarely) holding integer labels.
        label_map: the map the values must belong to.
        reference: the image the mask belongs to; if given, the mask must lie on the same grid
            (shape, and affine within ``tolerance_mm``) once both are in RAS.
        raw: whether the file stores the data set's raw values (MMWHS 205/420/..., BraTS 0/1/2/4),
            converted to consecutive ids with :meth:`LabelMap.from_raw`. ``None``: yes exactly when
            the map has ``raw_values``.
        tolerance_mm: see :func:`check_aligned`.

    Returns:
        A :class:`Volume` whose ``array`` holds ids of ``label_map`` (uint8 for maps of at most
        256 classes).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, a 4D file, non-integer/NaN values or values not in the map
            (message names the file and the values), or a grid that differs from ``reference``.
    """
    path = Path(path)
    img, spatial = _read_raw(path, channel=None)
    array, affine, original_affine = _to_canonical(img, spatial, path)
    use_raw = label_map.raw_values is not None if raw is None else bool(raw)
    if use_raw:
        ids = label_map.from_raw(array, source=str(path))
    else:
        label_map.check_mask(array, source=str(path))
        ids = array
    ndim = len(spatial)
    volume = Volume(
        array=np.ascontiguousarray(np.asarray(ids).astype(_label_dtype(label_map))),
        affine=affine,
        original_affine=original_affine,
        original_shape=spatial,
        spacing=_spacing_of(affine, ndim),
        axcodes_original=axcodes_of(original_affine, ndim),
        source=str(path),
    )
    if reference is not None:
        check_aligned(volume, reference, tolerance_mm=tolerance_mm)
    return volume


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _file_dtype(array: np.ndarray, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return np.dtype(np.float32)
    if array.dtype == np.int64:
        return np.dtype(np.int32)  # many NIfTI tools cannot read int64
    return array.dtype


def save_like(
    array: Any,
    reference: Volume,
    path: str | Path,
    dtype: Any = None,
    overwrite: bool = True,
) -> Path:
    """Write an array that lives on ``reference``'s canonical grid back in the reference's own
    orientation, shape and affine, as NIfTI (atomically).

    This is the inverse of the reorientation done on load, so a prediction made on
    ``load_image(p).array`` opens in any viewer on top of the original file ``p``.

    Args:
        array: shape ``reference.shape`` (X, Y, Z), or (C, X, Y, Z) channel-first (written as a 4D
            NIfTI with the channel last, the NIfTI convention). Numpy array or tensor.
        reference: the :class:`Volume` whose grid ``array`` is on.
        path: output ``.nii`` or ``.nii.gz``.
        dtype: data type stored in the file. ``None``: the array's own, with bool -> uint8,
            float64 -> float32, int64 -> int32.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: wrong shape, wrong suffix, non-finite values for an integer dtype, or values
            that the integer dtype cannot hold exactly (fractions, out of range).
    """
    path = Path(path)
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"{path}: save_like writes NIfTI; the file name must end with .nii or .nii.gz")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    nd = reference.ndim
    if arr.shape == reference.shape:
        channels = None
    elif arr.ndim == nd + 1 and arr.shape[1:] == reference.shape:
        channels = arr.shape[0]
    else:
        raise ValueError(
            f"{path}: array of shape {arr.shape} is not on the grid of {reference.source}: expected "
            f"{reference.shape} or (C, *{reference.shape})"
        )
    out_dtype = _file_dtype(arr, dtype)
    if out_dtype.kind in "iu" and arr.dtype.kind in "fc":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: array holds NaN/inf, which {out_dtype} cannot store")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{path}: array holds fractional values, which {out_dtype} would truncate; round it first")
    if out_dtype.kind in "iu" and arr.size:
        info = np.iinfo(out_dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{path}: values {lo}..{hi} do not fit in {out_dtype} ({info.min}..{info.max})")

    ornt_original = nib.orientations.io_orientation(affine_nd(reference.original_affine, nd))
    ornt_canonical = nib.orientations.axcodes2ornt(CANONICAL_AXCODES[:nd], labels=_AXIS_LABELS)
    transform = nib.orientations.ornt_transform(ornt_canonical, ornt_original)
    # Guard: undoing the transform must land exactly on the stored affine, or we would write a
    # file that silently disagrees with its reference.
    back = affine_nd(reference.affine, nd) @ nib.orientations.inv_ornt_aff(transform, reference.shape)
    if not np.allclose(back, affine_nd(reference.original_affine, nd), atol=1e-4):
        raise ValueError(
            f"{reference.source}: canonical and original affines are inconsistent; cannot invert the "
            f"reorientation (got\n{back}\nexpected\n{affine_nd(reference.original_affine, nd)})"
        )
    if channels is None:
        data = nib.orientations.apply_orientation(arr, transform)
    else:
        data = np.stack([nib.orientations.apply_orientation(c, transform) for c in arr], axis=-1)
    data = np.ascontiguousarray(data).astype(out_dtype, copy=False)
    if tuple(data.shape[:nd]) != reference.original_shape:
        raise ValueError(f"{path}: internal error, reoriented shape {data.shape} != stored {reference.original_shape}")
    image = nib.Nifti1Image(data, reference.original_affine)
    image.header.set_data_dtype(out_dtype)
    image.header.set_xyzt_units("mm")
    image.set_qform(reference.original_affine, code=1)
    image.set_sform(reference.original_affine, code=1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(image, str(tmp))
    return path
