"""Width and depth multipliers for the timm families whose builders expose them.

ResNet (timm/models/resnet.py): the entry points merge caller kwargs over their own, so `channels`,
`layers` and `stem_width` can be overridden; the variant's own values are read off a meta-device
build so the multipliers scale e.g. resnet10t's (1, 1, 1, 1) blocks, not ResNet's class defaults.

EfficientNet / MobileNet (timm/models/efficientnet.py, mobilenetv3.py): the public entry points
pass `channel_multiplier` to a private `_gen_*` builder themselves, so a caller's kwarg collides.
Instead the entry point is run against stand-in builders to record its `_gen_*` call, and the real
builder is then called with the multipliers composed (ours x the variant's own).
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable
from typing import Any

import timm
from timm.models import model_entrypoint, split_model_name_tag
from torch import nn

from core.errors import ModelError
from core.models.spec import ModelSpec, sibling_field

Builder = Callable[..., nn.Module]

_RESNET_MODULE = "timm.models.resnet"
_GEN_MODULES = ("timm.models.efficientnet", "timm.models.mobilenetv3")
_WIDTH_PARAMS = ("channel_multiplier", "model_width")  # tinynet calls its width knob model_width
_DEPTH_PARAMS = ("depth_multiplier",)

SUPPORTED = ("ResNet family (resnet*, resnext*, seresnet*, ecaresnet*, wide_resnet*; timm resnet.py), "
             "EfficientNet family (efficientnet*, tf_efficientnet*, mobilenetv2*, mnasnet*, mixnet*, "
             "tinynet*, test_efficientnet), MobileNetV3 family (mobilenetv3*, mobilenetv4*, lcnet*, "
             "fbnetv3*); depth only where the builder has a depth multiplier")


def _round_channels(channels: int, mult: float) -> int:
    """Scale a width and round to a multiple of 8 (at least 8), the usual SIMD-friendly choice."""
    return max(8, int(round(channels * mult / 8.0)) * 8)


def _scale_depth(blocks: int, mult: float) -> int:
    """Scale a block count, rounding up like EfficientNet does, keeping at least one block."""
    return max(1, int(math.ceil(blocks * mult)))


def _plain_builder(name: str) -> Builder:
    """timm.create_model with the name fixed."""
    return functools.partial(timm.create_model, name)


@functools.lru_cache(maxsize=256)
def _resnet_defaults(arch: str) -> tuple[tuple[int, ...], tuple[int, ...], int | None]:
    """(channels, layers, stem_width or None for the fixed 7x7 stem) of a resnet.py variant."""
    model = timm.create_model(arch, device="meta")
    stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
    expansion = type(stages[0][0]).expansion
    # feature_info[1:] are the four stages; their widths are channels x block expansion
    channels = tuple(int(info["num_chs"]) // expansion for info in model.feature_info[1:5])
    layers = tuple(len(stage) for stage in stages)
    # a deep stem is conv-bn-act-conv-...; its second conv has stem_width outputs (plain and tiered)
    stem_width = model.conv1[3].out_channels if isinstance(model.conv1, nn.Sequential) else None
    return channels, layers, stem_width


def _resnet_builder(name: str, width: float, depth: float, field: str) -> Builder:
    """create_model with channels/layers/stem_width scaled from the variant's own values."""
    arch, _ = split_model_name_tag(name)
    try:
        channels, layers, stem_width = _resnet_defaults(arch)
    except Exception as err:  # noqa: BLE001 - timm internals moved; say so instead of a traceback
        raise ModelError(field, f"cannot read the stage layout of '{arch}' from timm ({err})",
                         "drop width/depth for this model") from None
    overrides: dict[str, Any] = {}
    if width != 1.0:
        overrides["channels"] = tuple(_round_channels(c, width) for c in channels)
        if stem_width is not None:  # the plain 7x7 stem is fixed at 64 channels inside ResNet
            overrides["stem_width"] = _round_channels(stem_width, width)
    if depth != 1.0:
        overrides["layers"] = tuple(_scale_depth(n, depth) for n in layers)
    return functools.partial(timm.create_model, name, **overrides)


class _Captured(Exception):
    """Raised by the stand-in builder to stop an entry point once its call is recorded."""


