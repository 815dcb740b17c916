"""A local folder with one sub-folder of images per class (any format PIL reads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from core.config import DataConfig
from core.data.registry import SourceData, register_dataset
from core.errors import DataError

# PIL modes without colour: if every image has one of these, the data set is kept single-channel.
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _check_link(path: Path, root: Path) -> None:
    """Refuse a symbolic link that resolves to the data root, inside it or above it.

    Such a link reaches images that are already in the root (`ln -s . root/loop` would make a class
    of every image, and put one image in two classes and possibly in both train and test). A link
    to a folder elsewhere (a data disk) is fine.
    """
    target = path.resolve()
    if target == root or root in target.parents or target in root.parents:
        where = "the data root itself" if target == root else "inside the data root" if root in target.parents \
            else "above the data root"
        raise DataError("data.root", f"'{path}' is a symbolic link to '{target}', {where}: its images would "
                        "be read twice", "remove the link, or put the images themselves there")


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError("data.root", f"folder '{root}' does not exist",
                        "set data.root to a folder with one sub-folder of images per class")
    resolved = root.resolve()
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in dirs:
        if p.is_symlink():
            _check_link(p, resolved)
    if not dirs:
        raise DataError("data.root", f"'{root}' has no class sub-folders",
                        "put the images of each class in their own sub-folder of data.root")
    if len(dirs) < 2:
        raise DataError("data.root", f"'{root}' has only one class sub-folder ('{dirs[0].name}')",
                        "add a sub-folder of images for at least one more class")
    return dirs


def _image_files(folder: Path, root: Path, suffixes: set[str]) -> list[Path]:
    """Image files below a class folder, sorted; links into the root refused, no folder walked twice."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:  # a link loop outside the root: walk each folder once
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink():
                _check_link(here / d, root)
        for name in filenames:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
                continue
            found.append(path)
    return sorted(found)


def _read(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """(size x size x 3 uint8 array, is greyscale): centre-cropped to a square, then resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            grey = img.mode in _GREY_MODES
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError("data.root", f"image '{path}' cannot be read ({type(err).__name__})",
                        "delete or replace that file") from None
    w, h = rgb.size
    side = min(w, h)
    # Centre crop keeps the aspect ratio; PIL's bilinear resize averages over the source area when
    # shrinking, so small targets do not alias.
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    rgb = rgb.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(rgb, dtype=np.uint8), grey


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> SourceData:
    """root/<class>/<image> -> RGB (or greyscale if every image is) at cfg.image_size."""
    if not cfg.root:
        raise DataError("data.root", "imagefolder needs a folder",
                        "set data.root to a folder with one sub-folder of images per class")
    root = Path(cfg.root).expanduser()
    suffixes = _image_suffixes()
    images: list[np.ndarray] = []
    labels: list[int] = []
    all_grey = True
    dirs = _class_dirs(root)
    first_seen: dict[tuple[int, int], Path] = {}  # (device, inode) -> the path that reached the file first
    for label, folder in enumerate(dirs):
        files = _image_files(folder, root.resolve(), suffixes)
        if not files:
            raise DataError("data.root", f"class folder '{folder}' has no images",
                            "add images (png, jpg, ...) to it or remove the folder")
        for path in files:
            st = path.stat()
            earlier = first_seen.setdefault((st.st_dev, st.st_ino), path)
            if earlier != path:
                raise DataError("data.root", f"the same image file is reached as '{earlier}' and as '{path}' "
                                "(a link or a hard link)", "keep one of them, so each image has one class and "
                                "one split")
            arr, grey = _read(path, cfg.image_size)
            images.append(arr)
            labels.append(label)
            all_grey = all_grey and grey
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if all_grey:
        x = x[:, :1]  # convert("RGB") copied the grey channel three times
    return SourceData(x=x.contiguous(), y=torch.tensor(labels, dtype=torch.long),
                      class_names=[d.name for d in dirs], flip=True)
