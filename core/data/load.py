"""`load_data`: run a registered loader, split it with the seed, and place it on the device."""

from __future__ import annotations

import torch

from core.config import DataConfig
from core.data.bundle import DataBundle, Split
from core.data.imageops import channel_stats, resize_uint8
from core.data.registry import SourceData, get_loader
from core.data.splits import stratified_split, stratified_subset
from core.device import resolve_device
from core.errors import DataError

MIB = 1024 * 1024

# Separate streams per use, so that changing data.limit does not reshuffle which images are test.
_SALT = {"pool": 1, "test": 2, "split": 3, "train": 4}


def _seed(split_seed: int, use: str) -> int:
    return split_seed * 7919 + _SALT[use]


def _plan(src: SourceData, cfg: DataConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, rows) per split: which rows of the loader's arrays go where (train cut to data.train_fraction)."""
    plan = _split_plan(src, cfg)
    if cfg.train_fraction < 1.0:
        plan["train"] = _train_share(*plan["train"], cfg)
    return plan


def _train_share(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cfg: DataConfig
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The train split cut to round(train_fraction x its size) images, each class keeping its share.

    Cut after val and test are carved, so a learning curve compares every share on the same val and
    test images; stratified_subset ranks examples by a key that depends on the seed only, so for one
    split_seed a smaller share keeps a subset of a larger one's images (nested curves).
    """
    n = max(1, int(round(cfg.train_fraction * rows.numel())))
    keep = rows[stratified_subset(y[rows], n, _seed(cfg.split_seed, "train"))]
    classes = int(y.max()) + 1 if y.numel() else 0
    missing = int((torch.bincount(y[keep].long(), minlength=classes) == 0).sum()) - \
        int((torch.bincount(y[rows].long(), minlength=classes) == 0).sum())
    if missing > 0:  # a class the full train split has is gone: the students could never predict it
        raise DataError("data.train_fraction", f"{cfg.train_fraction:g} of the train split ({n} of "
                        f"{rows.numel()} images) leaves {missing} class(es) without a train image",
                        "raise data.train_fraction")
    return x, y, keep


def _split_plan(src: SourceData, cfg: DataConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, rows) per split before the train share is applied."""
    if src.has_official_test:
        assert src.test_x is not None and src.test_y is not None
        pool = torch.arange(src.y.numel())
        test = torch.arange(src.test_y.numel())
        if cfg.limit is not None:
            # "At most `limit` images in all": the official test split gets its test_fraction share.
            n_pool = max(1, int(round(cfg.limit * (1.0 - cfg.test_fraction))))
            pool = stratified_subset(src.y, n_pool, _seed(cfg.split_seed, "pool"))
            test = stratified_subset(src.test_y, cfg.limit - n_pool, _seed(cfg.split_seed, "test"))
        val_rows, train_rows = stratified_split(src.y[pool], (cfg.val_fraction,),
                                                _seed(cfg.split_seed, "split"))
        return {"train": (src.x, src.y, pool[train_rows]),
                "val": (src.x, src.y, pool[val_rows]),
                "test": (src.test_x, src.test_y, test)}
    pool = torch.arange(src.y.numel())
    if cfg.limit is not None:
        pool = stratified_subset(src.y, cfg.limit, _seed(cfg.split_seed, "pool"))
    test_rows, val_rows, train_rows = stratified_split(
        src.y[pool], (cfg.test_fraction, cfg.val_fraction), _seed(cfg.split_seed, "split"))
    return {"train": (src.x, src.y, pool[train_rows]),
            "val": (src.x, src.y, pool[val_rows]),
            "test": (src.x, src.y, pool[test_rows])}


def _check_classes(plan: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], class_names: list[str],
                   official_test: bool) -> None:
    """Every class has at least one image in every split (sizes alone pass with a class missing)."""
    _check_sizes({k: int(rows.numel()) for k, (_, _, rows) in plan.items()}, len(class_names), official_test)
    fields = {"test": "data.limit" if official_test else "data.test_fraction", "val": "data.val_fraction",
              "train": "data.val_fraction"}
    for name in ("test", "val", "train"):
        _, y, rows = plan[name]
        counts = torch.bincount(y[rows].long(), minlength=len(class_names))
        missing = [class_names[i] for i in (counts == 0).nonzero().flatten().tolist()]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(fields[name], f"the {name} split has no image of class {shown} (every split needs at "
                            "least one per class)", "add images of that class, or raise "
                            f"{fields[name] if name != 'train' else 'the share of train (lower data.val_fraction)'}")


def _check_sizes(sizes: dict[str, int], num_classes: int, official_test: bool) -> None:
    more = "or use more images (data.limit, or data.count for shapes)"
    fixes = {
        "train": ("data.val_fraction", "lower data.val_fraction"
                  + ("" if official_test else " or data.test_fraction") + f" {more}"),
        "val": ("data.val_fraction", f"raise data.val_fraction {more}"),
        "test": ("data.limit", "raise data.limit") if official_test
        else ("data.test_fraction", f"raise data.test_fraction {more}"),
    }
    # Test is carved first, then val, so report them in that order.
    for name in ("test", "val", "train"):
        n = sizes[name]
        if n < num_classes:
            field, fix = fixes[name]
            raise DataError(field, f"the {name} split has {n} images for {num_classes} classes "
                            "(it needs at least one per class)", fix)


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> DataBundle:
    """Load data set `cfg.name`, split it with `cfg.split_seed` and put it on `device`.

    Data sets without an official test split are split stratified into train/val/test by
    test_fraction and val_fraction (val is a share of what test leaves). With an official test split,
    val is carved from train; `limit` then caps train pool + test together, test getting its
    test_fraction share. train_fraction < 1 then keeps a stratified share of train (val and test as
    they were). Data larger than memory_budget_mb (as uint8) stays on the CPU and streams.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    src = get_loader(cfg.name)(cfg)
    num_classes = len(src.class_names)
    plan = _plan(src, cfg)
    _check_classes(plan, list(src.class_names), src.has_official_test)

    in_chans = int(src.x.shape[1])
    size = cfg.image_size
    total_bytes = sum(int(rows.numel()) for _, _, rows in plan.values()) * in_chans * size * size
    streaming = total_bytes > cfg.memory_budget_mb * MIB
    store = torch.device("cpu") if streaming else device

    splits: dict[str, Split] = {}
    for name, (x, y, rows) in plan.items():
        splits[name] = Split(x=resize_uint8(x[rows], size, device, out_device=store),
                             y=y[rows].to(torch.long).to(store), source_index=rows)
    mean, std = channel_stats(splits["train"].x)
    return DataBundle(name=cfg.name, train=splits["train"], val=splits["val"], test=splits["test"],
                      num_classes=num_classes, in_chans=in_chans, image_size=size,
                      class_names=list(src.class_names), mean=mean, std=std, flip=src.flip,
                      device=device, streaming=streaming, num_workers=cfg.num_workers,
                      augment=cfg.augment)
