"""Continuous frequency space interpolation (CFSI), FedDG Sec. 3.2 (Liu et al., CVPR 2021).

Shapes: B images, C channels, H x W pixels, N amplitude spectra in the bank, K clients.

Every channel of an image x has the 2-D DFT F(x) = A exp(iP): the amplitude A = |F(x)| carries the low-level
appearance ("style"), the phase P = angle(F(x)) the semantics. Each client shares the amplitude spectra of its
images (the distribution bank) and keeps the phases. Client k restyles its image towards a bank amplitude A^n
by interpolating the low-frequency band of its own amplitude, then recombining with its own phase:

    A^{k->n} = A^k (1 - M) + (1 - lam) A^k M + lam A^n M,      lam ~ U(0, 1)      (Eq. 2, as corrected in
    x^{k->n} = Re ifft2(A^{k->n} exp(i P^k))                                       liuquande/FedDG-ELCFS#2)

M is a centred square of side 2b + 1, b = floor(L min(H, W)), in the fftshifted spectrum (the official
`freq_space_interpolation_demo.py::amp_spectrum_swap` and
`dataloaders/fundus_dataloader.py::low_freq_mutate_np`): L = 0 keeps only the DC term. The released training
(`fundus_dataloader.py::Dataset.__getitem__`) calls `source_to_target_freq(..., L=0)` with the lam line
commented out: a full swap of the DC term only (`dc_swap`).
The demo uses L = 0.003 on 384 x 384 images (a 3 x 3 box) and lam in {0.2, ..., 1.0}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def check_band(L: float) -> None:
    if not 0.0 <= L <= 0.5:
        raise ValueError(f"band size L must lie in [0, 0.5] (the box half-side as a fraction of min(H, W)), "
                         f"got {L}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}; "
                         "both must be [B, C, H, W]")


def amplitude_phase(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel amplitude and phase of the 2-D DFT over the last two dims.
    x [..., H, W] -> A, P [..., H, W]."""
    spectrum = torch.fft.fft2(x.float())
    return spectrum.abs(), spectrum.angle()


