"""How each domain looks: palettes, textures, lighting and the camera's imperfections.

Both domains paint the same kind of geometry buffer. The *source* looks like a video game:
saturated flat colours, crisp procedural patterns (bricks, tiles, mown stripes), even
lighting, a perfect sensor. The *target* looks like a street camera: a desaturated palette
with shifted hues, noise-based textures, a random sun with cast shadows, haze, exposure,
gamma and white balance changes, lighting gradients, vignetting, blur and sensor noise.
Classes keep their shapes, context and rough brightness order, so the gap can be bridged.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from uda_data.synthetic.imageops import gaussian_blur, sample_noise
from uda_data.synthetic.layout import GAP, Layout
from uda_data.synthetic.materials import GROUND_MATERIALS, NUM_MATERIALS, Material
from uda_data.synthetic.raycast import GBuffer

Domain = Literal["source", "target"]
M = Material

# Per material, the colours an instance picks from (by its tint), in 0..255 sRGB.
SOURCE_PALETTE: dict[Material, list[tuple[int, int, int]]] = {
    M.SKY: [(60, 140, 250)],
    M.ROAD: [(92, 84, 104), (84, 84, 96), (100, 92, 110)],
    M.MARKING: [(245, 245, 245)],
    M.SIDEWALK: [(214, 178, 140), (200, 170, 160), (222, 196, 150)],
    M.KERB: [(235, 225, 210)],
    M.TERRAIN: [(110, 205, 60), (135, 200, 70)],
    M.FACADE: [
        (196, 82, 60),
        (214, 156, 92),
        (232, 204, 150),
        (156, 92, 168),
        (92, 144, 206),
        (206, 206, 196),
        (236, 120, 80),
    ],
    M.WALL: [(186, 160, 120), (170, 170, 190)],
    M.FENCE: [(160, 110, 60), (90, 160, 110)],
    M.POLE: [(130, 130, 145), (90, 100, 120)],
    M.SIGN: [(235, 40, 40), (40, 90, 235), (250, 210, 20)],
    M.LIGHT: [(250, 200, 10), (50, 50, 50)],
    M.TRUNK: [(120, 74, 36)],
    M.FOLIAGE: [(42, 176, 42), (66, 196, 52), (30, 156, 70)],
    M.CLOTHES: [
        (230, 40, 40),
        (40, 80, 230),
        (250, 220, 40),
        (40, 190, 80),
        (250, 130, 20),
        (170, 40, 200),
        (245, 245, 245),
        (30, 200, 220),
    ],
    M.LEGS: [(40, 60, 170), (30, 30, 40), (120, 80, 40), (200, 200, 210)],
    M.SKIN: [(245, 200, 160), (190, 130, 90), (130, 85, 55)],
    M.CAR_BODY: [
        (225, 30, 30),
        (30, 80, 225),
        (245, 205, 20),
        (30, 180, 60),
        (245, 245, 245),
        (30, 30, 34),
        (250, 120, 20),
        (160, 30, 170),
        (20, 190, 200),
    ],
    M.GLASS: [(40, 70, 110)],
    M.TYRE: [(24, 24, 26)],
    M.TRUCK: [(235, 235, 235), (225, 120, 20), (30, 100, 205)],
    M.BUS: [(245, 185, 20), (205, 30, 30), (30, 125, 205)],
    M.BICYCLE: [(210, 20, 20), (20, 20, 210), (20, 200, 60)],
    M.HOOD: [(20, 22, 28)],
    M.CLUTTER: [(60, 130, 60), (200, 100, 30)],
}
TARGET_PALETTE: dict[Material, list[tuple[int, int, int]]] = {
    M.SKY: [(205, 214, 228)],
    M.ROAD: [(106, 100, 106), (98, 96, 100), (116, 110, 112)],
    M.MARKING: [(205, 205, 195)],
    M.SIDEWALK: [(165, 152, 146), (170, 160, 150), (152, 146, 150)],
    M.KERB: [(175, 175, 170)],
    M.TERRAIN: [(118, 150, 78), (132, 145, 84)],
    M.FACADE: [
        (165, 155, 140),
        (140, 140, 145),
        (185, 175, 155),
        (120, 110, 100),
        (170, 160, 168),
        (150, 130, 115),
    ],
    M.WALL: [(140, 135, 120), (120, 120, 125)],
    M.FENCE: [(105, 110, 105), (130, 120, 100)],
    M.POLE: [(90, 95, 95), (70, 72, 70)],
    M.SIGN: [(60, 90, 170), (200, 200, 190), (180, 60, 50)],
    M.LIGHT: [(45, 45, 42), (60, 62, 50)],
    M.TRUNK: [(72, 62, 50)],
    M.FOLIAGE: [(66, 106, 48), (80, 114, 58), (58, 96, 56)],
    M.CLOTHES: [
        (55, 55, 65),
        (110, 100, 90),
        (150, 45, 55),
        (40, 50, 82),
        (185, 182, 175),
        (90, 110, 92),
        (130, 110, 70),
    ],
    M.LEGS: [(40, 42, 55), (25, 25, 28), (90, 80, 70)],
    M.SKIN: [(210, 170, 140), (160, 115, 90), (110, 80, 60)],
    M.CAR_BODY: [
        (150, 150, 155),
        (40, 40, 45),
        (205, 205, 202),
        (60, 70, 102),
        (120, 42, 42),
        (92, 92, 82),
        (170, 160, 140),
        (70, 80, 70),
    ],
    M.GLASS: [(32, 36, 42)],
    M.TYRE: [(30, 30, 30)],
    M.TRUCK: [(190, 190, 185), (120, 100, 70), (70, 80, 95)],
    M.BUS: [(200, 190, 170), (160, 60, 50), (90, 110, 120)],
    M.BICYCLE: [(60, 60, 62), (120, 40, 40)],
    M.HOOD: [(35, 35, 38)],
    M.CLUTTER: [(80, 85, 70)],
}
SOURCE_WINDOW = np.array([115, 180, 240], dtype=np.float32) / 255
TARGET_WINDOW = np.array([52, 56, 62], dtype=np.float32) / 255


def paint(gb: GBuffer, layout: Layout, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """The H x W x 3 uint8 image of a geometry buffer in one domain's look."""
    palette = SOURCE_PALETTE if domain == "source" else TARGET_PALETTE
    colour = _base_colour(gb, palette)
    if domain == "source":
        image = _paint_source(gb, colour, rng)
    else:
        image = _paint_target(gb, layout, colour, rng)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _base_colour(gb: GBuffer, palette: dict[Material, list[tuple[int, int, int]]]) -> np.ndarray:
    """Each pixel's instance colour: its material's palette entry picked by the tint."""
    table = np.concatenate(
        [np.asarray(palette[M(m)], dtype=np.float32) for m in range(NUM_MATERIALS)]
    )
    counts = np.array([len(palette[M(m)]) for m in range(NUM_MATERIALS)])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    material = gb.material
    # Car roofs are body-coloured although they belong to the glass box.
    roof = (material == M.GLASS) & (gb.normal[1] > 0.5)
    material = np.where(roof, np.uint8(M.CAR_BODY), material)
    count = counts[material]
    pick = np.minimum((gb.tint * count).astype(np.int64), count - 1)
    colour = table[offsets[material] + pick] / 255.0
    # A little per-instance brightness variation on top of the palette choice.
    jitter = 0.9 + 0.2 * np.modf(gb.tint * 13.7)[0]
    return colour * jitter[..., None]


