"""Container images that functions run in, built with a fluent builder."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_IMAGE_NAME = "indexify-executor-default"


class ImageDefinition(BaseModel):
    """The JSON form of an :class:`Image`, recorded in the graph definition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tag: str = "latest"
    base_image: str = "python:3.11-slim-bookworm"
    run_commands: tuple[str, ...] = Field(default_factory=tuple)


class Image:
    """An image builder: ``Image().name("x").base_image("python:3.11").tag("1").run("pip ...")``.

    Each call returns a new builder, so a shared base can be extended without surprises.
    """

    def __init__(self, definition: ImageDefinition | None = None) -> None:
        self._definition = definition or ImageDefinition(name=DEFAULT_IMAGE_NAME)

    def _with(self, **changes: object) -> Image:
        return Image(self._definition.model_copy(update=changes))

    def name(self, name: str) -> Image:
        return self._with(name=name)

    def tag(self, tag: str) -> Image:
        return self._with(tag=tag)

    def base_image(self, base_image: str) -> Image:
        return self._with(base_image=base_image)

    def run(self, command: str) -> Image:
        return self._with(run_commands=(*self._definition.run_commands, command))

    def definition(self) -> ImageDefinition:
        return self._definition

    def dockerfile(self) -> str:
        """The Dockerfile that builds this image (used by ``indexify-cli build-image``)."""
        lines = [f"FROM {self._definition.base_image}", "WORKDIR /app"]
        lines += [f"RUN {command}" for command in self._definition.run_commands]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        d = self._definition
        return f"Image(name={d.name!r}, tag={d.tag!r}, base_image={d.base_image!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other._definition == self._definition

    def __hash__(self) -> int:
        return hash(self._definition)
