"""Data: datasets by name (a registry of plugins), data conditions, the validation split, on-device
augmentation. Importing the package registers the built-in datasets."""

from explorer.data import builtin, cifar, mnist, torchvision_sets  # noqa: F401  (each registers its datasets)
