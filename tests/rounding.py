"""Checks that a benchmark's printed figures follow from its other printed figures.

Every figure is rounded when printed, so a check allows exactly what the roundings of its inputs
and of its own output can account for, and no more.
"""

from __future__ import annotations


def printed(x: float, decimals: int) -> tuple[float, float]:
    """A printed figure and the most its rounding can have moved it."""
    return x, 0.5 * 10 ** -decimals


def quotient(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """a / b of two printed figures, and the most their rounding can move it (first order)."""
    q = a[0] / b[0]
    return q, q * (a[1] / a[0] + b[1] / b[0])


def matches(figure: float, decimals: int, computed: tuple[float, float]) -> bool:
    """Does a figure printed to `decimals` agree with one computed from other printed figures?"""
    return abs(figure - computed[0]) <= 0.5 * 10 ** -decimals + computed[1] * 1.01 + 1e-12
