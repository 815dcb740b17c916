"""Input checks shared by every combiner: shapes, finiteness, and a val split fit to learn from."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from core.errors import ConfigError

# A fitting scheme needs at least this many val examples per class; fewer and the fitted weights
# mostly memorise noise.
MIN_VAL_PER_CLASS = 2

_FIXED = "or pick a scheme that fits nothing (mean_logit, mean_prob, vote)"


def _stack_members(split: str, value: Tensor | Sequence[Tensor]) -> Tensor:
    """(M, N, K) from a tensor or a list of per-member (N, K) tensors."""
    if isinstance(value, Tensor):
        if value.dim() != 3:
            raise ConfigError("teachers", f"logits of split '{split}' have shape {tuple(value.shape)}, "
                              "not (members, examples, classes)", "stack member logits along dim 0")
        return value
    shapes = [tuple(t.shape) for t in value]
    if not shapes:
        raise ConfigError("teachers", f"split '{split}' has no member logits", "add at least one teacher")
    for i, s in enumerate(shapes):
        if len(s) != 2:
            raise ConfigError("teachers", f"member {i} logits on split '{split}' have shape {s}, not "
                              "(examples, classes)", "recompute the teacher logit cache")
        if s[1] != shapes[0][1]:
            raise ConfigError("teachers", f"member {i} has {s[1]} classes but member 0 has {shapes[0][1]}",
                              "train every teacher on the same data set (same num_classes)")
        if s[0] != shapes[0][0]:
            raise ConfigError("teachers", f"member {i} has {s[0]} examples on split '{split}' but member "
                              f"0 has {shapes[0][0]}", "recompute the teacher logit cache")
    return torch.stack(list(value))


def check_member_logits(logits: Mapping[str, Tensor | Sequence[Tensor]]) -> dict[str, Tensor]:
    """Member logits as {split: (M, N, K) float32}, with one M and K across splits and all finite."""
    if not logits:
        raise ConfigError("teachers", "no member logits were given", "train at least one teacher")
    out: dict[str, Tensor] = {}
    ref: tuple[str, int, int] | None = None
    for split, value in logits.items():
        z = _stack_members(split, value).float()
        m, _, k = z.shape
        if m == 0:
            raise ConfigError("teachers", f"split '{split}' has no member logits", "add at least one teacher")
        if ref is None:
            ref = (split, m, k)
        elif k != ref[2]:
            raise ConfigError("teachers", f"members have {k} classes on split '{split}' but {ref[2]} on "
                              f"'{ref[0]}'", "train every teacher on the same data set (same num_classes)")
        elif m != ref[1]:
            raise ConfigError("teachers", f"split '{split}' has {m} members but '{ref[0]}' has {ref[1]}",
                              "recompute the teacher logit cache")
        # One reduction per member, so the message can name the member that diverged.
        finite = torch.isfinite(z).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = [int(i) for i in torch.nonzero(~finite).flatten()]
            names = ", ".join(str(i) for i in bad)
            raise ConfigError("teachers", f"member {names} gave NaN or inf logits on split '{split}' "
                              "(training diverged)",
                              f"retrain member {names} with a lower train.lr, or drop it from teachers")
        out[split] = z
    return out


def check_val(members: dict[str, Tensor], val_labels: Tensor | None, scheme: str) -> Tensor:
    """The val labels as int64 (N_val,), or a ConfigError saying why the val split cannot be fitted."""
    if "val" not in members or val_labels is None:
        raise ConfigError("data.val_fraction", f"scheme '{scheme}' fits on the val split, but no val "
                          "logits or labels were given",
                          f"hold out a val split (data.val_fraction > 0) {_FIXED}")
    z = members["val"]
    _, n, k = z.shape
    y = val_labels.reshape(-1).long()
    if y.numel() != n:
        raise ConfigError("teachers", f"val logits have {n} rows but there are {y.numel()} val labels",
                          "recompute the teacher logit cache for this data split")
    if n < MIN_VAL_PER_CLASS * k:
        raise ConfigError("data.val_fraction", f"the val split has {n} examples, fewer than "
                          f"{MIN_VAL_PER_CLASS} x {k} classes, too few to fit '{scheme}'",
                          f"raise data.val_fraction or use more data, {_FIXED}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ConfigError("teachers", f"val labels span {lo}..{hi} but members have {k} classes",
                          "train every teacher on this data set (same num_classes)")
    if lo == hi:
        raise ConfigError("data.val_fraction", f"every val label is class {lo}, so '{scheme}' cannot "
                          "be fitted", f"raise data.val_fraction or use a stratified split, {_FIXED}")
    return y.to(z.device)
