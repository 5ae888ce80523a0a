import torch

from common.augment import cutout


def test_cutout_zeroes_a_16_by_16_square_away_from_the_border():
    x = torch.ones(2, 1, 32, 32)
    out = cutout(x, torch.tensor([16, 0]), torch.tensor([16, 31]), size=16)
    assert (out[0] == 0).sum() == 16 * 16                      # centred: rows and columns 8..23
    assert out[0, 0, 8:24, 8:24].eq(0).all() and out[0, 0, 7].eq(1).all() and out[0, 0, 24].eq(1).all()
    assert (out[1] == 0).sum() == 8 * 9                        # corner: clipped to rows 0..7, columns 23..31
