"""Converters for the public abdominal benchmarks BTCV and AMOS into the MSD layout the kit reads.

Both write a plain MSD folder (``imagesTr/``, ``labelsTr/``, ``dataset.json``) whose ``labels``
are the kit's ``btcv`` or ``amos`` label map, so :func:`mosmoskit.data.datalists.load_dataset`
and fine-tuning (``FinetuneConfig.dataset``) take the folder as it is. Files are copied, not
linked (the kit refuses paths that resolve outside a data folder), each one written atomically,
and ``dataset.json`` is written last: a conversion that stops half-way leaves no folder that looks
finished. Every mask is read once to check its values before anything is written.

:func:`slice_volumes` turns such a 3D folder into axial 2D slices for the 2D U-Net, which reads
2D images only.

Example:
    >>> from mosmoskit.data.public import convert_btcv, convert_amos   # doctest: +SKIP
    >>> convert_btcv("downloads/RawData", "data/btcv")                  # doctest: +SKIP
    >>> convert_amos("downloads/amos22", "data/amos_ct")                # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mosmoskit.io import atomic_path, atomic_write_text, ensure_new_dir
from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["AMOS_CT_MAX_CASE", "convert_amos", "convert_btcv", "slice_volumes"]

#: AMOS numbers its CT scans 1..500 and its MRI scans above 500 (the rule nnU-Net's
#: ``Dataset218_Amos2022_task1`` conversion uses to keep CT only).
AMOS_CT_MAX_CASE = 500
_AMOS_SECTIONS = ("training", "validation")
_AMOS_NUMBER = re.compile(r"amos_(\d+)")
_BTCV_NUMBER = re.compile(r"^(?:img|label)(\d+)\.nii(?:\.gz)?$")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``out_dir`` unless ``overwrite`` (then files are replaced one by one)."""
    out = Path(out_dir).expanduser()
    if out.exists() and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir {out} is not empty; choose an empty folder or pass overwrite=True")
    return ensure_new_dir(out, overwrite=True)


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (a killed copy leaves no half file under ``dst``'s name)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _mask_values(path: Path) -> list[int]:
    """The distinct values of a NIfTI mask (reads the voxels once)."""
    import nibabel as nib

    from mosmoskit.labels import _unique_values

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises many types for a broken file
        raise ValueError(f"{path}: cannot read the mask ({type(err).__name__}: {err})") from err
    return _unique_values(data, str(path))


def _nifti_name(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def _labels_json(label_map: LabelMap) -> dict[str, str]:
    """MSD's ``labels`` (id -> name) of a label map."""
    return {str(i): name for name, i in label_map.labels.items()}


# ---------------------------------------------------------------------------------------------
# BTCV
# ---------------------------------------------------------------------------------------------
def convert_btcv(raw_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert the BTCV abdomen download (Synapse ``RawData``) into an MSD folder.

    Input (``RawData.zip`` of Synapse project syn3193805 unpacked; case numbers are not
    consecutive)::

        raw_dir/                         the RawData folder (or its Training folder)
          Training/img/img0001.nii.gz    CT in HU
          Training/label/label0001.nii.gz  masks with the ids of the kit's ``btcv`` map (0..13)

    Output::

        out_dir/
          imagesTr/img0001.nii.gz        copies of the images
          labelsTr/label0001.nii.gz      copies of the masks
          dataset.json                   {"name": "BTCV", "labels": {"0": "background", "1": "spleen",
                                          ...}, "label_map": "btcv", "training": [{"image":
                                          "./imagesTr/img0001.nii.gz", "label": "./labelsTr/..."}]}

    Args:
        raw_dir: the ``RawData`` folder, or its ``Training`` folder.
        out_dir: the MSD folder to write; must be empty or absent unless ``overwrite``.
        overwrite: write into a non-empty ``out_dir`` (files of the same name are replaced).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no ``Training/img`` and ``Training/label`` folders under ``raw_dir``.
        ValueError: no cases, an image without its label or a label without its image (the
            message names the file), or a mask holding values that are not ``btcv`` ids (the
            message names the file and the values). Nothing is written in these cases.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    raw = Path(raw_dir).expanduser()
    training = raw / "Training" if (raw / "Training").is_dir() else raw
    img_dir, label_dir = training / "img", training / "label"
    if not img_dir.is_dir() or not label_dir.is_dir():
        raise FileNotFoundError(
            f"raw_dir {raw}: expected the BTCV RawData layout with Training/img/ and Training/label/ "
            f"(img0001.nii.gz, label0001.nii.gz, ...), but {img_dir} or {label_dir} is not a folder"
        )
    images = {m.group(1): p for p in sorted(img_dir.iterdir()) if (m := _BTCV_NUMBER.match(p.name))
              and p.name.startswith("img")}
    labels = {m.group(1): p for p in sorted(label_dir.iterdir()) if (m := _BTCV_NUMBER.match(p.name))
              and p.name.startswith("label")}
    if not images and not labels:
        raise ValueError(f"raw_dir {raw}: no cases: {img_dir} holds no imgNNNN.nii.gz files")
    for number, image in images.items():
        if number not in labels:
            raise ValueError(f"{image}: image without label: {label_dir / f'label{number}.nii.gz'} does not exist")
    for number, label in labels.items():
        if number not in images:
            raise ValueError(f"{label}: label without image: {img_dir / f'img{number}.nii.gz'} does not exist")
    btcv = load_label_map("btcv")
    for number in images:
        # check_mask raises naming the file and the unexpected values
        btcv.check_mask(np.asarray(_mask_values(labels[number])), source=str(labels[number]))

    out = _prepare_out_dir(out_dir, overwrite)
    entries = []
    for number in sorted(images):
        image, label = images[number], labels[number]
        image_name, label_name = f"img{number}.nii.gz", f"label{number}.nii.gz"
        _copy(image, out / "imagesTr" / image_name)
        _copy(label, out / "labelsTr" / label_name)
        entries.append({"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{label_name}"})
    dataset = {
        "name": "BTCV",
        "description": "Multi-Atlas Labeling Beyond the Cranial Vault, abdomen (Synapse syn3193805), "
                       "converted by mosmoskit.data.public.convert_btcv",
        "modality": {"0": "CT"},
        "labels": _labels_json(btcv),
        "label_map": "btcv",
        "numTraining": len(entries),
        "training": entries,
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# AMOS
# ---------------------------------------------------------------------------------------------
def _amos_number(image: str, source: Path) -> int:
    match = _AMOS_NUMBER.search(Path(image).name)
    if not match:
        raise ValueError(f"{source}: image {image!r} is not named amos_NNNN.nii.gz; cannot tell CT from MRI")
    return int(match.group(1))


def convert_amos(
    amos_dir: str | Path,
    out_dir: str | Path,
    modality: str = "ct",
    sections: Sequence[str] = _AMOS_SECTIONS,
    overwrite: bool = False,
) -> Path:
    """Convert the AMOS 2022 release (amos22) into an MSD folder of one modality.

    Input (the Zenodo release, record 7262581, unpacked)::

        amos_dir/
          dataset.json        labels {"0": "background", "1": "spleen", "2": "right kidney", ...,
                              "8": "arota", "9": "postcava", ...}; sections "training",
                              "validation" (image + label) and "test" (images only)
          imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz
          imagesVa/amos_0008.nii.gz   labelsVa/amos_0008.nii.gz
          imagesTs/...                (not used: no public masks)

    CT scans are the cases numbered up to :data:`AMOS_CT_MAX_CASE` (500), MRI scans those above
    (the rule of nnU-Net's ``Dataset218_Amos2022_task1``). Masks are moved from the release's
    label names onto the kit's ``amos`` map *by name* (``"right kidney"`` -> ``right_kidney``,
    ``"arota"`` -> ``aorta``); today that is the identity on the ids, in which case the masks
    are copied unchanged, otherwise rewritten as uint8 with the original affine.

    Output::

        out_dir/
          imagesTr/amos_0001.nii.gz ...   the chosen cases of every chosen section
          labelsTr/amos_0001.nii.gz ...
          dataset.json                    labels of the ``amos`` map; "training" lists every kept
                                          case (each entry's "amos_section" says where it came from)

    Args:
        amos_dir: the amos22 folder holding the release's ``dataset.json``.
        out_dir: the MSD folder to write; must be empty or absent unless ``overwrite``.
        modality: ``"ct"`` (cases <= 500) or ``"mr"`` (cases > 500; the kit has no MR intensity
            normalisation yet, so fine-tuning on them needs one of your own).
        sections: the release's labelled sections to keep, a subset of ``("training",
            "validation")``; the kit cuts its own test split from the output's ``training``.
        overwrite: write into a non-empty ``out_dir`` (files of the same name are replaced).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no ``dataset.json`` in ``amos_dir``, or a file it lists is missing.
        ValueError: an unknown ``modality`` or section, a section the release does not have, an
            entry without a label or not named ``amos_NNNN``, a release label name the ``amos``
            map does not know, a mask value outside the release's labels (naming the file), or
            no case of the chosen modality. Nothing is written in these cases.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    import nibabel as nib

    from mosmoskit.data.datalists import _json_labels

    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    if isinstance(sections, str):
        sections = (sections,)
    unknown = [s for s in sections if s not in _AMOS_SECTIONS]
    if unknown or not sections:
        raise ValueError(f"sections must be a non-empty subset of {list(_AMOS_SECTIONS)} (the labelled ones), "
                         f"got {list(sections)}")
    root = Path(amos_dir).expanduser()
    source = root / "dataset.json"
    if not source.is_file():
        raise FileNotFoundError(f"amos_dir {root}: no dataset.json (expected the amos22 release folder)")
    try:
        release = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err})") from err
    # the release's own names (spaces, 'arota', 'prostate/uterus') as a label map, then by name onto ours
    names = _json_labels(release.get("labels"), source)
    release_map = LabelMap(name="amos22", labels={n: i for i, n in names.items()}, source=str(source))
    amos = load_label_map("amos")
    remap = release_map.remap_to(amos)  # raises naming every release label without a counterpart
    identity = bool(np.array_equal(remap.table, np.arange(len(remap.table))))

    chosen: list[tuple[str, Path, Path]] = []
    for section in sections:
        rows = release.get(section)
        if not isinstance(rows, list):
            raise ValueError(f"{source}: no section {section!r}; it has {[k for k, v in release.items() if isinstance(v, list)]}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "image" not in row or "label" not in row:
                raise ValueError(f"{source}: {section}[{i}] needs 'image' and 'label', got {row!r}")
            number = _amos_number(row["image"], source)
            if (number <= AMOS_CT_MAX_CASE) != (modality == "ct"):
                continue
            image, label = (root / row["image"]).resolve(), (root / row["label"]).resolve()
            for path in (image, label):
                if not path.is_file():
                    raise FileNotFoundError(f"{source}: {section}[{i}] lists {path}, which does not exist")
            chosen.append((section, image, label))
    if not chosen:
        raise ValueError(f"{source}: no {modality.upper()} case in sections {list(sections)} "
                         f"(CT = case numbers up to {AMOS_CT_MAX_CASE})")
    names_out = [image.name for _, image, _ in chosen]
    duplicates = sorted({n for n in names_out if names_out.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: the sections list the same file name twice: {duplicates}")
    for _, _, label in chosen:
        release_map.check_mask(np.asarray(_mask_values(label)), source=str(label))

    out = _prepare_out_dir(out_dir, overwrite)
    entries = []
    for section, image, label in chosen:
        name = image.name
        _copy(image, out / "imagesTr" / name)
        if identity:
            _copy(label, out / "labelsTr" / name)
        else:
            mask = nib.load(str(label))
            ids = remap(np.asanyarray(mask.dataobj)).astype(np.uint8)
            remapped = nib.Nifti1Image(ids, mask.affine, mask.header)
            remapped.set_data_dtype(np.uint8)
            with atomic_path(out / "labelsTr" / name) as tmp:
                nib.save(remapped, str(tmp))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}", "amos_section": section})
    dataset = {
        "name": f"AMOS2022_{modality.upper()}",
        "description": f"AMOS 2022 (amos22), {modality.upper()} cases of sections {list(sections)}, converted by "
                       f"mosmoskit.data.public.convert_amos",
        "modality": {"0": modality.upper()},
        "labels": _labels_json(amos),
        "label_map": "amos",
        "numTraining": len(entries),
        "training": entries,
    }
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# 3D -> axial 2D slices
# ---------------------------------------------------------------------------------------------
def _even_picks(indices: Sequence[int], n: int) -> list[int]:
    """``n`` indices spread evenly over ``indices`` (all of them when there are fewer)."""
    if len(indices) <= n:
        return list(indices)
    positions = np.linspace(0, len(indices) - 1, n)
    return sorted({int(indices[int(round(p))]) for p in positions})


def _resample_plane(plane: np.ndarray, factors: tuple[float, float], order: int) -> np.ndarray:
    """Resample a 2D plane by ``factors`` (old spacing / new spacing) on a grid anchored at voxel 0.

    Output voxel ``i`` samples input coordinate ``i / factor``, so the affine's origin stays and
    its columns are divided by the factors (``scipy.ndimage.zoom`` would stretch the grid to align
    the corners, which changes the spacing slightly).
    """
    from scipy import ndimage

    if factors == (1.0, 1.0):
        return plane
    shape = tuple(max(1, int(round(n * f))) for n, f in zip(plane.shape, factors))
    return ndimage.affine_transform(plane, [1.0 / factors[0], 1.0 / factors[1]], output_shape=shape,
                                    order=order, mode="nearest")


def slice_volumes(
    msd_dir: str | Path,
    out_dir: str | Path,
    slices_per_case: int = 16,
    spacing: Sequence[float] | None = (1.5, 1.5),
    overwrite: bool = False,
) -> Path:
    """Write axial 2D slices of a 3D MSD folder, for the 2D U-Net (which reads 2D images only).

    Each volume is brought to RAS orientation; ``slices_per_case`` axial planes are spread
    evenly over the planes that hold foreground in the mask (all planes when the case has no
    mask), optionally resampled in-plane to ``spacing`` (linear for the image, nearest for the
    mask), and written as 2D NIfTIs whose affine keeps the plane's height. Each entry carries
    ``parent_case``, so the kit's splits keep the slices of one patient together.

    Output::

        out_dir/
          imagesTr/<case>_s00.nii.gz ...   2D images (float32, HU)
          labelsTr/<case>_s00.nii.gz ...   2D masks (uint8), same label map as the input
          dataset.json                      the input's labels; "training" entries with parent_case
          reports.jsonl                     only when the input has one: each slice gets its
                                            volume's report (a volume-level report also names
                                            organs outside the slice: see the note in the studies)

    Args:
        msd_dir: a folder with ``dataset.json`` whose ``training`` entries are 3D images.
        out_dir: the folder to write; must be empty or absent unless ``overwrite``.
        slices_per_case: axial planes per volume, >= 1.
        spacing: in-plane voxel size (mm) of the slices, two values; ``None`` keeps each scan's.
        overwrite: write into a non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no ``dataset.json`` in ``msd_dir`` or a listed file missing.
        ValueError: ``slices_per_case < 1``, a ``spacing`` that is not two positive numbers, or
            an image that is not 3D (naming the file).
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    import nibabel as nib

    from mosmoskit.data.datalists import load_dataset

    if isinstance(slices_per_case, bool) or int(slices_per_case) != slices_per_case or slices_per_case < 1:
        raise ValueError(f"slices_per_case must be an integer >= 1, got {slices_per_case!r}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 2 or any(not np.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"spacing must be two positive numbers (mm, in-plane) or None, got {spacing!r}")
    src = Path(msd_dir).expanduser()
    if not (src / "dataset.json").is_file():
        raise FileNotFoundError(f"msd_dir {src}: no dataset.json")
    cases = load_dataset(src)
    source_json = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    out = _prepare_out_dir(out_dir, overwrite)
    entries: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for case in cases.cases:
        image = nib.as_closest_canonical(nib.load(case["image"]))
        if len(image.shape) != 3:
            raise ValueError(f"{case['image']}: expected a 3D image, got shape {tuple(image.shape)}")
        hu = np.asarray(image.dataobj, dtype=np.float32)
        mask = None
        if case.get("label"):
            mask = np.asarray(nib.as_closest_canonical(nib.load(case["label"])).dataobj).astype(np.uint8)
            if mask.shape != hu.shape:
                raise ValueError(f"{case['label']}: mask shape {mask.shape} differs from its image's {hu.shape}")
        planes = list(range(hu.shape[2]))
        if mask is not None and mask.any():
            planes = [int(z) for z in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))]
        own = np.sqrt((image.affine[:3, :2] ** 2).sum(axis=0))
        factors = (1.0, 1.0) if spacing is None else (own[0] / spacing[0], own[1] / spacing[1])
        for k, z in enumerate(_even_picks(planes, int(slices_per_case))):
            affine = image.affine.copy()
            affine[:3, 3] = image.affine[:3, :3] @ np.array([0.0, 0.0, float(z)]) + image.affine[:3, 3]
            affine[:3, 0] /= factors[0]
            affine[:3, 1] /= factors[1]
            name = f"{case['case_id']}_s{k:02d}.nii.gz"
            plane = _resample_plane(hu[:, :, z], factors, order=1)
            with atomic_path(out / "imagesTr" / name) as tmp:
                nib.save(nib.Nifti1Image(plane.astype(np.float32), affine), str(tmp))
            entry: dict[str, Any] = {"image": f"./imagesTr/{name}", "parent_case": case["case_id"]}
            if mask is not None:
                labels = _resample_plane(mask[:, :, z], factors, order=0)
                with atomic_path(out / "labelsTr" / name) as tmp:
                    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(tmp))
                entry["label"] = f"./labelsTr/{name}"
            entries.append(entry)
            if case.get("report"):
                reports.append({"case_id": _nifti_name(Path(name)), "image": entry["image"],
                                "report": case["report"], "parent_case": case["case_id"]})
    dataset = {key: value for key, value in source_json.items() if not isinstance(value, list)}
    dataset.update(name=f"{source_json.get('name', src.name)}_axial_slices", spatial_dims=2,
                   numTraining=len(entries), training=entries)
    if reports:
        atomic_write_text(out / "reports.jsonl", "".join(json.dumps(r) + "\n" for r in reports))
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    return out
