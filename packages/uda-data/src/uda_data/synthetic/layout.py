"""A random street scene in 3D: the street's cross-section, facades and placed objects.

Everything is measured in metres in the world frame of :mod:`.camera`. Objects are
axis-aligned boxes and spheres standing on the ground, so their image size follows from
their depth through the pinhole model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from uda_data.classes import IGNORE_INDEX, TRAIN_ID
from uda_data.synthetic.camera import Camera
from uda_data.synthetic.materials import Material

KERB = 0.2

# Facade segment kinds and the label / material each one renders as.
GAP, BUILDING, WALL, FENCE, HEDGE = range(5)
FACADE_LABEL = np.array(
    [
        IGNORE_INDEX,
        TRAIN_ID["building"],
        TRAIN_ID["wall"],
        TRAIN_ID["fence"],
        TRAIN_ID["vegetation"],
    ],
    dtype=np.uint8,
)
FACADE_MATERIAL = np.array(
    [Material.SKY, Material.FACADE, Material.WALL, Material.FENCE, Material.FOLIAGE],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class Street:
    """Cross-section of the street, the same along Z except at crossings."""

    centre: float
    road_half: float
    strip: tuple[float, float]
    sidewalk: tuple[float, float]
    setback: tuple[float, float]
    markings: tuple[tuple[float, bool], ...]  # (offset from centre, dashed)
    crossings: tuple[tuple[float, float], ...]
    tint: float  # picks the road and sidewalk colours

    def building_line(self, side: int) -> float:
        """X of the front facades on the left (0) or right (1) side."""
        reach = self.road_half + KERB + self.strip[side] + self.sidewalk[side]
        reach += self.setback[side]
        return self.centre + (reach if side else -reach)

    def curb_x(self, side: int, beyond: float) -> float:
        """X at a distance ``beyond`` outside the road edge on one side."""
        reach = self.road_half + beyond
        return self.centre + (reach if side else -reach)

    def in_crossing(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        return any(z0 < c1 + margin and z1 > c0 - margin for c0, c1 in self.crossings)


@dataclass(frozen=True)
class FacadeRow:
    """Vertical plane X = x split along Z into segments of given kind and height."""

    x: float
    edges: np.ndarray  # (n + 1,) increasing Z
    heights: np.ndarray  # (n,)
    kinds: np.ndarray  # (n,)
    tint: np.ndarray  # (n,) random per segment, for per-instance colour


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    label: int
    material: Material
    tint: float


@dataclass(frozen=True)
class Sphere:
    centre: tuple[float, float, float]
    radius: float
    label: int
    material: Material
    tint: float


@dataclass
class Layout:
    camera: Camera
    street: Street
    rows: list[FacadeRow]
    far_wall: tuple[float, float, float] | None  # (z, height, tint)
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)


def sample_layout(rng: np.random.Generator, width: int, height: int) -> Layout:
    camera = Camera.sample(rng, width, height)
    street, lanes, parking = _sample_street(rng)
    z_far = float(rng.uniform(90.0, 250.0))
    has_far_wall = rng.random() < 0.5
    row_end = z_far if has_far_wall else 400.0
    rows = []
    for side in (0, 1):
        sign = 1.0 if side else -1.0
        front = street.building_line(side)
        rows.append(_sample_row(rng, street, front + sign * rng.uniform(8.0, 25.0), row_end, True))
        rows.append(_sample_row(rng, street, front, row_end, False))
    far_wall = (z_far, float(rng.uniform(8.0, 30.0)), float(rng.random())) if has_far_wall else None
    layout = Layout(camera, street, rows, far_wall)
    _place_street_furniture(rng, layout)
    _place_vehicles(rng, layout, lanes, parking)
    _place_people(rng, layout, lanes)
    return layout


def _sample_street(rng: np.random.Generator) -> tuple[Street, np.ndarray, list[float]]:
    n_lanes = int(rng.choice([2, 2, 3, 4]))
    lane_w = rng.uniform(3.0, 3.6)
    park_w = 2.3
    park = rng.random(2) < 0.5
    road_w = n_lanes * lane_w + park.sum() * park_w
    drive_lo = -road_w / 2 + park[0] * park_w
    lanes = drive_lo + lane_w * (np.arange(n_lanes) + 0.5)
    ego = int(rng.integers(n_lanes // 2, n_lanes))
    centre = -lanes[ego] + rng.uniform(-0.4, 0.4)
    markings = [
        (drive_lo + lane_w * k, k not in (0, n_lanes, n_lanes // 2)) for k in range(n_lanes + 1)
    ]
    parking = [
        centre + (-road_w / 2 + park_w / 2 if s == 0 else road_w / 2 - park_w / 2)
        for s in (0, 1)
        if park[s]
    ]
    crossings = []
    z = rng.uniform(10.0, 40.0)
    while z < 120.0 and rng.random() < 0.6:
        w = rng.uniform(10.0, 18.0)
        crossings.append((float(z), float(z + w)))
        z += w + rng.uniform(40.0, 80.0)

    def per_side(lo: float, hi: float, p_zero: float) -> tuple[float, float]:
        return tuple(0.0 if rng.random() < p_zero else float(rng.uniform(lo, hi)) for _ in "lr")

    street = Street(
        centre=float(centre),
        road_half=float(road_w / 2),
        strip=per_side(0.8, 2.0, 0.65),
        sidewalk=per_side(1.8, 5.0, 0.0),
        setback=per_side(1.0, 5.0, 0.7),
        markings=tuple((float(x), dashed) for x, dashed in markings),
        crossings=tuple(crossings),
        tint=float(rng.random()),
    )
    return street, lanes + centre, parking


def _sample_row(
    rng: np.random.Generator, street: Street, x: float, z_end: float, back: bool
) -> FacadeRow:
    edges, heights, kinds = [-20.0], [], []
    while edges[-1] < z_end:
        z = edges[-1]
        crossing = next(((c0, c1) for c0, c1 in street.crossings if c0 - 1 <= z < c1 + 1), None)
        if crossing and not back:
            edges.append(crossing[1] + 1)
            heights.append(0.0)
            kinds.append(GAP)
            continue
        if rng.random() < (0.85 if back else 0.75):
            length = rng.uniform(10.0, 40.0) if back else rng.uniform(6.0, 25.0)
            kind, height = BUILDING, rng.uniform(8.0, 35.0) if back else rng.uniform(5.0, 25.0)
        else:
            length = rng.uniform(3.0, 12.0)
            kind = GAP if back else int(rng.choice([GAP, WALL, FENCE, HEDGE]))
            height = {
                GAP: 0.0,
                WALL: rng.uniform(1.0, 3.0),
                FENCE: rng.uniform(1.2, 2.2),
                HEDGE: rng.uniform(0.8, 1.8),
            }[kind]
        end = z + length
        if not back:
            end = min([end] + [c0 - 1 for c0, _ in street.crossings if c0 - 1 > z])
        edges.append(end)
        heights.append(height)
        kinds.append(kind)
    n = len(heights)
    return FacadeRow(
        x=float(x),
        edges=np.asarray(edges, dtype=np.float32),
        heights=np.asarray(heights, dtype=np.float32),
        kinds=np.asarray(kinds, dtype=np.int64),
        tint=rng.random(n).astype(np.float32),
    )


def _add_box(
    layout: Layout,
    x: float,
    z: float,
    size: tuple[float, float],
    y: tuple[float, float],
    label: int,
    material: Material,
    tint: float,
) -> None:
    """A box centred at (x, z) on the ground plan, with width, length and vertical extent."""
    w, length = size
    layout.boxes.append(
        Box(
            (x - w / 2, y[0], z - length / 2),
            (x + w / 2, y[1], z + length / 2),
            label,
            material,
            tint,
        )
    )


def _place_street_furniture(rng: np.random.Generator, layout: Layout) -> None:
    street = layout.street
    for side in (0, 1):
        sign = 1.0 if side else -1.0
        pole_x = street.curb_x(side, KERB + 0.4)
        z = rng.uniform(2.0, 12.0)
        while z < 90.0:
            if not street.in_crossing(z, z, margin=1.5):
                _add_pole(
                    rng, layout, pole_x, z, sign, str(rng.choice(["sign", "lamp"], p=[0.55, 0.45]))
                )
            z += rng.uniform(10.0, 25.0)
        for c0, _ in street.crossings:
            if c0 < 80 and rng.random() < 0.8:
                _add_pole(rng, layout, pole_x, c0 - 1.0, sign, "light")
        if rng.random() < 0.6:
            strip = street.strip[side]
            tree_x = street.curb_x(side, KERB + (strip / 2 if strip else 0.9))
            z = rng.uniform(0.0, 8.0)
            while z < 90.0:
                if not street.in_crossing(z, z, margin=2.0):
                    _add_tree(rng, layout, tree_x + rng.uniform(-0.2, 0.2), z)
                z += rng.uniform(6.0, 14.0)
        if street.setback[side] > 0 and rng.random() < 0.6:
            hedge_x = street.building_line(side) - sign * (street.setback[side] - 0.6)
            z = rng.uniform(-5.0, 10.0)
            while z < 80.0:
                length = rng.uniform(5.0, 20.0)
                if not street.in_crossing(z, z + length, margin=1.0):
                    _add_box(
                        layout,
                        hedge_x,
                        z + length / 2,
                        (0.8, length),
                        (0.0, rng.uniform(0.8, 1.6)),
                        TRAIN_ID["vegetation"],
                        Material.FOLIAGE,
                        float(rng.random()),
                    )
                z += length + rng.uniform(2.0, 15.0)
        for _ in range(int(rng.integers(0, 3))):
            x = street.curb_x(side, KERB + street.strip[side] + rng.uniform(0.3, 1.5))
            _add_box(
                layout,
                x,
                rng.uniform(5.0, 50.0),
                (0.6, 0.6),
                (0.0, rng.uniform(0.6, 1.2)),
                IGNORE_INDEX,
                Material.CLUTTER,
                float(rng.random()),
            )
    if rng.random() < 0.5:
        # The ego car's bonnet, reaching a few rows up from the bottom of the image.
        cam = layout.camera
        drop = 0.4
        bottom = np.tan(np.arctan(0.5 * cam.height / cam.focal) + cam.pitch)
        slope = bottom - rng.uniform(0.02, 0.06) * cam.height / cam.focal
        layout.boxes.append(
            Box(
                (-1.2, 0.0, 0.3),
                (1.2, cam.elevation - drop, drop / slope),
                IGNORE_INDEX,
                Material.HOOD,
                0.0,
            )
        )


def _add_pole(
    rng: np.random.Generator, layout: Layout, x: float, z: float, sign: float, kind: str
) -> None:
    pole, sign_id, light_id = TRAIN_ID["pole"], TRAIN_ID["traffic sign"], TRAIN_ID["traffic light"]
    tint = float(rng.random())
    if kind == "sign":
        top = rng.uniform(2.6, 3.5)
        _add_box(layout, x, z, (0.1, 0.1), (0.0, top), pole, Material.POLE, tint)
        plate = (0.65, 0.05) if rng.random() < 0.75 else (0.05, 0.65)
        _add_box(
            layout,
            x,
            z - 0.06,
            plate,
            (top - 0.75, top - 0.05),
            sign_id,
            Material.SIGN,
            float(rng.random()),
        )
    elif kind == "lamp":
        top = rng.uniform(6.0, 8.5)
        _add_box(layout, x, z, (0.18, 0.18), (0.0, top), pole, Material.POLE, tint)
        arm = rng.uniform(1.0, 2.5)
        _add_box(
            layout, x - sign * arm / 2, z, (arm, 0.12), (top - 0.15, top), pole, Material.POLE, tint
        )
        if rng.random() < 0.3:
            _add_box(
                layout,
                x,
                z - 0.12,
                (0.6, 0.05),
                (2.2, 2.8),
                sign_id,
                Material.SIGN,
                float(rng.random()),
            )
    else:
        top = rng.uniform(3.2, 4.2)
        _add_box(layout, x, z, (0.14, 0.14), (0.0, top), pole, Material.POLE, tint)
        _add_box(layout, x, z - 0.2, (0.32, 0.3), (top - 1.0, top), light_id, Material.LIGHT, tint)
        if rng.random() < 0.5:
            arm = rng.uniform(3.0, 6.0)
            _add_box(
                layout, x - sign * arm / 2, z, (arm, 0.14), (5.2, 5.36), pole, Material.POLE, tint
            )
            _add_box(layout, x, z, (0.14, 0.14), (top, 5.36), pole, Material.POLE, tint)
            _add_box(
                layout,
                x - sign * (arm - 0.3),
                z - 0.2,
                (0.32, 0.3),
                (4.2, 5.2),
                light_id,
                Material.LIGHT,
                tint,
            )


def _add_tree(rng: np.random.Generator, layout: Layout, x: float, z: float) -> None:
    veg = TRAIN_ID["vegetation"]
    trunk = rng.uniform(1.8, 3.0)
    radius = rng.uniform(1.2, 2.6)
    tint = float(rng.random())
    _add_box(layout, x, z, (0.25, 0.25), (0.0, trunk + radius), veg, Material.TRUNK, tint)
    layout.spheres.append(Sphere((x, trunk + radius * 0.8, z), radius, veg, Material.FOLIAGE, tint))
    off = rng.uniform(-0.6, 0.6, size=3) * radius
    layout.spheres.append(
        Sphere(
            (x + off[0], trunk + radius * 1.2 + off[1] * 0.3, z + off[2]),
            radius * rng.uniform(0.6, 0.85),
            veg,
            Material.FOLIAGE,
            tint,
        )
    )


def _add_vehicle(rng: np.random.Generator, layout: Layout, x: float, z: float, kind: str) -> float:
    """Places a vehicle whose rear is at z; returns its length."""
    tint = float(rng.random())
    wheel = Material.TYRE
    if kind == "car":
        length, w = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.9)
        label, body = TRAIN_ID["car"], Material.CAR_BODY
        roof = rng.uniform(1.35, 1.6)
        _add_box(layout, x, z + length / 2, (w, length), (0.25, 0.95), label, body, tint)
        _add_box(
            layout,
            x,
            z + length * 0.45,
            (w - 0.12, length * 0.55),
            (0.95, roof),
            label,
            Material.GLASS,
            tint,
        )
    elif kind == "truck":
        length, w = rng.uniform(6.5, 9.0), 2.5
        label = TRAIN_ID["truck"]
        top = rng.uniform(3.0, 3.8)
        _add_box(
            layout,
            x,
            z + (length - 2.2) / 2,
            (w, length - 2.2),
            (0.8, top),
            label,
            Material.TRUCK,
            tint,
        )
        _add_box(
            layout,
            x,
            z + length - 1.1,
            (w - 0.1, 2.2),
            (0.5, 2.8),
            label,
            Material.CAR_BODY,
            float(rng.random()),
        )
    else:
        length, w = rng.uniform(10.0, 12.5), 2.55
        label = TRAIN_ID["bus"]
        _add_box(
            layout,
            x,
            z + length / 2,
            (w, length),
            (0.35, rng.uniform(3.0, 3.3)),
            label,
            Material.BUS,
            tint,
        )
    for axle in (0.18, 0.82):
        _add_box(layout, x, z + axle * length, (w - 0.1, 0.7), (0.0, 0.7), label, wheel, tint)
    return length


def _place_vehicles(
    rng: np.random.Generator, layout: Layout, lanes: np.ndarray, parking: list[float]
) -> None:
    street = layout.street
    for x in parking:
        z = rng.uniform(-4.0, 6.0)
        while z < 70.0:
            length = 4.8
            if not street.in_crossing(z, z + length, margin=4.0) and rng.random() < 0.75:
                length = _add_vehicle(rng, layout, x + rng.uniform(-0.2, 0.2), z, "car")
            z += length + rng.uniform(0.5, 6.0)
    for x in lanes:
        z = rng.uniform(10.0, 25.0) if abs(x) < 1.8 else rng.uniform(-2.0, 20.0)
        while z < 110.0:
            if rng.random() < 0.6:
                kind = str(rng.choice(["car", "truck", "bus"], p=[0.86, 0.07, 0.07]))
                z += _add_vehicle(rng, layout, x + rng.uniform(-0.3, 0.3), z, kind)
            z += rng.uniform(6.0, 30.0)
    if rng.random() < 0.35:
        x = lanes[int(rng.integers(0, len(lanes)))] + rng.uniform(-1.0, 1.0)
        z = rng.uniform(6.0, 40.0)
        tint = float(rng.random())
        bike = TRAIN_ID["bicycle"]
        _add_box(layout, x, z, (0.12, 1.7), (0.05, 0.95), bike, Material.BICYCLE, tint)
        _add_box(layout, x, z + 0.6, (0.6, 0.08), (0.95, 1.05), bike, Material.BICYCLE, tint)
        _add_person(rng, layout, x, z, TRAIN_ID["rider"], lift=0.55)


def _add_person(
    rng: np.random.Generator, layout: Layout, x: float, z: float, label: int, lift: float = 0.0
) -> None:
    s = rng.uniform(0.85, 1.1)
    clothes, legs = float(rng.random()), float(rng.random())
    _add_box(
        layout, x, z, (0.34 * s, 0.24 * s), (lift, lift + 0.85 * s), label, Material.LEGS, legs
    )
    _add_box(
        layout,
        x,
        z,
        (0.46 * s, 0.28 * s),
        (lift + 0.85 * s, lift + 1.45 * s),
        label,
        Material.CLOTHES,
        clothes,
    )
    _add_box(
        layout,
        x,
        z,
        (0.2 * s, 0.22 * s),
        (lift + 1.47 * s, lift + 1.72 * s),
        label,
        Material.SKIN,
        float(rng.random()),
    )


def _place_people(rng: np.random.Generator, layout: Layout, lanes: np.ndarray) -> None:
    street = layout.street
    person = TRAIN_ID["person"]
    for _ in range(int(rng.integers(1, 11))):
        side = int(rng.integers(0, 2))
        inner = KERB + street.strip[side] + 0.3
        x = street.curb_x(side, inner + rng.uniform(0.0, max(street.sidewalk[side] - 0.6, 0.1)))
        z = 3.0 + min(rng.exponential(18.0), 75.0)
        _add_person(rng, layout, x, z, person)
    for c0, c1 in street.crossings:
        if c0 > 60 or rng.random() < 0.4:
            continue
        z = (c0 - 2.5) if rng.random() < 0.6 else (c1 + 2.5)
        for _ in range(int(rng.integers(1, 5))):
            x = street.centre + rng.uniform(-1.0, 1.0) * (street.road_half + 1.0)
            _add_person(rng, layout, x, z + rng.uniform(-1.2, 1.2), person)
