"""The networks against the seed notebook's layer list and Pyro's example MLP."""

import pytest
import torch
from torch import nn

from ppl_models.vae.networks import build_networks

# The notebook's VariationalAutoEncoder, transcribed: (in, out, kernel, padding) of each Conv2d.
NOTEBOOK_ENCODER_CONVS = [
    (1, 8, 3, 0),
    (8, 8, 3, 0),
    (8, 16, 3, 0),
    (16, 16, 3, 0),
    (16, 32, 2, 0),
    (32, 32, 2, 0),
]
NOTEBOOK_DECODER_CONVS = [
    (32, 32, 1, 0),
    (32, 16, 3, 2),
    (16, 16, 3, 2),
    (16, 8, 3, 2),
    (8, 8, 3, 1),
    (8, 1, 3, 1),
]


def convs(module: nn.Module) -> list[tuple[int, int, int, int]]:
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.padding[0])
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]


def test_conv_networks_are_the_notebooks():
    encoder, decoder = build_networks("conv", 32)
    assert convs(encoder) == NOTEBOOK_ENCODER_CONVS
    assert convs(decoder) == NOTEBOOK_DECODER_CONVS
    assert sum(isinstance(m, nn.MaxPool2d) for m in encoder.modules()) == 3
    upsamples = [m for m in decoder.modules() if isinstance(m, nn.Upsample)]
    assert [(u.scale_factor, u.mode) for u in upsamples] == [(2.0, "bilinear")] * 3
    assert (encoder.loc.in_features, encoder.loc.out_features) == (32, 32)
    assert (encoder.log_scale.in_features, encoder.log_scale.out_features) == (32, 32)
    assert sum(isinstance(m, nn.LeakyReLU) for m in encoder.modules()) == 6
    assert sum(isinstance(m, nn.LeakyReLU) for m in decoder.modules()) == 5


@pytest.mark.parametrize("batch", [1, 5])
def test_conv_shapes_round_trip(batch):
    encoder, decoder = build_networks("conv", 32)
    loc, log_scale = encoder(torch.rand(batch, 1, 28, 28))
    assert loc.shape == log_scale.shape == (batch, 32)
    # a 32x1x1 latent image grows to 1x28x28: 1 -> 2 -> 4 -> 6 -> 12 -> 14 -> 14 -> 28 -> 28
    assert decoder(torch.randn(batch, 32)).shape == (batch, 1, 28, 28)
    body = decoder.body
    x = torch.randn(1, 32, 1, 1)
    sizes = []
    for layer in body:
        x = layer(x)
        if isinstance(layer, nn.Conv2d | nn.Upsample):
            sizes.append(x.shape[-1])
    assert sizes == [1, 2, 4, 6, 12, 14, 14, 28, 28]


def test_mlp_is_784_400_50_with_softplus():
    encoder, decoder = build_networks("mlp", 50, 400)
    # weights + biases: encoder 784*400+400 + two heads 400*50+50; decoder 50*400+400 + 400*784+784
    assert sum(p.numel() for p in encoder.parameters()) == 784 * 400 + 400 + 2 * (400 * 50 + 50)
    assert sum(p.numel() for p in decoder.parameters()) == 50 * 400 + 400 + 400 * 784 + 784
    assert any(isinstance(m, nn.Softplus) for m in encoder.modules())
    loc, log_scale = encoder(torch.rand(3, 1, 28, 28))
    assert loc.shape == log_scale.shape == (3, 50)
    assert decoder(torch.randn(3, 50)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize(
    "args, message",
    [
        (("resnet", 32), "arch must be one of conv, mlp, got 'resnet'"),
        (("conv", 0), "latent_dim must be >= 1, got 0"),
        (("mlp", 2, 0), "hidden_dim must be >= 1, got 0"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        build_networks(*args)
