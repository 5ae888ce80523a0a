import pytest
import torch

from common.models import DENSE_MODELS, MODELS, build_model, count_parameters


@pytest.mark.parametrize("name, in_shape", [(n, s) for n in sorted(MODELS) for s in [(1, 28, 28), (3, 32, 32)]])
def test_every_model_maps_images_to_logits(name, in_shape):
    """[B, K] logits, or [B, K, H, W] for a model registered as dense (segmentation)."""
    model = build_model(name, in_shape, 10)
    expected = (2, 10, *in_shape[1:]) if name in DENSE_MODELS else (2, 10)
    assert model(torch.randn(2, *in_shape)).shape == expected


def test_parameter_counts_match_the_papers_nets():
    assert 77_000 < count_parameters(build_model("resnet8", (3, 32, 32), 10)) < 79_000  # FedDF: ~78k
    assert 260_000 < count_parameters(build_model("resnet20", (3, 32, 32), 10)) < 280_000  # He et al.: 0.27M
    # McMahan et al.'s CNN: 1,663,370 parameters on MNIST
    assert count_parameters(build_model("cnn", (1, 28, 28), 10)) == 1_663_370
    # FedGen's MNIST net: conv 1->6, conv 6->16 (with BN), FC 784->32, FC 32->10
    assert count_parameters(build_model("fedgen_cnn", (1, 28, 28), 10)) == 60 + 12 + 880 + 32 + 25_120 + 330
    assert count_parameters(build_model("mlp", (1, 28, 28), 10)) == 784 * 512 + 512 + 512 * 512 + 512 + 5130


def test_layer_norm_option_and_unknown_model():
    with_ln = build_model("mlp", (1, 28, 28), 10, layer_norm=True)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in with_ln.modules()) == 2
    with pytest.raises(KeyError, match="unknown model"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model.__globals__["ResNetCifar"](9, 3, 10)