def _facade_windows(gb: GBuffer) -> np.ndarray:
    """Windows on facades: a grid whose spacing is set per building by its tint."""
    facade = gb.material == M.FACADE
    tint, su, sv = gb.tint[facade], gb.su[facade], gb.sv[facade]
    column = 1.8 + 1.6 * np.modf(tint * 7.1)[0]
    storey = 2.8 + 0.8 * np.modf(tint * 3.3)[0]
    fu, fv = np.modf(su / column)[0] % 1.0, np.modf(sv / storey)[0] % 1.0
    upper = (fu > 0.25) & (fu < 0.75) & (fv > 0.3) & (fv < 0.8) & (sv > 3.0)
    shop_u = np.modf(su / 5.0)[0] % 1.0
    shop = (sv > 0.4) & (sv < 2.6) & (shop_u < 0.6) & (np.modf(tint * 5.9)[0] < 0.6)
    out = np.zeros(facade.shape, dtype=bool)
    out[facade] = upper | shop
    return out


def _bus_windows(gb: GBuffer) -> np.ndarray:
    return (gb.material == M.BUS) & (gb.sv > 1.3) & (gb.sv < 2.5) & (np.abs(gb.normal[1]) < 0.5)


def _shading(gb: GBuffer, light: np.ndarray, ambient: float) -> np.ndarray:
    lambert = np.maximum(np.einsum("i,ihw->hw", light, gb.normal), 0.0)
    shade = ambient + (1.0 - ambient) * lambert
    return np.where(gb.material == M.SKY, 1.0, shade).astype(np.float32)


