import pytest
import torch

from imet.errors import UserError
from imet.models import ARCHS, ImetNet, build_model
from imet.train.state import set_trainable

REQUIRED = {"se_resnext50_32x4d", "se_resnext101_32x4d", "densenet121", "densenet161",
            "densenet169", "resnet34", "resnet50", "resnet18", "mobilenet_v3_small"}


def test_registry_has_required_archs_with_official_file_names():
    assert REQUIRED <= set(ARCHS)
    assert ARCHS["se_resnext50_32x4d"].filenames()[0] == "se_resnext50_32x4d-a260b3a4.pth"
    assert ARCHS["resnet18"].filenames()[0] == "resnet18-f37072fd.pth"
    for spec in ARCHS.values():
        assert all(name.endswith(".pth") for name in spec.filenames()), spec.name
        settings = spec.input_settings()
        assert len(settings["mean"]) == len(settings["std"]) == 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One resnet18, one mobilenet_v3_small and timm's efficientnet_b0, built with an empty
    TORCH_HOME (building must never download)."""
    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        torch.manual_seed(0)
        built = {arch: build_model(arch, num_classes=5, dropout=0.25).eval()
                 for arch in ("resnet18", "mobilenet_v3_small", "timm:efficientnet_b0")}
    assert not any(home.rglob("*"))
    return built


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "timm:efficientnet_b0"])
def test_any_input_size_and_aspect(models, arch):
    model = models[arch]
    assert isinstance(model, ImetNet) and model.num_classes == 5
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (1, 3, 48, 112), (1, 3, 96, 40)]:
            assert model(torch.randn(*shape)).shape == (shape[0], 5)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "timm:efficientnet_b0"])
def test_param_groups_partition_all_parameters(models, arch):
    model = models[arch]
    groups = model.param_groups()
    assert set(groups) == {"early", "late", "head"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(groups[name] for name in groups)
    assert [tuple(p.shape) for p in groups["head"]] == [(5, model.head.linear.in_features), (5,)]


@pytest.mark.parametrize("arch", ["resnet18", "timm:resnet18"])
def test_stage_1_trains_only_the_head(arch):
    model = build_model(arch, num_classes=3)
    groups = model.param_groups()
    set_trainable(groups, stage=1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in groups["early"] + groups["late"])
    assert all(p.grad is not None for p in groups["head"])
    set_trainable(groups, stage=2)
    assert all(p.requires_grad for p in model.parameters())


def test_head_is_pool_dropout_linear(models):
    model = models["mobilenet_v3_small"]
    assert isinstance(model.head.pool, torch.nn.AdaptiveAvgPool2d)
    assert model.head.dropout.p == 0.25
    assert model.head.linear.in_features == 576
    assert model.info["arch"] == "mobilenet_v3_small" and model.info["weights"] is None
    assert model.info["mean"] == [0.485, 0.456, 0.406]


def test_unknown_arch_lists_choices():
    with pytest.raises(UserError, match="--arch vgg: unknown architecture; the names are "
                       ".*se_resnext50_32x4d"):
        build_model("vgg", num_classes=3)


def test_a_mistyped_arch_gets_the_close_match():
    with pytest.raises(UserError, match="--arch seresnext50_32x4d: unknown architecture; did you "
                       "mean se_resnext50_32x4d\\? the names are densenet121"):
        build_model("seresnext50_32x4d", num_classes=3)
