"""What a model is: a timm name plus optional size multipliers and a weights source."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A timm model name, optional width/depth multipliers and where its starting weights come from."""

    name: str
    width: float | None = None  # channel multiplier; None or 1.0 = the variant's own widths
    depth: float | None = None  # block-count multiplier; None or 1.0 = the variant's own depths
    pretrained: bool = False  # hub weights (or the local hub cache) when no weights_file is given
    weights_file: str | None = None  # local .safetensors/.pth/.pt/.bin; used whenever it is set

    @property
    def scaled(self) -> bool:
        """True when a width or depth multiplier other than 1 is asked for."""
        return any(m is not None and m != 1.0 for m in (self.width, self.depth))


def sibling_field(field: str, name: str) -> str:
    """The config path of a sibling key: ('teachers.1.model', 'width') -> 'teachers.1.width'."""
    prefix, dot, _ = field.rpartition(".")
    return f"{prefix}.{name}" if dot else name
