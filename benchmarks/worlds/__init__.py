"""World registry: name -> factory(resolution) -> World. World modules are imported on first use."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.worlds.base import Batch, World


class UnknownWorldError(KeyError, ValueError):
    """A world name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def _shapes(resolution: int | None) -> World:
    from benchmarks.worlds.shapes import ShapesWorld

    return ShapesWorld() if resolution is None else ShapesWorld(resolution)


def _digits(resolution: int | None) -> World:
    from benchmarks.worlds.digits import DigitsWorld

    return DigitsWorld() if resolution is None else DigitsWorld(resolution)


WORLDS: dict[str, Callable[[int | None], World]] = {"shapes": _shapes, "digits": _digits}


def available_worlds() -> list[str]:
    """Registered world names, sorted."""
    return sorted(WORLDS)


def get_world(name: str, resolution: int | None = None) -> World:
    """Build a world by name; `resolution=None` takes the world's default."""
    if name not in WORLDS:
        raise UnknownWorldError(f"unknown world {name!r}; available: {', '.join(available_worlds())}")
    return WORLDS[name](resolution)


__all__ = ["WORLDS", "Batch", "UnknownWorldError", "World", "available_worlds", "get_world"]
