"""World registry: name -> factory(resolution, **options) -> World. World modules are imported on first use."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

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


def _gaussian(resolution: int | None) -> World:
    from benchmarks.worlds.gaussian import GaussianWorld

    return GaussianWorld() if resolution is None else GaussianWorld(resolution)


def _folder(resolution: int | None, path: str | None = None, captions: str | None = None) -> World:
    from benchmarks.worlds.folder import FolderWorld

    given = {k: v for k, v in (("resolution", resolution), ("captions", captions)) if v is not None}
    return FolderWorld(path, **given)


WORLDS: dict[str, Callable[..., World]] = {
    "shapes": _shapes, "digits": _digits, "gaussian": _gaussian, "folder": _folder,
}


def available_worlds() -> list[str]:
    """Registered world names, sorted."""
    return sorted(WORLDS)


def get_world(name: str, resolution: int | None = None, **options: Any) -> World:
    """Build a world by name; `resolution=None` takes the world's default; `options` (a preset's
    [world_options], e.g. the folder world's `path`) go to its factory."""
    if name not in WORLDS:
        raise UnknownWorldError(f"unknown world {name!r}; available: {', '.join(available_worlds())}")
    factory = WORLDS[name]
    valid = [p for p in inspect.signature(factory).parameters if p != "resolution"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"world {name!r} has no option(s) {unknown}; valid: {', '.join(valid) or 'none'}")
    return factory(resolution, **options)


__all__ = ["WORLDS", "Batch", "UnknownWorldError", "World", "available_worlds", "get_world"]
