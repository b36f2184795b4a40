"""The fusion plan: which layer of a chain also does the work of the layer right after it.

A chain is a model's layer list or one branch of a container (``Layer.sublayers()`` names
its children ``{branch}.{j}``, applied in order to the container's input). Within a chain, a
layer whose ``can_absorb(next)`` holds (BatchNorm2D before a ReLU/GELU, Conv2D or Dense before
a ReLU) is told to ``absorb(next)`` and ``next`` to ``set_absorbed(True)``: it then passes
through. Nothing is fused across chains, so a Residual body's last BatchNorm2D never takes
the ReLU that follows the block's add. The layer list, param keys, checkpoints and export do not change.

The plan names no layer class: the layers answer through those base-class hooks.
"""

from __future__ import annotations

from gpucnn.layers.base import Layer


def chains(layers: list[Layer]) -> list[list[Layer]]:
    """``layers`` itself, then every branch of every container in the tree, each in order."""
    out = [list(layers)]
    for layer in layers:
        branches: dict[str, list[Layer]] = {}
        for name, child in layer.sublayers():
            branches.setdefault(name.rsplit(".", 1)[0], []).append(child)
        for branch in branches.values():
            out += chains(branch)
    return out


def fusable_pairs(layers: list[Layer]) -> list[tuple[Layer, Layer]]:
    """(absorbing, absorbed) pairs of adjacent layers in each chain of the tree, left to right.

    A layer is in one pair at most: an absorbed layer absorbs nothing (it does no work of
    its own to add to), and an absorbing one is not absorbed in turn.
    """
    pairs = []
    for chain in chains(layers):
        i = 0
        while i + 1 < len(chain):
            if chain[i].can_absorb(chain[i + 1]):
                pairs.append((chain[i], chain[i + 1]))
                i += 2
            else:
                i += 1
    return pairs


class FusionPlan:
    """The pairs a model fuses, kept in step with its layer tree.

    ``refresh(layers)`` is cheap when nothing changed (one walk of the tree, compared by
    identity); when the tree or ``enabled`` changed it releases the old pairs and fuses the
    new ones. ``enabled`` False fuses nothing (for debugging: every layer runs its own ops).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self.pairs: list[tuple[Layer, Layer]] = []
        # The tree as last planned: its chains as tuples of the layers themselves (held, so no
        # id is reused by a new layer while the plan refers to the old one).
        self._planned = None

    def refresh(self, layers: list[Layer]) -> None:
        tree = (self.enabled, tuple(tuple(chain) for chain in chains(layers)))
        if tree == self._planned:
            return
        self.release()
        self.pairs = fusable_pairs(layers) if self.enabled else []
        for absorbing, absorbed in self.pairs:
            absorbing.absorb(absorbed)
            absorbed.set_absorbed(True)
        self._planned = tree

    def release(self) -> None:
        """Undo every pair: each layer runs its own ops again."""
        for absorbing, absorbed in self.pairs:
            absorbing.absorb(None)
            absorbed.set_absorbed(False)
        self.pairs = []
        self._planned = None