def from_amplitude_phase(A: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The image with amplitude A and phase P: Re ifft2(A exp(iP)), [..., H, W]."""
    return torch.fft.ifft2(torch.polar(A, P)).real


def low_frequency_mask(h: int, w: int, L: float, device: torch.device | str | None = None) -> torch.Tensor:
    """M [H, W] bool in the unshifted layout (DC at [0, 0]): the fftshifted square |row - H//2| <= b,
    |col - W//2| <= b with b = floor(L min(H, W)), clipped to the image (`low_freq_mutate_np`'s slice)."""
    check_band(L)
    b = math.floor(min(h, w) * L)
    rows = (torch.arange(h, device=device) - h // 2).abs() <= b                    # [H]
    cols = (torch.arange(w, device=device) - w // 2).abs() <= b                    # [W]
    return torch.fft.ifftshift(rows[:, None] & cols[None, :])                      # [H, W]


def interpolate_amplitude(A_local: torch.Tensor, A_bank: torch.Tensor, M: torch.Tensor,
                          lam: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (corrected): A_local (1 - M) + (1 - lam) A_local M + lam A_bank M.
    A_local, A_bank [B, C, H, W]; M [H, W] (0/1); lam [B]."""
    check_same_shape(A_local, A_bank, "local and bank amplitudes")
    if lam.shape != A_local.shape[:1]:
        raise ValueError(f"lam must hold one value per image, shape [{A_local.shape[0]}], got {tuple(lam.shape)}")
    M = M.to(A_local.dtype)
    lam = lam.to(A_local.dtype).view(-1, 1, 1, 1)                                  # [B, 1, 1, 1]
    return A_local * (1 - M) + (1 - lam) * A_local * M + lam * A_bank * M


def frequency_interpolate(x: torch.Tensor, A_bank: torch.Tensor, L: float, lam: torch.Tensor) -> torch.Tensor:
    """x^{k->n}: the images x [B, C, H, W] with their low band (L) moved by lam [B] towards
    A_bank [B, C, H, W], their own phase kept (Eq. 2 and the inverse DFT). No clipping."""
    check_band(L)
    check_same_shape(x, A_bank, "images and bank amplitudes")
    A, P = amplitude_phase(x)
    M = low_frequency_mask(x.shape[-2], x.shape[-1], L, device=x.device)
    return from_amplitude_phase(interpolate_amplitude(A, A_bank, M, lam), P)


def dc_swap(x: torch.Tensor, A_bank: torch.Tensor) -> torch.Tensor:
    """The released training transform (`source_to_target_freq(img, amp, L=0)`): in the fftshifted amplitude,
    the 1 x 1 centre box (the DC term) replaced by the bank's, phase kept. x, A_bank [B, C, H, W]."""
    check_same_shape(x, A_bank, "images and bank amplitudes")
    A, P = amplitude_phase(x)
    A, A_bank = torch.fft.fftshift(A, dim=(-2, -1)), torch.fft.fftshift(A_bank, dim=(-2, -1))
    c_h, c_w = x.shape[-2] // 2, x.shape[-1] // 2
    A[..., c_h, c_w] = A_bank[..., c_h, c_w]
    return from_amplitude_phase(torch.fft.ifftshift(A, dim=(-2, -1)), P)


@dataclass(frozen=True)
class AmplitudeBank:
    """The distribution bank: the amplitude spectra the K source clients share, stacked by client.

    amplitudes [N, C, H, W], client 0's first, then client 1's, ...; sizes [K], how many are each client's."""

    amplitudes: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def build(cls, client_images: list[torch.Tensor], fraction: float = 1.0,
              generator: torch.Generator | None = None) -> "AmplitudeBank":
        """Amplitudes of each client's float images [N_k, C, H, W], or of a random `fraction` of them (the
        released loader keeps a random 1/8 of each client's amplitude files: `random.sample(freq_list,
        int(length / 8))`). Use the same image scale here and in `transform_batch`."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction of images shared must lie in (0, 1], got {fraction}")
        if len(client_images) < 2:
            raise ValueError(f"the bank needs at least 2 clients (each draws from the others), got "
                             f"{len(client_images)}")
        shapes = {tuple(x.shape[1:]) for x in client_images}
        if len(shapes) != 1:
            raise ValueError(f"clients' images must share one [C, H, W] shape, got {sorted(shapes)}")
        banks = []
        for x in client_images:
            keep = max(1, int(len(x) * fraction))
            index = torch.randperm(len(x), generator=generator)[:keep] if keep < len(x) else slice(None)
            banks.append(amplitude_phase(x[index])[0])                             # [N_k, C, H, W]
        return cls(torch.cat(banks), torch.tensor([len(a) for a in banks], device=banks[0].device))

    def draw(self, client: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n amplitudes [n, C, H, W] from the clients other than `client`: a client uniformly among the
        others, then one of its amplitudes uniformly (`np.random.choice(freq_site_idx)`, then
        `np.random.choice` over its files). The draws come from `generator` (on its device), the amplitudes
        stay on the bank's device."""
        K = len(self.sizes)
        if not 0 <= client < K:
            raise ValueError(f"client must be in 0..{K - 1}, got {client}")
        on = {"generator": generator, "device": generator.device if generator is not None else "cpu"}
        others = torch.tensor([k for k in range(K) if k != client], device=on["device"])
        partner = others[torch.randint(len(others), (n,), **on)].to(self.sizes.device)          # [n]
        offsets = torch.cumsum(self.sizes, 0) - self.sizes                                       # [K]
        u = torch.rand(n, **on).to(self.sizes.device)
        index = offsets[partner] + (u * self.sizes[partner]).long().clamp_max(self.sizes[partner] - 1)
        return self.amplitudes[index]


def transform_batch(x: torch.Tensor, bank: AmplitudeBank, client: int, L: float,
                    generator: torch.Generator | None = None,
                    lam: torch.Tensor | None = None) -> torch.Tensor:
    """Client `client`'s batch x [B, C, H, W] (floats in [0, 1]) in the styles of the other clients: one bank
    amplitude and one lam ~ U(0, 1) per image (or the given lam [B]), Eq. 2, clipped to [0, 1] as the released
    loader clips to [0, 255]. L = 0 with lam = 1 is the released training's DC-only swap."""
    A_bank = bank.draw(client, len(x), generator).to(x.device)
    if lam is None:
        device = generator.device if generator is not None else "cpu"
        lam = torch.rand(len(x), generator=generator, device=device)
    return frequency_interpolate(x, A_bank, L, lam.to(x.device)).clamp(0.0, 1.0)
