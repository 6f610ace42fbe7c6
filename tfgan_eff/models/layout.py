"""How a backbone describes itself for transfer: `transfer_layout() -> TransferLayout`.

Transfer code (`tfgan_eff/transfer/`) reads only this description: it never names a
backbone, a layer or a resolution. Every generator and discriminator implements

    def transfer_layout(self) -> TransferLayout     # called once the model is built

and has a `use_sn` attribute (whether its layers are spectrally normalized; heads on D
follow it).

Example, BigGAN's class-conditional 32 px generator:

    TransferLayout(
        layers=(shared, linear, block0, block1, attention1, block2, bn_out, conv_out),
        blocks=(Block("block0", 8), Block("block1", 16, attached=("attention1",)),
                Block("block2", 32)),
        names=BlockNames("block", attached=("attention",)),
        output=("bn_out", "conv_out"), conditional=("shared",))
"""

import dataclasses
from typing import Tuple

import keras


def with_widths(published, overrides, owner):
  """A generator's feature widths, {resolution: channels}: `published` with `overrides`
  (its `widths` argument) applied, checked. Generators that take `widths` expose the
  result as `self.widths`; AdaFM's `high_level = 'new_small'` rebuilds them narrower."""
  overrides = {int(r): c for r, c in (overrides or {}).items()}
  unknown = sorted(set(overrides) - set(published))
  if unknown:
    raise ValueError(f"{owner}.widths names resolutions {unknown}; this generator has "
                     f"{sorted(published)}.")
  bad = {r: c for r, c in overrides.items() if int(c) < 1}
  if bad:
    raise ValueError(f"{owner}.widths must be positive channel counts, got {bad}.")
  return {**{int(r): int(c) for r, c in published.items()},
          **{r: int(c) for r, c in overrides.items()}}


@dataclasses.dataclass(frozen=True)
class Block:
  """One block of a backbone.

  Attributes:
    name: the block's top-level layer.
    resolution: the resolution it works at (G: its output's; D: its input's).
    attached: top-level layers that belong to this block and follow it to wherever the block
      is mapped (BigGAN's attention after a block).
  """
  name: str
  resolution: int
  attached: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BlockNames:
  """How a backbone names its blocks at *any* resolution: `prefix` + a number ("block3",
  "b32"), and the layers attached to block n `attached prefix` + n ("attention3").

  Transfer reads a source checkpoint's blocks with it (the source may be another
  resolution of the same backbone). Blocks run from input to output by increasing number,
  or by decreasing number with `descending` (StyleGAN2's D, named by resolution).

  >>> BlockNames("b", descending=True).blocks(["b8", "b32", "b4_out", "b16", "mbstd"])
  ['b32', 'b16', 'b8']
  """
  prefix: str
  attached: Tuple[str, ...] = ()
  descending: bool = False

  @staticmethod
  def _number(name, prefix):
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdecimal() else None

  def blocks(self, names):
    """The block names among `names` (e.g. a checkpoint's top-level names), input first."""
    found = [(self._number(n, self.prefix), n) for n in set(names)]
    found = sorted((k, n) for k, n in found if k is not None)
    return [n for _, n in (found[::-1] if self.descending else found)]

  def renumber(self, name, block):
    """`name` (a block, or a layer attached to one) as it is called at block `block`'s place:
    renumber("attention2", "block3") == "attention3"."""
    number = self._number(block, self.prefix)
    for prefix in (self.prefix,) + tuple(self.attached):
      if self._number(name, prefix) is not None:
        return f"{prefix}{number}"
    raise ValueError(f"'{name}' is not a block or attached layer named like "
                     f"'{self.prefix}<n>' or {[p + '<n>' for p in self.attached]}.")


@dataclasses.dataclass(frozen=True)
class TransferLayout:
  """A backbone as transfer sees it.

  Attributes:
    layers: every top-level Keras layer, in the model's order (what can be loaded, frozen
      or named in `AdaFMTransfer.g_low_level` / `d_low_level`).
    blocks: the blocks, from input to output.
    names: the naming scheme of the blocks (`BlockNames`), to read a source's blocks.
    output: G's layers after the last block, at full resolution: frozen with the low
      level, never AdaFM-modulated (as the reference's `conv_img`).
    pinned: blocks that take only the source block of the same name (StyleGAN2's 4x4 block
      with its learned constant).
    conditional: variable-path prefixes of the layers that embed class labels (G's class
      embedding, D's projection); G's are not transferred by default.
    heads: D's output heads on the pooled features (final linear layer, projection),
      variable-path prefixes; not transferred by default.
    resolution_buffers: names of non-trainable variables whose shape follows their block's
      resolution (StyleGAN2's fixed noise); a block taken from a source block of another
      resolution keeps their fresh values.
  """
  layers: Tuple[keras.layers.Layer, ...]
  blocks: Tuple[Block, ...]
  names: BlockNames
  output: Tuple[str, ...] = ()
  pinned: Tuple[str, ...] = ()
  conditional: Tuple[str, ...] = ()
  heads: Tuple[str, ...] = ()
  resolution_buffers: Tuple[str, ...] = ()

  def layer_names(self):
    return [layer.name for layer in self.layers]

  def resolutions(self):
    """{top-level layer name: resolution} of the blocks, the layers attached to them and
    the output layers (at the last block's resolution), in that order."""
    res = {b.name: b.resolution for b in self.blocks}
    for b in self.blocks:
      res.update({name: b.resolution for name in b.attached})
    if self.blocks:
      res.update({name: self.blocks[-1].resolution for name in self.output})
    return res
