"""Surface materials: what a rendered pixel is made of, shared by geometry and appearance.

A material decides the colour family and texture of a pixel; the label decides its class.
They differ where one class has several looks (a car's body, glass and tyres).
"""

from __future__ import annotations

from enum import IntEnum


class Material(IntEnum):
    SKY = 0
    ROAD = 1
    MARKING = 2
    SIDEWALK = 3
    KERB = 4
    TERRAIN = 5
    FACADE = 6
    WALL = 7
    FENCE = 8
    POLE = 9
    SIGN = 10
    LIGHT = 11
    TRUNK = 12
    FOLIAGE = 13
    CLOTHES = 14
    LEGS = 15
    SKIN = 16
    CAR_BODY = 17
    GLASS = 18
    TYRE = 19
    TRUCK = 20
    BUS = 21
    BICYCLE = 22
    HOOD = 23
    CLUTTER = 24


NUM_MATERIALS = len(Material)
GROUND_MATERIALS = (
    Material.ROAD,
    Material.MARKING,
    Material.SIDEWALK,
    Material.KERB,
    Material.TERRAIN,
)
