"""Implicit solids and smooth random fields in millimetres: the geometry of the phantom.

Every structure of a phantom case (:mod:`mosmoskit.data.phantom`) is one of these solids, defined in
RAS+ patient coordinates (mm), never in voxels, so any grid samples the same anatomy. A solid is a
*level function*: ``level(x, y, z) < 1`` inside, ``> 1`` outside, evaluated on broadcastable float32
coordinate arrays. Solids compose (:class:`Union`, :class:`Difference`, :class:`Intersection`) and
deform (:class:`Wobbly`); :class:`FourierField` gives the smooth random fields behind the boundary
wobble, the texture and the whole-anatomy warp.

They live in their own module so that the anatomy (:mod:`mosmoskit.data.phantom`) and the
structures that fill the place of an absent organ (:mod:`mosmoskit.data.phantom_absence`) share
them; :mod:`mosmoskit.data.phantom` re-exports every name here.

Example:
    >>> import numpy as np
    >>> from mosmoskit.data.phantom_shapes import Ellipsoid, Tube, Union
    >>> ball = Ellipsoid(np.zeros(3), np.array([10.0, 10.0, 10.0]))
    >>> rod = Tube.smooth([[0, 0, 0], [0, 0, 40]], 3.0)
    >>> Union((ball, rod)).contains(np.array([[0, 0, 0], [0, 0, 30], [20, 0, 0]])).tolist()
    [True, True, False]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "Difference",
    "Ellipsoid",
    "FourierField",
    "HalfSpace",
    "Intersection",
    "Shape",
    "Tube",
    "Union",
    "Wobbly",
    "rotation",
]


# ============================================================================================
# Smooth random fields
# ============================================================================================
@dataclass(frozen=True)
class FourierField:
    """A smooth random scalar field in physical space: a sum of plane cosine waves.

    Defined in millimetres, so it is the same function whatever grid samples it.

    Args:
        wave: (K, 3) wave vectors in radians per mm.
        phase: (K,) phases.
        weight: (K,) amplitudes.
    """

    wave: np.ndarray
    phase: np.ndarray
    weight: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float],
                bounded: bool = False) -> FourierField:
        """Draw a field with ``n_terms`` waves of random direction and log-uniform wavelength.

        Args:
            rng: source of randomness.
            n_terms: number of cosine waves.
            wavelength_mm: (shortest, longest) wavelength in mm; sets how smooth the field is.
            bounded: scale so that ``|field| <= 1`` everywhere (for displacements); otherwise the
                field has unit variance (for textures).
        """
        direction = rng.normal(size=(n_terms, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
        wavelength = np.exp(rng.uniform(np.log(wavelength_mm[0]), np.log(wavelength_mm[1]), size=n_terms))
        wave = direction * (2.0 * np.pi / wavelength)[:, None]
        phase = rng.uniform(0.0, 2.0 * np.pi, size=n_terms)
        weight = np.full(n_terms, 1.0 / n_terms if bounded else math.sqrt(2.0 / n_terms))
        return cls(wave, phase, weight)

    @property
    def max_abs(self) -> float:
        """An upper bound of ``|field|`` anywhere."""
        return float(np.abs(self.weight).sum())

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Evaluate at points given by broadcastable coordinate arrays (mm); returns float32."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.float32)
        for (kx, ky, kz), ph, w in zip(self.wave, self.phase, self.weight):
            out += np.float32(w) * np.cos(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(ph))
        return out


# ============================================================================================
# Implicit shapes in millimetres. level(x, y, z) < 1 inside, > 1 outside.
# ============================================================================================
class Shape:
    """An implicit solid: ``level < 1`` inside. Subclasses give ``level`` and ``bounds``."""

    def level(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        """Axis-aligned box (lo, hi) in mm that contains the solid."""
        raise NotImplementedError

    def contains(self, p: np.ndarray, threshold: float = 1.0) -> np.ndarray:
        p = np.atleast_2d(np.asarray(p, dtype=np.float32))
        return self.level(p[:, 0], p[:, 1], p[:, 2]) < threshold


def rotation(z_deg: float = 0.0, y_deg: float = 0.0, x_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx (columns are the rotated local axes)."""
    a, b, c = np.deg2rad([z_deg, y_deg, x_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Superellipsoid ``(sum |u_i / r_i|^e)^(1/e)`` with ``u = R^T (p - center)``; ``e > 2`` is boxier."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0

    def level(self, x, y, z):
        dx, dy, dz = x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2])
        acc = None
        for i in range(3):
            r = self.rot[:, i]
            u = (np.float32(r[0]) * dx + np.float32(r[1]) * dy + np.float32(r[2]) * dz) / np.float32(self.radii[i])
            term = u * u if self.exponent == 2.0 else np.abs(u) ** np.float32(self.exponent)
            acc = term if acc is None else acc + term
        return np.sqrt(acc) if self.exponent == 2.0 else acc ** np.float32(1.0 / self.exponent)

    def bounds(self):
        half = np.abs(self.rot) @ np.asarray(self.radii, dtype=float)  # box of the rotated box
        return np.asarray(self.center) - half, np.asarray(self.center) + half


