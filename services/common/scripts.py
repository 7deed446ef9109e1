"""The Redis Lua scripts, kept as ``.lua`` files beside this module and loaded by name."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["lua", "register"]


@cache
def lua(name: str) -> str:
    """The source of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def register(redis: aioredis.Redis, name: str) -> AsyncScript:
    """``lua/<name>.lua`` registered on ``redis`` (loaded on first use, by its SHA)."""
    return redis.register_script(lua(name))