def _sky_elevation(gb: GBuffer) -> np.ndarray:
    dx, dy, dz = gb.rays
    return dy / np.sqrt(dx * dx + dy * dy + dz * dz)


def _paint_source(gb: GBuffer, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    su, sv, m = gb.su, gb.sv, gb.material
    factor = np.ones(m.shape, dtype=np.float32)

    def frac(x: np.ndarray) -> np.ndarray:
        return x - np.floor(x)

    tiles = (frac(su / 0.8) < 0.06) | (frac(sv / 0.8) < 0.06)
    factor[(m == M.SIDEWALK) & tiles] = 0.8
    patches = ((np.floor(su / 1.7) + np.floor(sv / 2.9)) % 2) == 0
    factor[(m == M.ROAD) & patches] = 1.05
    brick_row = np.floor(sv / 0.3)
    mortar = (frac(su / 0.6 + 0.5 * (brick_row % 2)) < 0.07) | (frac(sv / 0.3) < 0.12)
    factor[(m == M.FACADE) & mortar] = 1.18
    blotch = np.sin(su * 5.0) + np.sin(sv * 5.0 + su * 2.0)
    factor[(m == M.FOLIAGE) & (blotch > 0.6)] = 1.25
    factor[(m == M.FOLIAGE) & (blotch < -0.8)] = 0.75
    factor[(m == M.TERRAIN) & (np.floor(sv / 1.5) % 2 == 0)] = 1.1
    factor[(m == M.FENCE) & (frac(su / 0.15) < 0.35)] = 0.55
    factor[(m == M.WALL) & ((frac(su / 1.2) < 0.04) | (frac(sv / 0.6) < 0.06))] = 0.85
    image = colour * factor[..., None]

    image[_facade_windows(gb)] = SOURCE_WINDOW
    image[_bus_windows(gb)] = SOURCE_WINDOW * 0.6
    sky = m == M.SKY
    up = np.clip(_sky_elevation(gb) * 3.0, 0.0, 1.0)[sky, None]
    horizon = np.array([150, 200, 255], dtype=np.float32) / 255
    image[sky] = horizon * (1 - up) + image[sky] * up

    light = np.array([-0.45, 0.85, -0.3])
    image *= _shading(gb, light / np.linalg.norm(light), 0.62)[..., None]
    return image * rng.uniform(0.95, 1.05)


def _paint_target(
    gb: GBuffer, layout: Layout, colour: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    su, sv, m = gb.su, gb.sv, gb.material
    ou, ov = rng.uniform(0, 100, size=2)
    fine, coarse = sample_noise(su + ou, sv + ov, 6.0), sample_noise(su + ov, sv + ou, 0.6)
    amplitude = np.full(NUM_MATERIALS, 0.06, dtype=np.float32)
    amplitude[[M.ROAD, M.SIDEWALK, M.KERB]] = 0.12
    amplitude[[M.FACADE, M.WALL]] = 0.1
    amplitude[[M.FOLIAGE, M.TERRAIN]] = 0.4
    amplitude[[M.SKY]] = 0.0
    factor = 1.0 + amplitude[m] * fine + 0.12 * coarse * (m != M.SKY)
    image = colour * factor[..., None]

    windows = _facade_windows(gb)
    image[windows] = TARGET_WINDOW * (1.0 + 0.8 * np.clip(coarse[windows, None], 0.0, 1.0))
    image[_bus_windows(gb)] = TARGET_WINDOW
    sky = m == M.SKY
    dx, dy, dz = gb.rays
    clouds = sample_noise(dx / dz * 40 + ou, dy / dz * 80 + ov, 1.0)[sky, None]
    up = np.clip(_sky_elevation(gb) * 2.0, 0.0, 1.0)[sky, None]
    zenith = np.array([150, 178, 214], dtype=np.float32) / 255
    image[sky] = (image[sky] * (1 - up) + zenith * up) * (1.0 + 0.08 * clouds)

    elevation, azimuth = rng.uniform(0.35, 1.1), rng.uniform(0.0, 2 * np.pi)
    light = np.array(
        [
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
            np.cos(elevation) * np.cos(azimuth),
        ]
    )
    ambient = rng.uniform(0.45, 0.75)
    shade = _shading(gb, light, ambient)
    shadow = _cast_shadows(gb, layout, light)
    shade = np.where(shadow, np.minimum(shade, ambient + 0.05), shade)
    image *= shade[..., None]

    haze_colour = np.array([200, 205, 210], dtype=np.float32) / 255
    haze = 1.0 - np.exp(-np.where(sky, 0.0, gb.depth) / rng.uniform(120.0, 400.0))
    image = image * (1 - haze[..., None]) + haze_colour * haze[..., None]

    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / w - 0.5, yy / h - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0.0, 0.35) * (xx * np.cos(angle) + yy * np.sin(angle))
    vignette = 1.0 - rng.uniform(0.15, 0.45) * (xx**2 + yy**2) / 0.5
    image *= (gradient * vignette)[..., None]
    white_balance = (1.0 + rng.uniform(-0.08, 0.08, size=3)).astype(np.float32)
    image = np.clip(image * rng.uniform(0.75, 1.3) * white_balance, 0.0, 1.0)
    image = image ** rng.uniform(0.8, 1.25)
    image = gaussian_blur(image, rng.uniform(0.5, 1.1))
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return image + noise * np.float32(rng.uniform(0.008, 0.025))


def _cast_shadows(gb: GBuffer, layout: Layout, light: np.ndarray) -> np.ndarray:
    """Ground pixels that the front facades hide from the sun."""
    ground = np.isin(gb.material, GROUND_MATERIALS)
    x, z = gb.su[ground], gb.sv[ground]
    shadow = np.zeros(x.shape, dtype=bool)
    for row in layout.rows:
        towards = (row.x - x) * light[0] > 0
        if abs(light[0]) < 1e-3 or not towards.any():
            continue
        s = (row.x - x) / light[0]
        z_at = z + s * light[2]
        seg = np.clip(np.searchsorted(row.edges, z_at, side="right") - 1, 0, len(row.heights) - 1)
        blocked = (row.kinds[seg] != GAP) & (s * light[1] < row.heights[seg])
        shadow |= towards & blocked
    out = np.zeros(gb.material.shape, dtype=bool)
    out[ground] = shadow
    return out
