"""Label maps: the one owner of "which integer means which structure".

A label map is data (a JSON file), not code. Every data set the kit knows ships one in
``mosmoskit/labels/maps/``; users point :func:`load_label_map` at their own file. Reports, masks,
model outputs and metrics all use the names of one label map, so the same vocabulary drives all of
them, and moving between data sets goes by *name*, never by id (BTCV and AMOS number the pancreas
differently).

File format (either form is accepted)::

    {"background": 0, "spleen": 1, "kidney_right": 2}            # plain name -> id

    {"name": "mmwhs",                                             # structured
     "labels": {"background": 0, "left_ventricle_myocardium": 1, ...},
     "raw_values": {"background": 0, "left_ventricle_myocardium": 205, ...},   # optional
     "regions": {"WT": ["enhancing_tumor", ...]}}                              # optional

Rules, enforced on load: background is ``0``, ids are consecutive ``0..K``, names are unique.
``raw_values`` describes data sets whose files store other values (MMWHS stores 205/420/...,
BraTS 0/1/2/4); :meth:`LabelMap.from_raw` and :meth:`LabelMap.to_raw` convert both ways.

Example:
    >>> from mosmoskit.labels import load_label_map
    >>> btcv = load_label_map("btcv")
    >>> btcv.names[:3]
    ('background', 'spleen', 'kidney_right')
    >>> amos = load_label_map("amos")
    >>> remap = btcv.remap_to(amos, drop_unmatched=True)
    >>> remap.dropped
    ('portal_vein_and_splenic_vein',)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "LabelMap",
    "LabelRemap",
    "available_label_maps",
    "canonical_name",
    "load_label_map",
]

_MAPS_PACKAGE = "mosmoskit.labels"


def available_label_maps() -> list[str]:
    """Names of the label maps shipped with the kit (``load_label_map`` accepts each)."""
    folder = resources.files(_MAPS_PACKAGE) / "maps"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


@lru_cache(maxsize=1)
def _alias_table() -> dict[str, str]:
    """alias -> canonical name, from ``synonyms.json``."""
    raw = json.loads((resources.files(_MAPS_PACKAGE) / "synonyms.json").read_text())
    table: dict[str, str] = {}
    for canonical, aliases in raw.items():
        if canonical.startswith("_"):
            continue
        for alias in aliases:
            table[_normalise(alias)] = canonical
    return table


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-/]+", "_", name.strip().lower())


def canonical_name(name: str) -> str:
    """The name a structure is matched by across data sets.

    Lower-cases, turns spaces, hyphens and slashes into underscores, then applies the explicit
    synonym table (``postcava`` -> ``inferior_vena_cava``, ``right_kidney`` -> ``kidney_right``).
    Nothing is matched by substring.
    """
    norm = _normalise(name)
    return _alias_table().get(norm, norm)


@dataclass(frozen=True)
class LabelRemap:
    """A lookup table that maps the ids of one label map onto another, built by name.

    Attributes:
        source: name of the label map the ids come from.
        target: name of the label map the ids go to.
        table: int64 array, ``table[source_id] = target_id``.
        dropped: source names sent to background because the target has no such structure.
        unfilled: target names that no source structure maps onto (they can never appear).
    """

    source: str
    target: str
    table: np.ndarray
    dropped: tuple[str, ...]
    unfilled: tuple[str, ...]

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """Apply the remap to an integer mask of source ids (any shape)."""
        arr = np.asarray(array)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.table)):
            raise ValueError(
                f"remap {self.source}->{self.target}: mask holds values outside 0..{len(self.table) - 1} "
                f"(min {arr.min()}, max {arr.max()}); check it with LabelMap.check_mask first"
            )
        return self.table[arr.astype(np.int64, copy=False)]


@dataclass(frozen=True)
class LabelMap:
    """Names and ids of the structures in a segmentation, background first.

    Args:
        name: a short identifier (``"btcv"``), used in messages and checkpoints.
        labels: name -> consecutive id, with ``"background": 0``.
        raw_values: optional name -> value stored in the data set's files, when those differ from
            the consecutive ids (MMWHS, BraTS).
        regions: optional region name -> label names it unites (BraTS ``WT``/``TC``/``ET``).
        description: free text: where the map comes from.
        source: the file it was read from, for messages.

    Raises:
        ValueError: background missing or not 0, ids not consecutive, duplicate ids, raw values not
            one-to-one, or a region naming an unknown label.
    """

    name: str
    labels: Mapping[str, int]
    raw_values: Mapping[str, int] | None = None
    regions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or self.name
        labels = dict(self.labels)
        if labels.get("background") != 0:
            raise ValueError(f"label map {where}: 'background' must exist and be 0, got {labels.get('background')!r}")
        for key, value in labels.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"label map {where}: id of {key!r} must be an integer, got {value!r}")
        ids = sorted(labels.values())
        if ids != list(range(len(ids))):
            raise ValueError(
                f"label map {where}: ids must be consecutive 0..{len(ids) - 1} and unique, got {ids}"
            )
        object.__setattr__(self, "labels", dict(sorted(labels.items(), key=lambda kv: kv[1])))
        if self.raw_values is not None:
            raw = dict(self.raw_values)
            if set(raw) != set(labels):
                raise ValueError(
                    f"label map {where}: raw_values must name exactly the labels; "
                    f"missing {sorted(set(labels) - set(raw))}, extra {sorted(set(raw) - set(labels))}"
                )
            if len(set(raw.values())) != len(raw):
                raise ValueError(f"label map {where}: raw_values are not one-to-one: {raw}")
            object.__setattr__(self, "raw_values", raw)
        regions = {k: tuple(v) for k, v in dict(self.regions).items()}
        for region, members in regions.items():
            unknown = [m for m in members if m not in labels or m == "background"]
            if unknown or not members:
                raise ValueError(f"label map {where}: region {region!r} names unknown labels {unknown}")
        object.__setattr__(self, "regions", regions)

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> tuple[str, ...]:
        """All names ordered by id, background first."""
        return tuple(self.labels)

    @property
    def foreground_names(self) -> tuple[str, ...]:
        """Names without background: the organ tags, in id order."""
        return self.names[1:]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (the segmentation network's output channels)."""
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, name: object) -> bool:
        return name in self.labels

    def id_of(self, name: str) -> int:
        """Id of ``name``; raises ``KeyError`` listing the known names."""
        try:
            return self.labels[name]
        except KeyError:
            raise KeyError(f"label map {self.name!r} has no label {name!r}; known: {list(self.names)}") from None

    def name_of(self, label_id: int) -> str:
        if not 0 <= int(label_id) < len(self.names):
            raise KeyError(f"label map {self.name!r} has no id {label_id}; ids are 0..{len(self.names) - 1}")
        return self.names[int(label_id)]

    def colors(self) -> dict[str, tuple[float, float, float]]:
        """A fixed RGB colour (0..1) per foreground name, for legends and overlays."""
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        return {n: tuple(float(c) for c in cmap(i % 20)[:3]) for i, n in enumerate(self.foreground_names)}

    # ------------------------------------------------------------------ checks
    def check_mask(self, array: Any, source: str = "mask", raw: bool = False) -> tuple[str, ...]:
        """Raise unless every value of ``array`` is an id of this map.

        Args:
            array: integer-valued mask of any shape (numpy array, tensor or anything ``np.asarray``
                takes).
            source: what the mask is (a file path, a case id): it starts the error message.
            raw: check against the values stored on disk (``raw_values``) instead of the ids.

        Returns:
            The names present in the mask, background excluded, in id order.

        Raises:
            ValueError: non-finite or non-integer values, or values that are not in the map; the
                message names ``source``, the unexpected values and the expected ones.
        """
        values = _unique_values(array, source)
        allowed = self._value_to_name(raw)
        unexpected = [v for v in values if v not in allowed]
        if unexpected:
            shown = unexpected[:20] + (["..."] if len(unexpected) > 20 else [])
            kind = "raw values" if raw else "ids"
            expected = sorted(allowed)
            raise ValueError(
                f"{source}: label values {shown} are not in label map {self.name!r} "
                f"(expected {kind} {expected[:40]}{' ...' if len(expected) > 40 else ''})"
            )
        return tuple(allowed[v] for v in values if v != 0)

    def present(self, array: Any, source: str = "mask") -> dict[str, bool]:
        """Foreground name -> whether it has at least one voxel (after :meth:`check_mask`)."""
        found = set(self.check_mask(array, source=source))
        return {n: n in found for n in self.foreground_names}

    def _value_to_name(self, raw: bool) -> dict[int, str]:
        if raw:
            if self.raw_values is None:
                return {v: k for k, v in self.labels.items()}
            return {v: k for k, v in self.raw_values.items()}
        return {v: k for k, v in self.labels.items()}

    # ------------------------------------------------------------------ conversions
    def from_raw(self, array: Any, source: str = "mask") -> np.ndarray:
        """Map values stored on disk (``raw_values``) to consecutive ids (validating first)."""
        arr = np.asarray(array)
        self.check_mask(arr, source=source, raw=True)
        if self.raw_values is None:
            return arr.astype(np.int64, copy=False)
        lut = np.zeros(max(self.raw_values.values()) + 1, dtype=np.int64)
        for name, value in self.raw_values.items():
            lut[value] = self.labels[name]
        return lut[arr.astype(np.int64, copy=False)]

    def to_raw(self, array: Any, source: str = "mask") -> np.ndarray:
        """Inverse of :meth:`from_raw`: consecutive ids to the values the data set's files store."""
        arr = np.asarray(array)
        self.check_mask(arr, source=source)
        if self.raw_values is None:
            return arr.astype(np.int64, copy=False)
        lut = np.array([self.raw_values[n] for n in self.names], dtype=np.int64)
        return lut[arr.astype(np.int64, copy=False)]

    def region_masks(self, array: Any, source: str = "mask") -> dict[str, np.ndarray]:
        """Region name -> boolean mask (BraTS ``ET``/``TC``/``WT``) from a mask of ids."""
        arr = np.asarray(array)
        self.check_mask(arr, source=source)
        return {r: np.isin(arr, [self.labels[m] for m in members]) for r, members in self.regions.items()}

    def remap_to(self, target: LabelMap, drop_unmatched: bool = False) -> LabelRemap:
        """Build the id lookup table that moves masks of this map onto ``target``, by name.

        Names are compared through :func:`canonical_name` (explicit synonyms such as
        ``postcava``/``inferior_vena_cava``), never by substring or id.

        Args:
            target: the label map the ids should end in.
            drop_unmatched: send structures that ``target`` does not have to background instead of
                raising (needed from TotalSegmentator's 117 structures to BTCV's 13).

        Raises:
            ValueError: a structure of this map has no counterpart in ``target`` and
                ``drop_unmatched`` is false; the message lists every such name.
        """
        target_by_canonical = {canonical_name(n): n for n in target.names}
        table = np.zeros(len(self.names), dtype=np.int64)
        dropped = []
        matched_targets = set()
        for name, src_id in self.labels.items():
            dst = target_by_canonical.get(canonical_name(name))
            if dst is None:
                dropped.append(name)
                continue
            table[src_id] = target.labels[dst]
            matched_targets.add(dst)
        if dropped and not drop_unmatched:
            raise ValueError(
                f"cannot remap label map {self.name!r} onto {target.name!r}: no counterpart for "
                f"{dropped}. Pass drop_unmatched=True to send them to background, or add a synonym "
                f"to mosmoskit/labels/synonyms.json if they are the same structure under another name."
            )
        unfilled = tuple(n for n in target.foreground_names if n not in matched_targets)
        return LabelRemap(self.name, target.name, table, tuple(dropped), unfilled)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal map (stored in checkpoints)."""
        out: dict[str, Any] = {"name": self.name, "labels": dict(self.labels)}
        if self.raw_values is not None:
            out["raw_values"] = dict(self.raw_values)
        if self.regions:
            out["regions"] = {k: list(v) for k, v in self.regions.items()}
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom", source: str = "") -> LabelMap:
        """Build from either JSON form (plain name -> id, or structured with a ``labels`` key)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"label map {source or name}: expected a JSON object, got {type(data).__name__}")
        if "labels" in data and isinstance(data["labels"], Mapping):
            return cls(
                name=str(data.get("name", name)),
                labels=dict(data["labels"]),
                raw_values=dict(data["raw_values"]) if data.get("raw_values") is not None else None,
                regions=dict(data.get("regions", {})),
                description=str(data.get("description", "")),
                source=source,
            )
        return cls(name=name, labels=dict(data), source=source)

    def save(self, path: str | Path) -> None:
        from mosmoskit.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