def _catmull_rom(points: np.ndarray, radii: np.ndarray, per_segment: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth curve through ``points`` (Catmull-Rom), radii interpolated linearly."""
    if len(points) < 3:
        return points, radii
    p = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out, rad = [], []
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        seg = 0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        out.append(seg)
        rad.append(radii[i - 1] + (radii[i] - radii[i - 1]) * t[:, 0])
    out.append(points[-1:])
    rad.append(radii[-1:])
    return np.vstack(out), np.concatenate(rad)


#: A tube evaluates its segments in chunks of about this many (segment, point) pairs: few numpy
#: calls for the small point sets of 2D renders, cache-sized temporaries (256 KB) for big 3D boxes,
#: which then go one segment at a time.
_TUBE_CHUNK = 1 << 16


@dataclass(frozen=True)
class Tube(Shape):
    """A tube of varying radius along a polyline: level = distance / local radius."""

    points: np.ndarray
    radii: np.ndarray

    @classmethod
    def smooth(cls, points: Sequence[Sequence[float]], radii: Sequence[float] | float, per_segment: int = 4) -> Tube:
        pts = np.asarray(points, dtype=float)
        rad = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),)).copy()
        p, r = _catmull_rom(pts, rad, per_segment)
        return cls(p, r)

    def level(self, x, y, z):
        # All segments of a chunk at once, as (segments, points) arrays: a tube has tens of short
        # segments and a 2D render few points per segment, so one numpy call per segment would
        # spend its time in call overhead. Element by element the arithmetic is the per-segment
        # formula in the same order and precision, so the result is the same to the bit.
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        xf, yf, zf = (np.broadcast_to(v, shape).reshape(1, -1) for v in (x, y, z))
        pts = self.points.astype(np.float32)
        a, ab = pts[:-1], pts[1:] - pts[:-1]
        denom = np.array([np.float32(float(v @ v) or 1e-6) for v in ab], dtype=np.float32)[:, None]
        r0 = self.radii[:-1].astype(np.float32)[:, None]
        dr = (self.radii[1:] - self.radii[:-1]).astype(np.float32)[:, None]
        step = max(1, _TUBE_CHUNK // max(1, xf.shape[1]))
        best = None
        for lo in range(0, len(a), step):
            sl = slice(lo, lo + step)
            ax, ay, az = a[sl, 0:1], a[sl, 1:2], a[sl, 2:3]
            bx, by, bz = ab[sl, 0:1], ab[sl, 1:2], ab[sl, 2:3]
            t = ((xf - ax) * bx + (yf - ay) * by + (zf - az) * bz) / denom[sl]
            np.clip(t, 0.0, 1.0, out=t)
            dx, dy, dz = xf - (ax + t * bx), yf - (ay + t * by), zf - (az + t * bz)
            lev = (np.sqrt(dx * dx + dy * dy + dz * dz) / (r0[sl] + t * dr[sl])).min(axis=0)
            best = lev if best is None else np.minimum(best, lev)
        return best.reshape(shape)

    def bounds(self):
        r = float(np.max(self.radii))
        return self.points.min(0) - r, self.points.max(0) + r

    def scaled(self, factor: float) -> Tube:
        return Tube(self.points, self.radii * factor)


@dataclass(frozen=True)
class Union(Shape):
    parts: tuple[Shape, ...]

    def level(self, x, y, z):
        out = self.parts[0].level(x, y, z)
        for p in self.parts[1:]:
            out = np.minimum(out, p.level(x, y, z))
        return out

    def bounds(self):
        b = [p.bounds() for p in self.parts]
        return np.min([lo for lo, _ in b], 0), np.max([hi for _, hi in b], 0)


@dataclass(frozen=True)
class Difference(Shape):
    """``base`` minus ``cut``: inside base and outside cut."""

    base: Shape
    cut: Shape

    def level(self, x, y, z):
        return np.maximum(self.base.level(x, y, z), np.float32(2.0) - self.cut.level(x, y, z))

    def bounds(self):
        return self.base.bounds()


@dataclass(frozen=True)
class Intersection(Shape):
    a: Shape
    b: Shape

    def level(self, x, y, z):
        return np.maximum(self.a.level(x, y, z), self.b.level(x, y, z))

    def bounds(self):
        (l1, h1), (l2, h2) = self.a.bounds(), self.b.bounds()
        return np.maximum(l1, l2), np.minimum(h1, h2)


@dataclass(frozen=True)
class HalfSpace(Shape):
    """Points with ``coordinate[axis] > threshold`` (or below, with ``above=False``)."""

    axis: int
    threshold: float
    above: bool = True

    def level(self, x, y, z):
        c = (x, y, z)[self.axis]
        d = (c - np.float32(self.threshold)) if self.above else (np.float32(self.threshold) - c)
        return np.float32(1.0) - d / np.float32(10.0)

    def bounds(self):
        lo, hi = np.full(3, -np.inf), np.full(3, np.inf)
        (lo if self.above else hi)[self.axis] = self.threshold
        return lo, hi


@dataclass(frozen=True)
class Wobbly(Shape):
    """Boundary deformed by a smooth field: ``level * exp(amplitude * field)``.

    The exponential keeps the factor positive however large the field gets, so the solid can only
    bulge or dent, never turn inside out.
    """

    shape: Shape
    field: FourierField
    amplitude: float

    def level(self, x, y, z):
        return self.shape.level(x, y, z) * np.exp(np.float32(self.amplitude) * self.field(x, y, z))

    def bounds(self):
        lo, hi = self.shape.bounds()
        # the factor is at least exp(-amplitude * max|field|), which scales the solid by its inverse
        grow = math.exp(self.amplitude * self.field.max_abs)
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        return centre - half * grow, centre + half * grow
