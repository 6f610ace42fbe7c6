"""Converters from the reference implementations' networks to ours (bin/convert).

    stylegan2.convert(G=..., D=..., G_ema=..., G_kwargs=...)  # stylegan2-ada-pytorch
    biggan.convert(G_state, D_state, G_ema_state)              # BigGAN-PyTorch
    common.write_run(converted, "runs/converted")              # config.gin + checkpoints/

Reading the reference's files (`pickles.py`) needs torch (`pip install -e '.[convert]'`);
the conversion itself works on numpy state dicts.
"""

from tfgan_eff.convert.common import ConversionError, Converted, read_state_dict, write_run
