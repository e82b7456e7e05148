"""The spec's `dataset:` section (and the `kdx train` data flags): field names and types, parsed into a
checked DataSpec."""

from __future__ import annotations

from pydantic import Field, ValidationError

from explorer.data.condition import DataCondition, DataSpec
from explorer.errors import KdxError, pydantic_sentence
from explorer.fields import Strict


class DatasetSection(Strict):
    """The `dataset:` section (and the `kdx train` data flags): field names and types only; the values
    are checked by `DataSpec.validate` and `DataCondition.validate`, the one validator per field."""

    name: str = Field("mnist1d", description="dataset name (see `kdx datasets`)")
    data_dir: str | None = Field(None, description="directory with the dataset (CIFAR, MNIST) or its cache")
    download: bool = Field(False, description="download CIFAR or MNIST into data_dir if missing")
    val_fraction: float = Field(0.1, description="validation split carved from train")
    split_seed: int = Field(0, description="seed of the validation split and the data conditions")
    train_per_class: int | None = Field(None, description="keep n training samples of each class (a balanced subset)")
    label_noise: float = Field(0.0, description="symmetric label-noise rate sigma (train only)")
    imbalance_gamma: float | None = Field(None, description="power-law class imbalance gamma")
    imbalance_max: int | None = Field(None, description="largest class count under imbalance")
    imbalance_min: int | None = Field(None, description="smallest class count under imbalance")
    omit_classes: list[int] = Field([], description="classes dropped from train, e.g. 3,7")

    def data_spec(self) -> DataSpec:
        """The checked DataSpec; KdxError naming `dataset.<field>`."""
        spec = DataSpec(
            dataset=self.name, data_dir=self.data_dir, download=self.download,
            val_fraction=self.val_fraction, split_seed=self.split_seed, train_per_class=self.train_per_class,
            condition=DataCondition(
                label_noise=self.label_noise, imbalance_gamma=self.imbalance_gamma,
                imbalance_max=self.imbalance_max, imbalance_min=self.imbalance_min,
                omit_classes=tuple(self.omit_classes)),
        )
        try:
            spec.validate()
        except KdxError as e:
            field, _, rest = str(e).partition(":")
            raise KdxError(f"dataset.{'name' if field == 'dataset' else field}:{rest}") from None
        return spec


def parse_dataset(fields: dict) -> DataSpec:
    """A `dataset:` section (or the same-named CLI flags) -> DataSpec, with the spec's checks and errors."""
    try:
        section = DatasetSection(**fields)
    except ValidationError as e:
        raise KdxError(pydantic_sentence(e, "dataset.")) from None
    return section.data_spec()
