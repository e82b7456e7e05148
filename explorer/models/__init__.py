"""Model families for kdx, resolved by name pattern (see registry.py for how a family plugs in).

Families (names are exact, lower case, no leading zeros), one module each:

* resnet.py: ``resnet8/14/20/26/32/44/56/110`` (CIFAR ResNets) and ``resnet8x4``, ``resnet32x4``;
* wrn.py: ``wrn_<depth>_<k>``, pre-activation Wide ResNets with depth = 6n+4;
* small.py: ``cnn1d_w<width>`` (the MNIST-1D CNN) and ``mlp_<width>x<depth>``;
* branches.py: `split_trunk_head` and `MultiBranch` (ONE's multi-branch student), for any family.

Every model's ``forward(x, features=False)`` returns logits, or ``(logits, feats)`` with
``features=True``, where ``feats`` is the family's "blocks" feature role read by forward hooks
(explorer/models/features.py; each family module says what its blocks are). Each model carries ``arch``,
``num_classes``, ``input_shape`` and ``feature_channels`` (channel / unit count of each feat).

Importing this package imports every family module, which is what registers them.
"""

from explorer.models.base import KdxModel, TrunkHead
from explorer.models.registry import (Factory, allowed_archs, build_model, count_params, default_input_family,
                                      is_known_model, list_models, register_family)
from explorer.models import resnet, wrn, small, cnn2d  # isort: skip  # noqa: E402,F401  (registration order = list_models order)
from explorer.models.branches import MultiBranch, split_trunk_head
from explorer.models.resnet import BasicBlock, CifarResNet
from explorer.models.small import MLP, CNN1d
from explorer.models.wrn import PreActBlock, WideResNet

# The built-in families' spelling, as the unknown-architecture error gives it (allowed_archs() is
# always current, including families registered later).
ALLOWED_ARCHS = allowed_archs()

__all__ = [
    "ALLOWED_ARCHS", "BasicBlock", "CNN1d", "CifarResNet", "Factory", "KdxModel", "MLP", "MultiBranch",
    "PreActBlock", "TrunkHead", "WideResNet", "allowed_archs", "build_model", "count_params",
    "default_input_family", "is_known_model", "list_models", "register_family", "split_trunk_head",
]
