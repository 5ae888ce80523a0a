"""FedDG (issue #16): the frequency-space interpolation (corrected Eq. 2, the band mask, the code's DC swap),
the digit domains and their masks, the boundary masks and the InfoNCE loss on hand-made inputs, our Dice loss,
Dice and HD95 against MONAI's, the code's largest-component test, the networks, the first-order episodic step and
its ablation rungs, the leave-one-domain-out federation, a round of every method (device-aware), the config's
bad values, a smoke run with its report, and the smoke workflow."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, compute_hausdorff_distance
from scipy import ndimage

from common.experiments import ConfigError, build_config
from common.models import build_model
from papers.feddg import fourier, losses, metrics
from papers.feddg.config import METHODS, FedDGConfig
from papers.feddg.method import ELCFS, episodic_step, fast_weights, mask_rows, summarise
from papers.feddg.models import FedDGUNet
from tests.conftest import has_data
from tests.device_guard import device_guard

torch.set_num_threads(1)
needs_digits = pytest.mark.skipif(not has_data("mnist", "usps", "mnist_m"),
                                  reason="MNIST / USPS / MNIST-M files not under the data root")


def images(seed: int, shape=(4, 3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- fourier.py
def test_interpolation_keeps_the_phase_and_moves_only_the_band():
    x, other = images(0), images(1)
    A_bank = fourier.amplitude_phase(other)[0]
    lam = torch.tensor([0.2, 0.5, 0.9, 1.0])
    out = fourier.frequency_interpolate(x, A_bank, L=0.1, lam=lam)
    A, P = fourier.amplitude_phase(x)
    A_out, P_out = fourier.amplitude_phase(out)
    M = fourier.low_frequency_mask(16, 16, 0.1)
    expected = torch.where(M, (1 - lam.view(-1, 1, 1, 1)) * A + lam.view(-1, 1, 1, 1) * A_bank, A)
    assert torch.allclose(A_out, expected, atol=1e-4)
    visible = expected > 1e-3
    wrapped = torch.remainder(P_out - P + math.pi, 2 * math.pi) - math.pi
    assert wrapped[visible].abs().max() < 1e-4
    assert not torch.allclose(out, x, atol=1e-3)          # the band did move


def test_lambda_zero_is_the_identity():
    x = images(2)
    A_bank = fourier.amplitude_phase(images(3))[0]
    assert torch.allclose(fourier.frequency_interpolate(x, A_bank, 0.25, torch.zeros(4)), x, atol=1e-5)
    bank = fourier.AmplitudeBank.build([images(4), images(5)])
    assert torch.allclose(fourier.transform_batch(x, bank, 0, 0.25, lam=torch.zeros(4)), x, atol=1e-5)


def test_band_zero_is_the_released_dc_only_swap_a_mean_shift():
    x = images(6)
    A_bank = fourier.amplitude_phase(images(7) * 0.5)[0]
    swapped = fourier.dc_swap(x, A_bank)
    assert torch.allclose(fourier.frequency_interpolate(x, A_bank, 0.0, torch.ones(4)), swapped, atol=1e-5)
    # the DC amplitude of a non-negative image is H W times its mean: the swap replaces each channel's mean
    target_mean = A_bank[..., 0, 0] / (16 * 16)                                    # [B, C]
    shifted = x - x.mean((-2, -1), keepdim=True) + target_mean[..., None, None]
    assert torch.allclose(swapped, shifted, atol=1e-5)


def test_corrected_eq2_on_a_hand_made_spectrum():
    A_local, A_bank = torch.full((1, 1, 4, 4), 4.0), torch.full((1, 1, 4, 4), 8.0)
    M = torch.zeros(4, 4, dtype=torch.bool)
    M[0, 0] = M[0, 1] = True
    got = fourier.interpolate_amplitude(A_local, A_bank, M, torch.tensor([0.25]))
    expected = torch.full((1, 1, 4, 4), 4.0)
    expected[0, 0, 0, :2] = 0.75 * 4 + 0.25 * 8                                     # 5 inside M, 4 outside
    assert torch.equal(got, expected)   # the printed Eq. 2 (M and 1 - M swapped) gives 4 in M, 5 outside


@pytest.mark.parametrize("h, w, L, side", [(32, 32, 0.0, 1), (32, 32, 0.003, 1), (32, 32, 0.05, 3),
                                           (32, 32, 0.1, 7), (32, 32, 0.25, 17), (32, 32, 0.5, 32),
                                           (16, 24, 0.1, 3), (15, 15, 0.2, 7), (384, 384, 0.003, 3)])
def test_band_mask_size_and_place(h, w, L, side):
    M = fourier.low_frequency_mask(h, w, L)
    assert M.shape == (h, w) and int(M.sum()) == side * side
    # the released slice: fftshifted box [c - b, c + b] around c = floor(size / 2), b = floor(L min(h, w))
    b = int(np.floor(min(h, w) * L))
    box = np.zeros((h, w), bool)
    box[h // 2 - b:h // 2 + b + 1, w // 2 - b:w // 2 + b + 1] = True
    assert np.array_equal(M.numpy(), np.fft.ifftshift(box))
    assert bool(M[0, 0])                                                            # DC always inside
    assert torch.equal(M, torch.roll(M.flip(0, 1), (1, 1), (0, 1)))                 # M(-u, -v) = M(u, v)


def test_bank_draws_only_other_clients_seeded():
    clients = [torch.full((n, 1, 4, 4), float(k + 1)) for k, n in enumerate([3, 5, 2])]
    bank = fourier.AmplitudeBank.build(clients)
    assert bank.sizes.tolist() == [3, 5, 2] and bank.amplitudes.shape == (10, 1, 4, 4)
    drawn = bank.draw(1, 300, torch.Generator().manual_seed(0))
    owners = (drawn[:, 0, 0, 0] / 16).round()                                       # DC = (k + 1) H W
    assert set(owners.tolist()) == {1.0, 3.0}                                       # clients 0 and 2, never 1
    assert abs((owners == 1).float().mean().item() - 0.5) < 0.1                     # each other client 1/2
    again = bank.draw(1, 300, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    shared = fourier.AmplitudeBank.build([images(8, (16, 3, 8, 8)), images(9, (8, 3, 8, 8))], fraction=1 / 8,
                                         generator=torch.Generator().manual_seed(0))
    assert shared.sizes.tolist() == [2, 1]


def test_transform_batch_keeps_range_and_shape():
    x = images(10)
    bank = fourier.AmplitudeBank.build([images(11), images(12), images(13)])
    out = fourier.transform_batch(x, bank, 2, 0.1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-3)


# ---------------------------------------------------------------------------------------------- domains.py
@needs_digits
@pytest.mark.parametrize("name", ["mnist", "usps", "mnist_m", "styled_mnist"])
def test_domains_shapes_seeding_and_disjoint_splits(name):
    from papers.feddg.domains import build_domain

    train, test = build_domain(name, 48, 16, seed=0)
    assert train.x.shape == (48, 3, 32, 32) and train.x.dtype == torch.uint8
    assert train.mask.shape == (48, 1, 32, 32) and train.mask.dtype == torch.bool
    assert train.y.shape == (48,) and len(test) == 16 and set(train.y.tolist()) <= set(range(10))
    assert bool(train.mask.flatten(1).any(1).all())                                # every digit has strokes
    same = (train.x[:, None] == test.x[None]).flatten(2).all(2)                    # [48, 16]
    assert not same.any()
    again, _ = build_domain(name, 48, 16, seed=0)
    other, _ = build_domain(name, 48, 16, seed=1)
    assert torch.equal(again.x, train.x) and not torch.equal(other.x, train.x)


@needs_digits
def test_grey_domain_masks_are_the_inked_pixels():
    from papers.feddg.domains import build_domain

    for name in ("mnist", "usps"):
        d, _ = build_domain(name, 64, 0, seed=0)
        assert torch.equal(d.x[:, 0], d.x[:, 1]) and torch.equal(d.x[:, 0], d.x[:, 2])
        assert torch.equal(d.mask[:, 0], d.x[:, 0] > 0)
    usps, _ = build_domain("usps", 64, 0, seed=0)
    assert not usps.mask[..., :6, :].any() and not usps.mask[..., 26:, :].any()    # the 20 x 20 box
    assert not usps.mask[..., :6].any() and not usps.mask[..., 26:].any()


@needs_digits
def test_mnist_m_mask_is_aligned_with_its_strokes():
    """Un-blending with the right mask (255 - value inside) smooths the image; a mask 1 px off does not."""
    from papers.feddg.domains import build_domain

    d, _ = build_domain("mnist_m", 200, 0, seed=0)
    x = d.x.float()

    def tv(mask):
        un = torch.where(mask, 255 - x, x)
        across, down = un[..., 1:] - un[..., :-1], un[..., 1:, :] - un[..., :-1, :]
        return across.abs().mean((1, 2, 3)) + down.abs().mean((1, 2, 3))

    aligned, shifted = tv(d.mask), tv(torch.roll(d.mask, 1, -1))
    assert bool((aligned < tv(torch.zeros_like(d.mask))).all())
    assert (aligned < shifted).float().mean() > 0.95


@needs_digits
def test_styled_mnist_changes_colour_only_where_the_ink_is():
    from papers.feddg.domains import build_domain

    d, _ = build_domain("styled_mnist", 64, 0, seed=0)
    r, b = d.x[:, 0].float(), d.x[:, 2].float()
    outside = ~d.mask[:, 0]
    assert bool((r[outside] > b[outside]).all())                                    # warm background
    ink = ((b - r) * d.mask[:, 0]).sum((1, 2)) / d.mask[:, 0].sum((1, 2))
    assert bool((ink > 0).all())                                                    # blue strokes


# ---------------------------------------------------------------------------------------------- losses.py
def square(side=20, lo=7, hi=12) -> torch.Tensor:
    m = torch.zeros(1, 1, side, side, dtype=torch.bool)
    m[..., lo:hi, lo:hi] = True
    return m


def test_boundary_and_background_of_a_hand_made_square():
    boundary, background = losses.boundary_and_background(square())               # a 5 x 5 square
    assert int(boundary.sum()) == 25 - 9                                            # its 1-px outer ring
    assert not boundary[..., 8:11, 8:11].any() and boundary[..., 7, 7:12].all()
    # five cross dilations: the square grown by an L1 ball of radius 5, 15^2 - 4 corner triangles of 15
    assert int(background.sum()) == 15 * 15 - 4 * 15 - 25
    full = torch.ones(1, 1, 4, 4, dtype=torch.bool)                         # outside the image counts as 0
    assert int(losses.boundary_and_background(full)[0].sum()) == 12


def test_morphology_matches_scipy_on_a_random_mask():
    mask = torch.rand(3, 2, 17, 13, generator=torch.Generator().manual_seed(0)) > 0.4
    boundary, background = losses.boundary_and_background(mask)
    for b in range(3):
        for s in range(2):
            m = mask[b, s].numpy()
            assert np.array_equal(boundary[b, s].numpy(), m & ~ndimage.binary_erosion(m, iterations=1))
            assert np.array_equal(background[b, s].numpy(), ndimage.binary_dilation(m, iterations=5) & ~m)


def test_masked_average_pools_inside_the_mask_only():
    features = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)   # [B, D, H, W]
    mask = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 0, :2] = True                                                        # image 1: empty mask
    got = losses.masked_average(features, mask)                                     # [B, S, D]
    assert torch.equal(got[0, 0], torch.tensor([0.5, 9.5])) and torch.equal(got[1, 0], torch.zeros(2))


def test_nt_xent_on_hand_made_embeddings():
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    for tau in (0.05, 0.5):
        # pairs (0, 1) and (1, 0): cosines 0.6; the negative 2 is at cosine 0 from z0 and 0.8 from z1
        expected = (math.log1p(math.exp(-0.6 / tau)) + math.log1p(math.exp(0.2 / tau))) / 2
        assert losses.nt_xent(3 * z, labels, tau).item() == pytest.approx(expected, rel=1e-5)
    leaf = z.clone().requires_grad_()
    alone = losses.nt_xent(leaf, torch.tensor([1, 1, 1]))                           # no negatives
    alone.backward()
    assert alone.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(z))      # and no NaN gradient


def test_nt_xent_matches_the_pairwise_formula():
    """pytorch_metric_learning's NTXentLoss written pair by pair: mean over positive pairs (a, p) of
    -log(e^{s_ap} / (e^{s_ap} + sum over a's negatives e^{s_an})), s = cosine / tau."""
    gen = torch.Generator().manual_seed(0)
    z, labels, tau = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen), 0.05
    s = F.normalize(z, dim=1) @ F.normalize(z, dim=1).T / tau
    terms = []
    for a in range(10):
        negatives = [math.exp(s[a, n].item()) for n in range(10) if labels[n] != labels[a]]
        for p in range(10):
            if p != a and labels[p] == labels[a]:
                positive = math.exp(s[a, p].item())
                terms.append(-math.log(positive / (positive + sum(negatives))))
    assert losses.nt_xent(z.double(), labels, tau).item() == pytest.approx(float(np.mean(terms)), rel=1e-6)


def test_boundary_contrastive_loss_on_hand_made_feature_maps():
    boundary, background = losses.boundary_and_background(square(12, 4, 8))
    inner, outer = torch.full((1, 2, 12, 12), 5.0), torch.full((1, 2, 12, 12), 5.0)  # 5: must not leak in
    for f, at_boundary in ((inner, (1.0, 0.0)), (outer, (0.6, 0.8))):
        f[:, :, boundary[0, 0]] = torch.tensor(at_boundary).view(1, 2, 1)
        f[:, :, background[0, 0]] = torch.tensor([0.0, 1.0]).view(1, 2, 1)
    tau = 0.05
    # embeddings [inner b (1, 0), outer b (0.6, 0.8), inner bg (0, 1), outer bg (0, 1)], labels [1, 1, 0, 0]
    expected = (math.log1p(2 * math.exp(-0.6 / tau)) + math.log1p(2 * math.exp(0.2 / tau))
                + 2 * math.log1p(math.exp(-1 / tau) + math.exp(-0.2 / tau))) / 4
    got = losses.boundary_contrastive_loss(inner, outer, boundary, background, tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_class_contrastive_pairs_the_two_views_and_the_class():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = losses.class_contrastive_loss(z, z.clone(), torch.tensor([0, 1]), tau=0.5)
    # each anchor: its other view at cosine 1, the other image's two views at cosine 0, tau 0.5
    assert got.item() == pytest.approx(math.log1p(2 * math.exp(-2.0)), rel=1e-5)


def test_dice_loss_is_the_released_formula():
    p = torch.tensor([[0.5, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    got = losses.dice_loss(torch.logit(p.clamp(1e-7, 1 - 1e-7)), t)
    assert got.item() == pytest.approx(1 - (2 * 1.5 + 1e-5) / (2.5 + 2 + 1e-5), abs=1e-5)


def test_dice_loss_equals_monai_dice_loss():
    from monai.losses import DiceLoss

    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 2, 8, 8, generator=gen), (torch.rand(3, 2, 8, 8, generator=gen) > 0.6).float()
    monai = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert losses.dice_loss(logits, target).item() == pytest.approx(monai.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- metrics.py
def blobs(n: int, seed: int) -> torch.Tensor:
    """Random smooth blobs, bool [n, 1, 32, 32]."""
    noise = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(noise, 5, 1, 2) > 0.55


def test_monai_dice_on_hand_made_masks_and_ours_equals_it():
    pred, gt = torch.zeros(2, 1, 10, 10), torch.zeros(2, 1, 10, 10)
    pred[0, 0, 2:6, 2:6], gt[0, 0, 2:6, 3:7] = 1, 1                                 # overlap 4 x 3 of 16 + 16
    pred[1, 0, 0:2, 0:2], gt[1, 0, 0:2, 0:2] = 1, 1
    metric = DiceMetric(include_background=True, reduction="none")
    metric(y_pred=pred, y=gt)
    assert metric.aggregate().flatten().tolist() == pytest.approx([0.75, 1.0])
    assert metrics.dice_per_image(pred.bool(), gt.bool()).tolist() == pytest.approx([0.75, 1.0])
    pred, gt = blobs(40, 1), blobs(40, 2)
    pred[0] = False                                                                 # an empty prediction: 0
    reference = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred.float(), gt.float())
    assert torch.allclose(metrics.dice_per_image(pred, gt), reference[:, 0], atol=1e-6)
    assert metrics.dice_per_image(pred, gt)[0] == 0


def test_monai_hd95_on_hand_made_masks_and_ours_equals_it():
    gt = torch.zeros(1, 1, 32, 32)
    gt[0, 0, 5, 5:25] = 1                                                           # a 20-px line
    shifted = torch.roll(gt, 3, dims=2)                                             # 3 rows down
    hd95 = compute_hausdorff_distance(shifted, gt, include_background=True, percentile=95)
    assert hd95.item() == pytest.approx(3.0)
    assert metrics.hd95_per_image(shifted.bool(), gt.bool()).item() == pytest.approx(3.0)
    outlier = gt.clone()
    outlier[0, 0, 15, 10] = 1                                                # 1 of 21 points, 10 px off
    assert compute_hausdorff_distance(outlier, gt, include_background=True).item() == pytest.approx(10.0)
    assert compute_hausdorff_distance(outlier, gt, include_background=True, percentile=95).item() == 0.0
    assert metrics.hd95_per_image(outlier.bool(), gt.bool()).item() == 0.0
    # one-hot [background, stroke]: the default include_background=False measures the stroke channel only
    one_hot = lambda m: torch.cat([1 - m, m], 1)                                   # noqa: E731
    assert compute_hausdorff_distance(one_hot(shifted), one_hot(gt), percentile=95).tolist() == [[3.0]]


def test_hd95_equals_monai_on_random_masks_and_an_empty_prediction_gets_the_diagonal():
    import warnings

    pred, gt = blobs(60, 3), blobs(60, 4)
    pred[0] = False
    pred[1, :, 0, :] = True                                                         # touches the border
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = compute_hausdorff_distance(pred.float(), gt.float(), include_background=True, percentile=95)[:, 0]
    ours = metrics.hd95_per_image(pred, gt)
    assert torch.isnan(reference[0]) and ours[0].item() == pytest.approx(math.hypot(32, 32))
    assert torch.allclose(ours[1:], reference[1:], atol=1e-4)


def code_largest_component(mask: np.ndarray) -> np.ndarray:
    """`utils/util.py::_connectivity_region_analysis` on one image (an empty mask: kept empty, see metrics.py)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    return labels == np.argmax(ndimage.sum(mask, labels, range(n + 1)))


def test_largest_component_is_the_codes_per_image_and_links_no_two_images():
    hand = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    hand[0, 0, 0, 0:2] = True                                                       # 2 px
    hand[0, 0, 3:5, 3:5] = True                                                     # 4 px: kept
    hand[0, 0, 2, 2] = True                                                         # diagonal only: apart
    hand[1, 0, 0, 0:2] = True                                                       # a tie of two 2-px parts:
    hand[1, 0, 5, 4:6] = True                                                       # the first in scan order
    got = metrics.largest_component(hand)
    assert got[0, 0].sum() == 4 and got[0, 0, 3:5, 3:5].all()
    assert got[1, 0].sum() == 2 and got[1, 0, 0, 0:2].all()
    masks = torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(5)) > 0.55
    masks[3] = False
    got = metrics.largest_component(masks)
    for i in range(40):
        assert np.array_equal(got[i, 0].numpy(), code_largest_component(masks[i, 0].numpy())), i


def test_segmentation_scores_threshold_the_sigmoid():
    from common.data import Dataset

    class Fixed(torch.nn.Module):                                   # logits = +-3 on a 4 x 4 square, else -3
        def forward(self, x):
            out = torch.full((len(x), 1, 8, 8), -3.0)
            out[..., 2:6, 2:6] = 3.0
            return out

    data = Dataset("toy", "test", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                   (0.0,) * 3, (1.0,) * 3, 1)
    truth = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    truth[0, 0, 2:6, 2:6] = True
    truth[1, 0, 2:6, 2:4] = True                                                    # half of it
    scores = metrics.segmentation_scores(Fixed(), data, truth, threshold=0.75, keep_largest=True)
    assert scores["dice"] == pytest.approx((1.0 + 2 * 8 / 24) / 2) and scores["empty"] == 0.0
    none = metrics.segmentation_scores(Fixed(), data, truth, threshold=0.99, keep_largest=True)   # sigmoid(3) < .99
    assert none["dice"] == 0.0 and none["empty"] == 1.0 and none["hd95"] == pytest.approx(math.hypot(8, 8))


# ---------------------------------------------------------------------------------------------- models.py
def test_unet_shapes_norm_and_features():

    net = build_model("feddg_unet", (3, 32, 32), 1, width=4)
    logits, y1 = net(torch.rand(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 1, 32, 32) and y1.shape == (2, 8, 32, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) and not list(net.buffers())
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) > 0
    assert FedDGUNet(1, 1, width=4, depth=3)(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)
    cnn = build_model("feddg_cnn", (3, 32, 32), 10, width=4)
    logits, z = cnn(torch.rand(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10) and z.shape == (2, 128)


# ---------------------------------------------------------------------------------------------- method.py
def test_episodic_step_first_order_fast_weights():

    torch.manual_seed(0)
    net = FedDGUNet(3, 1, width=4, depth=2)
    params = dict(net.named_parameters())
    x_raw, x_freq = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    target = torch.zeros(2, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    boundary, background = losses.boundary_and_background(target.bool(), background_iterations=1)
    lr, clip = 0.5, 0.01
    step, fast = episodic_step(net, params, x_raw, x_freq, lambda out: losses.dice_loss(out, target),
                               lambda fi, fo: losses.boundary_contrastive_loss(fi, fo, boundary, background),
                               meta_step_size=lr, clip_value=clip)
    grads = torch.autograd.grad(losses.dice_loss(net(x_raw), target), list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        assert torch.allclose(fast[name], p - lr * g.clamp(-clip, clip), atol=1e-7)
    assert any((g.abs() > clip).any() for g in grads)                               # the clamp was active
    expected_total = step.inner.item() + step.outer.item() + 0.1 * step.contrast.item()
    assert step.total.item() == pytest.approx(expected_total, rel=1e-6)
    # first order: d L_out(theta') / d theta is the gradient at theta' itself (no Hessian term)
    through = torch.autograd.grad(step.outer, list(params.values()))
    detached = {n: v.detach().requires_grad_() for n, v in fast.items()}
    outer_at_fast = losses.dice_loss(torch.func.functional_call(net, detached, (x_freq,)), target)
    at_fast = torch.autograd.grad(outer_at_fast, list(detached.values()))
    for a, b in zip(through, at_fast):
        assert torch.allclose(a, b, atol=1e-6)


def test_fast_weights_formula():
    params, grads = {"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([300.0, -0.5, -200.0])}
    assert torch.allclose(fast_weights(params, grads, 1e-3, 100.0)["w"], torch.tensor([0.9, 2.0005, 3.1]))


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("L", [-0.01, 0.51, 1.0])
def test_band_outside_zero_half_is_refused(L):
    with pytest.raises(ValueError, match="band size L must lie in \\[0, 0.5\\]"):
        fourier.low_frequency_mask(8, 8, L)
    with pytest.raises(ValueError, match="band size L"):
        fourier.frequency_interpolate(images(0), images(1), L, torch.zeros(4))


def test_mismatched_shapes_are_refused():
    x = images(0)
    with pytest.raises(ValueError, match="shapes differ"):
        fourier.frequency_interpolate(x, images(1, (4, 3, 16, 8)), 0.1, torch.zeros(4))
    with pytest.raises(ValueError, match="shapes differ"):
        fourier.dc_swap(x, images(1, (2, 3, 16, 16)))
    with pytest.raises(ValueError, match="shapes differ"):
        fourier.interpolate_amplitude(x, images(1, (4, 1, 16, 16)), torch.ones(16, 16), torch.zeros(4))
    with pytest.raises(ValueError, match="lam must hold one value per image, shape \\[4\\]"):
        fourier.frequency_interpolate(x, images(1), 0.1, torch.zeros(3))
    with pytest.raises(ValueError, match="one \\[C, H, W\\] shape"):
        fourier.AmplitudeBank.build([images(0), images(1, (4, 3, 8, 8))])
    with pytest.raises(ValueError, match="at least 2 clients"):
        fourier.AmplitudeBank.build([images(0)])
    with pytest.raises(ValueError, match="must share B, H and W"):
        losses.masked_average(torch.rand(2, 4, 8, 8), torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="masks must be \\[B, S, H, W\\]"):
        losses.boundary_and_background(torch.ones(8, 8))
    with pytest.raises(ValueError, match="embeddings \\[N, D\\] and labels \\[N\\]"):
        losses.nt_xent(torch.rand(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="must have one shape"):
        losses.dice_loss(torch.rand(2, 1, 8, 8), torch.rand(2, 2, 8, 8))


def test_bad_domain_and_model_arguments_are_refused():
    from papers.feddg.domains import build_domain

    with pytest.raises(ValueError, match="unknown digit domain 'svhn'"):
        build_domain("svhn", 10, 10, 0)
    with pytest.raises(ValueError, match="BatchNorm is not offered"):
        FedDGUNet(norm="batch")
    with pytest.raises(ValueError, match="client must be in 0..1"):
        fourier.AmplitudeBank.build([images(0), images(1)]).draw(2, 4)


@needs_digits
def test_asking_for_more_images_than_a_domain_holds_is_refused():
    from papers.feddg.domains import build_domain

    with pytest.raises(ValueError, match="mnist_m: 9000 \\+ 2000 images asked, the pool holds 9001"):
        build_domain("mnist_m", 9000, 2000, 0)


# ---------------------------------------------------------------------------------------------- the ablation rungs
def test_episodic_step_without_meta_step_or_contrast_is_plain_training_on_both_batches():
    torch.manual_seed(0)
    net = FedDGUNet(3, 1, width=4, depth=2)
    params = dict(net.named_parameters())
    x_raw, x_freq = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    task = lambda out: losses.dice_loss(out, target)                               # noqa: E731
    never = lambda fi, fo: pytest.fail("the contrastive loss must not run at weight 0")  # noqa: E731
    step, fast = episodic_step(net, params, x_raw, x_freq, task, never, meta_step_size=0.0, contrast_weight=0.0)
    assert fast is params and step.contrast.item() == 0.0
    assert step.total.item() == pytest.approx((task(net(x_raw)) + task(net(x_freq))).item(), rel=1e-6)


def test_each_method_adds_one_rung():
    episodes = {m: FedDGConfig(method=m).episode() for m in METHODS}
    assert [episodes[m]["meta_step_size"] for m in METHODS] == [0.0, 0.0, 1e-3, 1e-3, 0.0]
    assert [episodes[m]["contrast_weight"] for m in METHODS] == [0.0, 0.0, 0.0, 0.1, 0.0]
    assert [FedDGConfig(method=m).uses_transform for m in METHODS] == [False, True, True, True, False]
    assert FedDGConfig().n_clients == 3 and FedDGConfig(method="central").n_clients == 1
    assert FedDGConfig(domains=("mnist", "usps", "mnist_m"), unseen="usps").source_domains == ("mnist", "mnist_m")


def test_band_001_and_0_are_the_same_box_on_32_px():
    """The ablation table's statement: on 32 px, L = 0.01 gives floor(0.32) = 0, the 1 x 1 box of L = 0."""
    assert torch.equal(fourier.low_frequency_mask(32, 32, 0.01), fourier.low_frequency_mask(32, 32, 0.0))
    assert int(fourier.low_frequency_mask(32, 32, 0.05).sum()) == 9


def test_instance_norm_all_but_removes_the_dc_swap_not_the_band():
    """The README's reading of the DC-only swap: it shifts each channel's mean, which the first convolution
    turns into a constant per output channel and the instance norm after it removes (but near the zero-padded
    border); a 3 x 3 band changes the normalised features ten times as much."""
    torch.manual_seed(0)
    first = FedDGUNet(3, 1, width=8, depth=3).down[0].body[:2]                    # conv, instance norm
    x = 0.3 + 0.4 * torch.rand(8, 3, 32, 32)
    style = 0.1 + 0.2 * torch.rand(8, 3, 32, 32) + torch.linspace(0, 0.5, 32).view(1, 1, 1, 32)
    A = fourier.amplitude_phase(style)[0]

    def change(x_new):
        with torch.no_grad():
            return ((first(x_new) - first(x)).norm() / first(x).norm()).item()

    dc, band = change(fourier.dc_swap(x, A)), change(fourier.frequency_interpolate(x, A, 0.05, torch.ones(8)))
    assert (fourier.dc_swap(x, A) - x).norm() / x.norm() > 0.05                    # the input did move
    assert dc < 0.1 and band > 10 * dc


# ---------------------------------------------------------------------------------------------- config.py
@pytest.mark.parametrize("overrides, message", [
    ({"task": "detection"}, "task must be one of segmentation, classification"),
    ({"method": "fedprox"}, "method must be one of fedavg, amplitude_mix"),
    ({"task": "classification"}, "the classification task uses model 'feddg_cnn'"),
    ({"domains": ["mnist", "svhn", "usps"]}, "domains must be distinct names among"),
    ({"domains": ["mnist", "mnist", "usps"], "unseen": "usps"}, "domains must be distinct"),
    ({"domains": ["mnist", "usps"], "unseen": "usps"}, "needs >= 3 domains"),
    ({"unseen": "svhn"}, "unseen must be one of the domains"),
    ({"n_train": 0}, "need n_train >= 1 and n_test >= 1"),
    ({"depth": 1}, "need width >= 1 and depth >= 2"),
    ({"norm": "batch"}, "norm must be 'instance' or 'group'"),
    ({"freq_transform": "swap"}, "freq_transform must be one of interpolate, dc_swap"),
    ({"band": 0.6}, "band \\(L\\) must lie in \\[0, 0.5\\]"),
    ({"band": -0.1}, "band \\(L\\) must lie in"),
    ({"bank_fraction": 0.0}, "bank_fraction must lie in \\(0, 1\\]"),
    ({"meta_step_size": -1e-3}, "meta_step_size must be >= 0"),
    ({"clip_value": 0.0}, "clip_value must be > 0"),
    ({"contrast_weight": -0.1}, "contrast_weight must be >= 0"),
    ({"contrast_tau": 0.0}, "contrast_tau must be > 0"),
    ({"threshold": 1.0}, "threshold must lie in \\(0, 1\\)"),
    ({"participation": 0.5}, "leave participation at 1"),
    ({"local_steps": 10}, "leave local_steps at 0"),
    ({"augment": "flip_crop"}, "leave augment 'none'"),
    ({"vectorize": True}, "leave vectorize false"),
    ({"n_clients": 5}, "n_clients is set from the domains \\(3 source clients"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"unseen_site": 1}, "unknown config key"),
])
def test_bad_config_values_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(FedDGConfig, overrides)


def test_the_cli_reports_a_bad_value_in_one_line(tmp_path, capsys):
    from common.cli import main
    from papers.feddg.__main__ import ENTRY

    out = tmp_path / "x.json"
    assert main(*ENTRY, ["run", "--scale", "smoke", "--setting", "mnistm_feddg", "--set", "band=0.7",
                         "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: band (L) must lie in [0, 0.5], got 0.7") and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- the federation
def tiny(**overrides) -> FedDGConfig:
    return FedDGConfig(**{"n_train": 12, "n_test": 6, "rounds": 1, "width": 2, "depth": 2, "batch_size": 5,
                          **overrides})


@needs_digits
def test_leave_one_domain_out_federation():
    from papers.feddg.domains import build_domain
    from papers.feddg.federation import DomainFederation

    cfg = tiny(unseen="usps", bank_fraction=0.25)
    fed = DomainFederation.build(cfg, seed=0)
    assert fed.client_domains == ("mnist", "mnist_m", "styled_mnist")
    assert [p.tolist() for p in fed.parts] == [list(range(0, 12)), list(range(12, 24)), list(range(24, 36))]
    assert fed.train.x.shape == (36, 3, 32, 32) and fed.train.num_classes == 1
    mnist_train, _ = build_domain("mnist", 12, 6, seed=0)
    assert torch.equal(fed.train.x[:12], mnist_train.x) and torch.equal(fed.masks[:12], mnist_train.mask)
    _, usps_test = build_domain("usps", 12, 6, seed=0)                             # the same draw, left out or not
    assert torch.equal(fed.test.x, usps_test.x) and torch.equal(fed.test_masks, usps_test.mask)
    assert fed.seen.x.shape[0] == 18 and fed.bank.sizes.tolist() == [3, 3, 3]
    assert torch.equal(fed.boundary, losses.boundary_and_background(fed.masks)[0])
    central = DomainFederation.build(tiny(unseen="usps", method="central"), seed=0)
    assert [p.tolist() for p in central.parts] == [list(range(36))]
    classes = DomainFederation.build(tiny(task="classification", model="feddg_cnn"), seed=0)
    assert classes.train.num_classes == 10


def one_round(cfg: FedDGConfig):
    """A federation, the method, and the global model of `cfg` (initialised on the CPU)."""
    from papers.feddg.federation import DomainFederation

    fed = DomainFederation.build(cfg, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg.model, fed.train.shape, fed.train.num_classes, **cfg.model_params())
    return ELCFS(cfg, fed, model), {k: v.detach().clone() for k, v in model.state_dict().items()}


ROUNDS = [dict(method=m) for m in METHODS] + [
    dict(method="feddg", freq_transform="dc_swap"), dict(method="feddg", local_epochs=2),
    dict(method="feddg", task="classification", model="feddg_cnn"),
    dict(method="amplitude_mix", task="classification", model="feddg_cnn", freq_transform="dc_swap")]


@needs_digits
@pytest.mark.parametrize("overrides", ROUNDS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_a_round_of_every_method_is_device_aware_and_reads_the_host_once_per_client(overrides):
    method, state = one_round(tiny(**overrides))
    clients = list(range(len(method.fed.parts)))
    with device_guard() as counts:   # a tensor made without a device lands on `meta` and fails here
        update = method.client_update(state, clients, 1)
    assert counts["host_reads"] <= len(clients)                                     # the divergence check
    assert update.params.keys() == {n for n, _ in method.model.named_parameters()}
    assert all(v.shape[0] == len(clients) for v in update.params.values())
    moved = any(not torch.equal(update.params[n][0], state[n]) for n in update.params)
    assert moved and torch.isfinite(update.loss).all()
    averaged = method.aggregate(state, update)
    metrics_ = method.evaluate(averaged, method.cfg.rounds)
    key = "test_dice" if method.cfg.task == "segmentation" else "test_acc"
    assert 0 <= metrics_[key] <= 1 and ("seen_dice" in metrics_ or "seen_acc" in metrics_)


@needs_digits
def test_clients_keep_their_own_adam_across_rounds_and_the_transform_is_seeded():
    method, state = one_round(tiny())
    first = method.client_update(state, [0, 1, 2], 1)
    assert {c: int(next(iter(method.optimizers[c].state.values()))["step"]) for c in range(3)} == {0: 3, 1: 3, 2: 3}
    method.client_update(state, [0, 1, 2], 2)
    assert int(next(iter(method.optimizers[0].state.values()))["step"]) == 6          # not reset by the average
    again, state_again = one_round(tiny())
    repeat = again.client_update(state_again, [0, 1, 2], 1)
    assert all(torch.equal(first.params[n], repeat.params[n]) for n in first.params)   # same seed, same models


def test_summary_reports_the_final_and_the_best_dice_round():
    history = [{"round": 1, "test_dice": 0.5, "test_hd95": 9.0, "test_empty": 0.1},
               {"round": 2, "test_dice": 0.7, "test_hd95": 4.0, "test_empty": 0.0},
               {"round": 3, "test_dice": 0.6, "test_hd95": 3.0, "test_empty": 0.0, "seen_dice": 0.9, "seen_hd95": 2.0}]
    got = summarise(history, "segmentation")
    assert (got["final_dice"], got["final_hd95"], got["best_dice"], got["best_hd95"], got["best_round"]) == (
        0.6, 3.0, 0.7, 4.0, 2)
    assert summarise([{"round": 1, "test_acc": 0.5, "seen_acc": 0.8}], "classification") == {"final_seen_acc": 0.8}
    mask = torch.tensor([[True, False], [False, True]])
    assert mask_rows(mask) == ["10", "01"]


# ---------------------------------------------------------------------------------------------- the CLI and report
@needs_digits
def test_smoke_runs_then_report(tmp_path):
    import json

    from common.cli import main
    from papers.feddg.__main__ import ENTRY

    results = tmp_path / "results"
    for setting in ("mnistm_fedavg", "mnistm_feddg", "mnistm_fedavg_ref", "cls_mnistm_fedavg", "cls_mnistm_feddg"):
        assert main(*ENTRY, ["run", "--scale", "smoke", "--setting", setting, "--seed", "0", "--device", "cpu",
                             "--out", str(results / setting / "seed0.json")]) == 0
    record = json.loads((results / "mnistm_feddg" / "seed0.json").read_text())
    assert {"final_dice", "best_dice", "final_hd95", "best_hd95", "final_seen_dice", "bank_bytes"} <= set(
        record["summary"]) and "final_test_acc" not in record["summary"]
    assert len(record["summary"]["example_masks"]) == 6 and len(record["summary"]["example_masks"][0]) == 32
    cls = json.loads((results / "cls_mnistm_feddg" / "seed0.json").read_text())
    assert {"final_test_acc", "best_test_acc", "final_seen_acc"} <= set(cls["summary"])
    report = tmp_path / "report"
    assert main(*ENTRY, ["report", "--scale", "smoke", "--results", str(results), "--out", str(report)]) == 0
    claims = {c["id"]: c for c in json.loads((report / "claims.json").read_text())}
    assert claims["feddg_beats_fedavg_dice"]["n_seeds"] == 1
    assert claims["episodic_adds"]["verdict"] == "not run at this scale"
    for name in ("curves_segmentation", "curves_classification", "dice_per_domain", "interpolation",
                 "predictions_mnist_m"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000
    ablation = (report / "tables" / "ablation.csv").read_text()
    assert "FedAvg" in ablation and "FedDG (ELCFS)" in ablation
    regime = (report / "tables" / "regime.csv").read_text()
    assert "mnistm_fedavg" in regime


@pytest.mark.workflow
@needs_digits
def test_feddg_workflow(tmp_path):
    """The smoke report through Snakemake (every smoke setting, then report and publish)."""
    from tests.test_workflow import check_report, run_workflow

    run_workflow("feddg", tmp_path)
    out = tmp_path / "reports" / "smoke" / "feddg"
    check_report(out, ["curves_segmentation", "curves_classification", "dice_per_domain", "interpolation",
                       "predictions_mnist_m"])
    assert (out / "tables" / "ablation.csv").exists() and (out / "tables" / "segmentation.csv").exists()
