"""Build any timm model for a data set: name check, size multipliers, starting weights, cost card."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from core.errors import KdlabError, ModelError
from core.models import weights
from core.models.catalog import resolve_name
from core.models.cost import count_flops, count_params
from core.models.sizing import Builder, builder_for
from core.models.spec import ModelSpec, sibling_field

_LOCAL_FIX = "set weights_file to a local .safetensors/.pth file, or pretrained=false"


def _construct(builder: Builder, name: str, field: str, num_classes: int, in_chans: int,
               image_size: int | None, **extra: Any) -> nn.Module:
    """Call builder with the data set's shape; pass img_size only to models that accept it."""
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **extra)
    try:
        if image_size is not None:
            try:
                return builder(img_size=image_size, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        return builder(**kwargs)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - timm raises many types for impossible shapes
        size = f", image_size={image_size}" if image_size is not None else ""
        raise ModelError(field, f"'{name}' cannot be built with num_classes={num_classes}, "
                         f"in_chans={in_chans}{size} ({weights.one_line(err)})",
                         "pick another model or a smaller width/depth change") from None


def _pretrained_cfg(name: str, field: str) -> dict[str, Any]:
    """timm's pretrained cfg for name (tag honoured), or ModelError when none is published."""
    cfg = get_pretrained_cfg(name)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    if not (cfg_dict.get("hf_hub_id") or cfg_dict.get("url") or cfg_dict.get("file")):
        arch, _ = split_model_name_tag(name)
        raise ModelError(field, f"timm publishes no pretrained weights for '{arch}'", _LOCAL_FIX)
    return cfg_dict


def _build_pretrained(spec: ModelSpec, name: str, builder: Builder, field: str, num_classes: int,
                      in_chans: int, image_size: int | None) -> nn.Module:
    """pretrained=True without a file: the local hub cache, else the hub when it is reachable."""
    pre_field = sibling_field(field, "pretrained")
    if spec.scaled:
        raise ModelError(pre_field, "published weights fit only the unscaled model, not width/depth "
                         "multipliers", "drop width/depth, or set weights_file to a matching file")
    cfg = _pretrained_cfg(name, pre_field)
    cached = weights.cached_pretrained_file(cfg)
    if cached is not None:
        model = _construct(builder, name, field, num_classes, in_chans, image_size)
        weights.load_weights_file(model, cached, pre_field)
        return model
    host = weights.hub_host(cfg)
    if weights.offline_by_env() or host is None or not weights.host_reachable(host):
        raise ModelError(pre_field, f"pretrained weights for '{name}' could not be fetched (no network "
                         "and not in the local cache)", _LOCAL_FIX)
    try:
        # timm re-makes the head for num_classes and adapts the stem for in_chans itself here
        return _construct(builder, name, field, num_classes, in_chans, image_size, pretrained=True)
    except ModelError as err:
        raise ModelError(pre_field, f"pretrained weights for '{name}' could not be fetched or loaded "
                         f"({err.problem})", _LOCAL_FIX) from None


def _check_hub_name(name: str, field: str) -> None:
    """An 'hf-hub:' name needs the hub even for its config; fail fast instead of retrying for a minute."""
    if not name.startswith(("hf-hub:", "hf_hub:")):
        return
    host = weights.hub_host({"hf_hub_id": name})
    if weights.offline_by_env() or host is None or not weights.host_reachable(host):
        raise ModelError(field, f"'{name}' needs the Hugging Face hub, which cannot be reached",
                         "use a plain timm name with weights_file set to a local file")


def build_model(spec: ModelSpec, num_classes: int, in_chans: int, *, field: str = "model",
                image_size: int | None = None) -> nn.Module:
    """Build spec on the CPU for a data set; field names the config path in errors (e.g. 'student.model')."""
    name = resolve_name(spec.name, field)
    _check_hub_name(name, field)
    builder = builder_for(spec, name, field)
    if spec.weights_file:
        model = _construct(builder, name, field, num_classes, in_chans, image_size)
        weights.load_weights_file(model, spec.weights_file, sibling_field(field, "weights_file"))
        return model
    if spec.pretrained:
        return _build_pretrained(spec, name, builder, field, num_classes, in_chans, image_size)
    return _construct(builder, name, field, num_classes, in_chans, image_size)


def _build_meta(spec: ModelSpec, num_classes: int, in_chans: int, image_size: int, field: str) -> nn.Module:
    """The architecture alone, on the meta device: no memory, no init, no weights."""
    name = resolve_name(spec.name, field)
    _check_hub_name(name, field)
    builder = builder_for(spec, name, field)
    try:
        return _construct(builder, name, field, num_classes, in_chans, image_size, device="meta")
    except ModelError:
        with torch.device("meta"):  # for models whose constructors take no device argument
            return _construct(builder, name, field, num_classes, in_chans, image_size)


def model_card(spec: ModelSpec, num_classes: int, in_chans: int, image_size: int, *,
               field: str = "model") -> dict[str, Any]:
    """{'name', 'params', 'flops'} of spec for a data set, known before training (meta-device build)."""
    try:
        model = _build_meta(spec, num_classes, in_chans, image_size, field)
        flops = count_flops(model, in_chans, image_size)
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - an op without a meta kernel: measure a real CPU build instead
        model = build_model(ModelSpec(spec.name, spec.width, spec.depth), num_classes, in_chans,
                            field=field, image_size=image_size)
        try:
            flops = count_flops(model, in_chans, image_size)
        except Exception as err:  # noqa: BLE001
            raise ModelError(field, f"'{spec.name}' does not run on {in_chans}x{image_size}x{image_size} "
                             f"images ({weights.one_line(err)})", "pick another model or a larger "
                             "image_size") from None
    return {"name": spec.name, "params": count_params(model), "flops": flops}


def pretrained_status(name: str, field: str = "teachers.0.pretrained") -> tuple[bool, str]:
    """(available, a one-line status) of timm's published weights for `name`, without downloading."""
    try:
        cfg = _pretrained_cfg(name, field)
    except KdlabError as err:
        return False, str(err)
    cached = weights.cached_pretrained_file(cfg)
    if cached is not None:
        return True, f"pretrained weights found in the local cache ({cached.name})"
    host = weights.hub_host(cfg)
    if weights.offline_by_env() or host is None or not weights.host_reachable(host):
        return False, (f"pretrained weights for '{name}' are not cached and {host or 'the hub'} cannot be "
                       "reached: set weights_file to a local checkpoint, or turn pretrained off")
    return True, f"pretrained weights will be downloaded from {host}"