#: Floats at or beyond this magnitude do not fit int64; their values are listed exactly instead.
_INT64_LIMIT = float(2**63)


def _unique_values(array: Any, source: str) -> list[int]:
    """Sorted distinct integer values (Python ints; floats at or beyond 2**63 stay floats).

    Raises:
        ValueError: an input that is not a regular numeric array, NaN/inf or fractional values;
            the message starts with ``source`` and shows the offending values.
    """
    if hasattr(array, "detach"):  # torch tensor (MONAI MetaTensor included)
        tensor = array.detach().cpu()
        try:
            array = tensor.numpy()
        except TypeError:  # bfloat16 has no numpy type; float32 holds its values exactly
            array = tensor.float().numpy()
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise ValueError(f"{source}: label mask is not a regular array ({err})") from err
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            shown = sorted({str(float(v)) for v in np.unique(arr[~finite])})
            raise ValueError(
                f"{source}: label mask contains non-finite values {shown} ({n_nan} NaN and "
                f"{arr.size - int(finite.sum()) - n_nan} infinite voxels)"
            )
        if not np.all(arr == np.round(arr)):
            bad = np.unique(arr[arr != np.round(arr)])[:5]
            raise ValueError(f"{source}: label mask has non-integer values such as {bad.tolist()} (was it interpolated linearly?)")
        if arr.size and (float(arr.min()) < -_INT64_LIMIT or float(arr.max()) >= _INT64_LIMIT):
            # A cast would wrap around and report other values than the mask holds; no map has such
            # ids, so those values stay floats (shown as 1e+20, not as 21 digits).
            return sorted(float(v) if abs(float(v)) >= _INT64_LIMIT else int(v) for v in np.unique(arr))
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{source}: label mask must hold integers, got dtype {arr.dtype}")
    if arr.size == 0:
        return []
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 16:
        counts = np.bincount(arr.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return np.flatnonzero(counts).tolist()
    return [int(v) for v in np.unique(arr)]  # int(), not astype(int64): uint64 values above 2**63 stay exact


def load_label_map(name_or_path: str | Path | LabelMap) -> LabelMap:
    """Load a shipped label map by name (``"btcv"``, ``"amos"``, ``"mmwhs"``, ``"brats"``,
    ``"totalseg_ct"``, ``"totalseg_mr"``) or any JSON file by path.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unknown name (the message lists the known ones) or a malformed file.
    """
    if isinstance(name_or_path, LabelMap):
        return name_or_path
    text = str(name_or_path)
    if text in available_label_maps():
        resource = resources.files(_MAPS_PACKAGE) / "maps" / f"{text}.json"
        return LabelMap.from_dict(json.loads(resource.read_text()), name=text, source=f"<mosmoskit:{text}>")
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"label map file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"label map file {path} is not valid JSON: {err}") from None
        return LabelMap.from_dict(data, name=path.stem, source=str(path))
    raise ValueError(
        f"unknown label map {text!r}: give one of {available_label_maps()} or the path of a JSON file"
    )
