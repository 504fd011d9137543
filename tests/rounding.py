"""Checks that a benchmark's printed figures follow from its other printed figures.

Every figure is rounded when printed, so a check allows exactly what the roundings of its inputs
and of its own output can account for, and no more.
"""

from __future__ import annotations


def printed(x: float, decimals: int) -> tuple[float, float]:
    """A printed figure and the most its rounding can have moved it."""
    return x, 0.5 * 10 ** -decimals


def quotient(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """a / b of two positive printed figures, and the most their rounding can move it: the
    quotient's distance to the far end of its interval [(a - ea) / (b + eb), (a + ea) / (b - eb)]."""
    (x, ex), (y, ey) = a, b
    q = x / y
    return q, max((x + ex) / (y - ey) - q, q - (x - ex) / (y + ey))


def matches(figure: float, decimals: int, computed: tuple[float, float]) -> bool:
    """Does a figure printed to `decimals` agree with one computed from other printed figures?"""
    return abs(figure - computed[0]) <= 0.5 * 10 ** -decimals + computed[1] + 1e-9
