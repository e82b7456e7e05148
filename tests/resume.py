"""Shared check for exact resume: an unbroken run vs one stopped after epoch 1 and restored."""

from explorer.training.loop import Trainer


def full_and_resumed(cfg, splits, teacher=None):
    """(unbroken trainer, trainer restored from the state after epoch 1 and run to the end), on CPU."""
    full = Trainer(cfg, splits, "cpu", teacher=teacher)
    full.run()
    part = Trainer(cfg, splits, "cpu", teacher=teacher)
    part.train_epoch()
    resumed = Trainer(cfg, splits, "cpu", teacher=teacher)
    resumed.load_state_dict(part.state_dict())
    resumed.run()
    return full, resumed
