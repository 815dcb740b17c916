"""Built-in data sets; importing this package registers them (order = order in list_datasets)."""

from core.data.sources import digits, shapes, torchvision_sets, imagefolder  # noqa: F401