def _capture_generator_call(arch: str, kwargs: dict[str, Any]) -> tuple[Builder, inspect.BoundArguments]:
    """Run arch's entry point against stand-in `_gen_*` builders and return the real call it makes.

    The entry point runs as a copy with its own globals dict, so the timm module is never patched
    (safe with concurrent builds) and everything the entry does first (setdefault, partial
    norm layers, local variant names) is honoured exactly.
    """
    entry = inspect.unwrap(model_entrypoint(arch))
    calls: list[tuple[Builder, tuple[Any, ...], dict[str, Any]]] = []

    def stand_in(real: Builder) -> Builder:
        def record(*args: Any, **kw: Any) -> nn.Module:
            calls.append((real, args, kw))
            raise _Captured
        return record

    scope = dict(entry.__globals__)
    for key, value in entry.__globals__.items():
        if key.startswith("_gen_") and callable(value):
            scope[key] = stand_in(value)
    clone = types.FunctionType(entry.__code__, scope, entry.__name__, entry.__defaults__, entry.__closure__)
    clone.__kwdefaults__ = entry.__kwdefaults__
    try:
        clone(**kwargs)
    except _Captured:
        pass
    if len(calls) != 1:
        raise LookupError(f"{entry.__name__} made {len(calls)} _gen_* calls, expected 1")
    generator, args, kw = calls[0]
    return generator, inspect.signature(generator).bind(*args, **kw)


def _find_param(generator: Callable[..., Any], candidates: tuple[str, ...]) -> str | None:
    """The first of candidates that the builder takes as a named parameter."""
    params = inspect.signature(generator).parameters
    return next((p for p in candidates if p in params), None)


def _generator_builder(name: str, width: float, depth: float, width_field: str, depth_field: str) -> Builder:
    """Call the family's `_gen_*` builder directly with composed multipliers (ours x the variant's)."""
    arch, tag = split_model_name_tag(name)
    guard_field = width_field if width != 1.0 else depth_field
    try:
        generator, _ = _capture_generator_call(arch, {"pretrained": False})
    except Exception as err:  # noqa: BLE001 - timm internals changed; a clear error beats a wrong model
        raise ModelError(guard_field, f"cannot apply multipliers to '{arch}': timm's builder layout "
                         f"changed ({type(err).__name__}: {err})",
                         "drop width/depth for this model or pick a ResNet") from None
    params: dict[str, float] = {}
    for mult, candidates, fld, what in ((width, _WIDTH_PARAMS, width_field, "width"),
                                        (depth, _DEPTH_PARAMS, depth_field, "depth")):
        if mult == 1.0:
            continue
        param = _find_param(generator, candidates)
        if param is None:
            raise ModelError(fld, f"'{arch}' has no {what} multiplier (its builder "
                             f"{generator.__name__} takes none)", f"drop {what}; supported: {SUPPORTED}")
        params[param] = mult

    def build(**kw: Any) -> nn.Module:
        kw = {k: v for k, v in kw.items() if v is not None}  # as timm.create_model does
        kw.setdefault("pretrained", False)
        if tag:
            kw.setdefault("pretrained_cfg", tag)
        generator_, bound = _capture_generator_call(arch, kw)
        for param, mult in params.items():
            default = inspect.signature(generator_).parameters[param].default
            bound.arguments[param] = bound.arguments.get(param, default) * mult
        return generator_(*bound.args, **bound.kwargs)

    return build


def builder_for(spec: ModelSpec, name: str, field: str) -> Builder:
    """A callable taking timm kwargs (num_classes, in_chans, ...) that builds spec at its size."""
    width_field, depth_field = sibling_field(field, "width"), sibling_field(field, "depth")
    for value, fld in ((spec.width, width_field), (spec.depth, depth_field)):
        if value is not None and not value > 0:
            raise ModelError(fld, f"multiplier must be > 0 (got {value})", "use e.g. 0.5 or 2")
    if not spec.scaled:
        return _plain_builder(name)
    width = 1.0 if spec.width is None else float(spec.width)
    depth = 1.0 if spec.depth is None else float(spec.depth)
    arch, _ = split_model_name_tag(name)
    module = model_entrypoint(arch).__module__ if timm.is_model(arch) else ""
    if module == _RESNET_MODULE:
        return _resnet_builder(name, width, depth, width_field if width != 1.0 else depth_field)
    if module in _GEN_MODULES:
        return _generator_builder(name, width, depth, width_field, depth_field)
    fld = width_field if width != 1.0 else depth_field
    raise ModelError(fld, f"'{name}' does not support width/depth multipliers",
                     f"pick a smaller timm variant by name instead, or a model from: {SUPPORTED}")
