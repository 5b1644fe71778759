"""Vectorised ray casting of a :class:`Layout` into per-pixel geometry buffers.

Each surface (ground, facade planes, boxes, spheres) is intersected with the camera rays
of the pixels it can cover and written where it is nearer than what is already there,
a z-buffer, so nearer objects occlude farther ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uda_data.classes import TRAIN_ID
from uda_data.synthetic.layout import (
    FACADE_LABEL,
    FACADE_MATERIAL,
    GAP,
    KERB,
    Box,
    FacadeRow,
    Layout,
    Sphere,
)
from uda_data.synthetic.materials import Material

SKY_LABEL = TRAIN_ID["sky"]


@dataclass
class GBuffer:
    """What each pixel sees: class, metric depth (inf for sky) and surface attributes."""

    depth: np.ndarray  # H x W float32, camera-frame z in metres
    label: np.ndarray  # H x W uint8 trainIds
    material: np.ndarray  # H x W uint8 Material
    tint: np.ndarray  # H x W float32 in [0, 1), per instance
    su: np.ndarray  # H x W float32, horizontal surface coordinate in metres
    sv: np.ndarray  # H x W float32, vertical (or forward, on the ground) surface coordinate
    normal: np.ndarray  # 3 x H x W float32 world normal
    rays: np.ndarray  # 3 x H x W world ray directions
    inv_rays: np.ndarray  # their reciprocals, finite

    def write(
        self,
        window: tuple[slice, slice],
        hit: np.ndarray,
        t: np.ndarray,
        label,
        material,
        tint,
        su: np.ndarray,
        sv: np.ndarray,
        normal,
    ) -> None:
        """Writes a surface where ``hit`` and nearer than the buffer, inside ``window``."""
        hit = hit & (t < self.depth[window])
        if not hit.any():
            return
        self.depth[window][hit] = t[hit]
        for buf, val in ((self.label, label), (self.material, material), (self.tint, tint)):
            buf[window][hit] = val[hit] if isinstance(val, np.ndarray) else val
        self.su[window][hit] = su[hit]
        self.sv[window][hit] = sv[hit]
        for k in range(3):
            n = normal[k]
            self.normal[k][window][hit] = n[hit] if isinstance(n, np.ndarray) else n


def render_gbuffer(layout: Layout) -> GBuffer:
    cam = layout.camera
    h, w = cam.height, cam.width
    rays = cam.rays()
    gb = GBuffer(
        depth=np.full((h, w), np.inf, dtype=np.float32),
        label=np.full((h, w), SKY_LABEL, dtype=np.uint8),
        material=np.full((h, w), Material.SKY, dtype=np.uint8),
        tint=np.zeros((h, w), dtype=np.float32),
        su=np.zeros((h, w), dtype=np.float32),
        sv=np.zeros((h, w), dtype=np.float32),
        normal=np.zeros((3, h, w), dtype=np.float32),
        rays=rays,
        inv_rays=1.0 / np.where(np.abs(rays) < 1e-7, np.float32(1e-7), rays),
    )
    _ground(gb, layout)
    for row in layout.rows:
        _facade_row(gb, layout, row)
    if layout.far_wall is not None:
        _far_wall(gb, layout)
    for box in layout.boxes:
        _box(gb, layout, box)
    for sphere in layout.spheres:
        _sphere(gb, layout, sphere)
    return gb


def _ground(gb: GBuffer, layout: Layout) -> None:
    street, elevation = layout.street, layout.camera.elevation
    dx, dy, dz = gb.rays
    rows = np.flatnonzero((dy < -1e-6).any(axis=1))
    if rows.size == 0:
        return
    window = (slice(rows[0], None), slice(None))
    dx, dy, dz = dx[window], dy[window], dz[window]
    down = dy < -1e-6
    t = (elevation / np.where(down, -dy, 1.0)).astype(np.float32)
    x, z = t * dx, t * dz
    rel = x - street.centre
    side = (rel > 0).astype(np.int64)
    beyond = np.abs(rel) - street.road_half
    strip = np.asarray(street.strip, dtype=np.float32)[side]
    walk = np.asarray(street.sidewalk, dtype=np.float32)[side]
    in_crossing = np.zeros(z.shape, dtype=bool)
    near_crossing = np.zeros(z.shape, dtype=bool)
    for c0, c1 in street.crossings:
        in_crossing |= (z >= c0) & (z < c1)
        near_crossing |= (z >= c0 - 4.5) & (z < c1 + 4.5)

    label = np.full(z.shape, TRAIN_ID["terrain"], dtype=np.uint8)
    material = np.full(z.shape, Material.TERRAIN, dtype=np.uint8)
    sidewalk = (beyond >= KERB + strip) & (beyond < KERB + strip + walk)
    label[sidewalk] = TRAIN_ID["sidewalk"]
    material[sidewalk] = Material.SIDEWALK
    kerb = (beyond >= 0) & (beyond < KERB)
    label[kerb] = TRAIN_ID["sidewalk"]
    material[kerb] = Material.KERB
    road = (beyond < 0) | in_crossing
    label[road] = TRAIN_ID["road"]
    material[road] = Material.ROAD

    marking = np.zeros(z.shape, dtype=bool)
    for offset, dashed in street.markings:
        line = np.abs(rel - offset) < 0.07 if dashed else np.abs(rel - offset) < 0.1
        if dashed:
            line &= np.mod(z, 9.0) < 3.5
        marking |= line
    marking &= ~near_crossing
    for c0, c1 in street.crossings:
        zebra = ((z >= c0 - 4.5) & (z < c0 - 0.8)) | ((z >= c1 + 0.8) & (z < c1 + 4.5))
        marking |= zebra & (beyond < -0.3) & (np.mod(rel, 1.0) < 0.5)
    marking &= beyond < 0
    material[marking] = Material.MARKING

    hit = down & (z > 0)
    gb.write(window, hit, t, label, material, street.tint, x, z, (0.0, 1.0, 0.0))


def _facade_row(gb: GBuffer, layout: Layout, row: FacadeRow) -> None:
    dx, dy, dz = gb.rays
    facing = dx < -1e-6 if row.x < 0 else dx > 1e-6
    cols = np.flatnonzero(facing.any(axis=0))
    if cols.size == 0:
        return
    window = (slice(None), slice(cols[0], cols[-1] + 1))
    dx, dy, dz, facing = dx[window], dy[window], dz[window], facing[window]
    t = np.where(facing, row.x / np.where(facing, dx, 1.0), np.inf).astype(np.float32)
    y, z = layout.camera.elevation + t * dy, t * dz
    seg = np.searchsorted(row.edges, z, side="right") - 1
    inside = (seg >= 0) & (seg < len(row.heights))
    seg = np.clip(seg, 0, len(row.heights) - 1)
    kind = row.kinds[seg]
    hit = facing & inside & (kind != GAP) & (y >= 0) & (y < row.heights[seg]) & (z > 0.5)
    normal = (1.0 if row.x < 0 else -1.0, 0.0, 0.0)
    gb.write(
        window,
        hit,
        t,
        FACADE_LABEL[kind],
        FACADE_MATERIAL[kind],
        row.tint[seg],
        z + seg * 7.3,
        y,
        normal,
    )


def _far_wall(gb: GBuffer, layout: Layout) -> None:
    z_wall, height, tint = layout.far_wall
    dx, dy, dz = gb.rays
    t = (z_wall / dz).astype(np.float32)
    y = layout.camera.elevation + t * dy
    x = t * dx
    hit = (y >= 0) & (y < height)
    window = (slice(None), slice(None))
    gb.write(window, hit, t, TRAIN_ID["building"], Material.FACADE, tint, x, y, (0.0, 0.0, -1.0))


_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)


def _window(layout: Layout, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
    """Pixel rectangle covering the projection of an axis-aligned box, or None if unseen."""
    cam = layout.camera
    u, v, z = cam.project(lo + _CORNERS * (hi - lo))
    if (z < 0.2).all():
        return None
    if (z < 0.2).any():
        return (slice(None), slice(None))
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, cam.width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, cam.height)
    if u0 >= u1 or v0 >= v1:
        return None
    return (slice(v0, v1), slice(u0, u1))


def _box(gb: GBuffer, layout: Layout, box: Box) -> None:
    """Slab test; the faces a ray can enter through are those turned towards the camera."""
    lo, hi = np.asarray(box.lo), np.asarray(box.hi)
    window = _window(layout, lo, hi)
    if window is None:
        return
    origin = layout.camera.origin
    inv = gb.inv_rays[(slice(None), *window)]
    t_near = axis = None
    t_far = np.inf
    facing = [0.0, 0.0, 0.0]
    for k in range(3):
        a, b = np.float32(lo[k] - origin[k]), np.float32(hi[k] - origin[k])
        if a > 0 or b < 0:
            near, far = (a * inv[k], b * inv[k]) if a > 0 else (b * inv[k], a * inv[k])
            facing[k] = -1.0 if a > 0 else 1.0
            if t_near is None:
                t_near, axis = near, np.full(near.shape, k, dtype=np.int8)
            else:
                nearer = near > t_near
                t_near = np.where(nearer, near, t_near)
                axis[nearer] = k
        else:
            far = np.maximum(a * inv[k], b * inv[k])
        t_far = np.minimum(t_far, far)
    hit = (t_near < t_far) & (t_near > 0.05)
    if not hit.any():
        return
    d = gb.rays[(slice(None), *window)]
    # Surface coordinates: along the face horizontally, then vertically (forward on a top face).
    px, py, pz = (origin[k] + t_near * d[k] for k in range(3))
    su = np.where(axis == 0, pz, px)
    sv = np.where(axis == 1, pz, py)
    normal = [np.where(axis == k, np.float32(facing[k]), np.float32(0.0)) for k in range(3)]
    gb.write(window, hit, t_near, box.label, box.material, box.tint, su, sv, normal)


def _sphere(gb: GBuffer, layout: Layout, sphere: Sphere) -> None:
    c = np.asarray(sphere.centre)
    r = sphere.radius
    window = _window(layout, c - r, c + r)
    if window is None:
        return
    d = gb.rays[(slice(None), *window)]
    oc = (layout.camera.origin - c).astype(np.float32)[:, None, None]
    a = (d * d).sum(axis=0)
    b = 2.0 * (d * oc).sum(axis=0)
    disc = b * b - 4.0 * a * ((oc * oc).sum() - r * r)
    hit = disc > 0
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    hit &= t > 0.05
    rel = oc + t[None] * d
    normal = rel / np.float32(r)
    gb.write(
        window,
        hit,
        t,
        sphere.label,
        sphere.material,
        sphere.tint,
        rel[0] + rel[2] + np.float32(c[0] + c[2]),
        rel[1] + np.float32(c[1]),
        normal,
    )
