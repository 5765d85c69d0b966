"""Train a site's camera-style GAN on the site's own images, resumably, and translate with it.

StarGAN's objective: the discriminator is a WGAN-GP critic (λ_gp 10) that also classifies the
camera of real images (λ_cls 1); every ``n_critic`` iterations the generator learns to fool
it, to make its output classified as the target camera, to come back to the input when
translated back to the source camera (L1 cycle, λ_rec 10), and — the identity term DAPRH
declares but never uses — to leave an image alone when asked for its own camera (λ_idt 1),
which keeps colours steady in short CPU runs. Adam (1e-4, β 0.5/0.999); the learning rate
decays linearly to 0 over the last half of the iterations.

Domains are the cameras that have training images (``cameras``), so a site whose camera 3
never recorded anyone trains on the others. The checkpoint holds both networks, both
optimisers, the iteration and the random state; a run stopped at any point resumes to the
same result as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedreid.augment.stargan import CamStyleDiscriminator, CamStyleGenerator, check_gan_size

CHECKPOINT_FORMAT = 1
GanProgress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class GanOptions:
    """What shapes the GAN and its training (``iterations`` may grow when resuming)."""

    iterations: int = 2000  # discriminator steps; the generator steps every n_critic
    batch_size: int = 16  # images per step
    dim: int = 16  # generator width (StarGAN: 64)
    res_blocks: int = 3  # generator residual blocks (StarGAN: 6)
    d_dim: int = 16  # discriminator width (StarGAN: 64)
    lr: float = 1e-4  # Adam learning rate of both networks
    n_critic: int = 5  # discriminator steps per generator step
    lambda_gp: float = 10.0  # gradient penalty
    lambda_cls: float = 1.0  # camera classification
    lambda_rec: float = 10.0  # cycle reconstruction
    lambda_idt: float = 1.0  # identity (own-camera) reconstruction
    seed: int = 0  # sampling, flips and target cameras

    def __post_init__(self) -> None:
        for key in ("iterations", "batch_size", "dim", "d_dim", "n_critic"):
            if getattr(self, key) < 1:
                raise ValueError(f"GAN option {key}={getattr(self, key)} must be >= 1")
        if self.res_blocks < 0 or self.lr <= 0:
            raise ValueError(f"GAN options res_blocks={self.res_blocks} must be >= 0 and lr={self.lr} > 0")


# options a checkpoint must agree on to be resumed (iterations may change)
_ARCH_KEYS = ("batch_size", "dim", "res_blocks", "d_dim", "lr", "n_critic", "lambda_gp", "lambda_cls",
              "lambda_rec", "lambda_idt", "seed")


@dataclass
class CamStyleGAN:
    """A trained generator and the site cameras its domains stand for."""

    generator: CamStyleGenerator
    cameras: list[int]
    image_size: tuple[int, int]
    iterations: int

    def domain(self, camids: np.ndarray) -> np.ndarray:
        """Domain index of each camera id (ValueError for a camera the GAN never saw)."""
        lookup = {c: i for i, c in enumerate(self.cameras)}
        unknown = sorted({int(c) for c in camids} - set(lookup))
        if unknown:
            raise ValueError(f"cameras {unknown} have no domain in this GAN (trained on cameras "
                             f"{self.cameras}); retrain it on the site's current images")
        return np.array([lookup[int(c)] for c in camids], dtype=np.int64)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, target_cameras: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` images rendered as ``target_cameras`` (site camera ids)."""
        if tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[2:])}, the GAN was trained at {self.image_size}; "
                             "decode them at the GAN's size")
        domains = torch.from_numpy(self.domain(np.asarray(target_cameras)))
        self.generator.eval()
        out = torch.empty_like(images)
        for start in range(0, len(images), batch_size):
            x = to_unit(images[start:start + batch_size])
            y = self.generator(x, domains[start:start + batch_size])
            out[start:start + batch_size] = from_unit(y)
        return out


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div(127.5).sub(1.0)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def _gradient_penalty(critic: CamStyleDiscriminator, real: torch.Tensor, fake: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    src, _ = critic(mix)
    grad = torch.autograd.grad(src.sum(), mix, create_graph=True)[0]
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _lr_at(iteration: int, total: int, base: float) -> float:
    start = total // 2
    return base if iteration < start else base * max(0.0, (total - iteration) / max(1, total - start))


def _save(path: Path, blob: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _check_resume(path: Path, blob: dict, options: GanOptions, cameras: list[int],
                  size: tuple[int, int]) -> None:
    if blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a camera-style GAN checkpoint of format {CHECKPOINT_FORMAT}; "
                         "delete it to train from scratch")
    saved = blob["options"]
    for key in _ARCH_KEYS:
        if saved[key] != getattr(options, key):
            raise ValueError(f"{path}: checkpoint has {key}={saved[key]!r}, this run {getattr(options, key)!r}; "
                             "pass the same option to resume, or delete the checkpoint to start over")
    if list(blob["cameras"]) != cameras or tuple(blob["image_size"]) != size:
        raise ValueError(f"{path}: checkpoint was trained on cameras {blob['cameras']} at "
                         f"{tuple(blob['image_size'])}, this site has cameras {cameras} at {size}; "
                         "delete the checkpoint to train from scratch")


def train_camstyle_gan(images: torch.Tensor, camids: np.ndarray, options: GanOptions, *,
                       checkpoint: Path | None = None, checkpoint_every: int = 200,
                       progress: GanProgress | None = None) -> CamStyleGAN:
    """Train (or resume, or just load when finished) the GAN on uint8 ``images [N, 3, H, W]``
    with camera ids ``camids``. ``checkpoint``: where to save every ``checkpoint_every``
    iterations and at the end; an existing one is resumed when its options match."""
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(camids):
        raise ValueError(f"images must be uint8 [N, 3, H, W] with one camera id each, got {images.dtype} "
                         f"{tuple(images.shape)} and {len(camids)} camera ids")
    size = (int(images.shape[2]), int(images.shape[3]))
    check_gan_size(size)
    cameras = sorted({int(c) for c in camids})
    domains = torch.from_numpy(np.searchsorted(cameras, np.asarray(camids)))
    c = len(cameras)
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed alone
        torch.manual_seed(options.seed)
        g_net = CamStyleGenerator(c, options.dim, options.res_blocks)
        d_net = CamStyleDiscriminator(c, size, options.d_dim)
    g_opt = torch.optim.Adam(g_net.parameters(), options.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d_net.parameters(), options.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(options.seed)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        _check_resume(checkpoint, blob, options, cameras, size)
        g_net.load_state_dict(blob["generator"])
        d_net.load_state_dict(blob["discriminator"])
        g_opt.load_state_dict(blob["g_opt"])
        d_opt.load_state_dict(blob["d_opt"])
        gen.set_state(blob["rng"])
        start = int(blob["iteration"])
    total = options.iterations
    logs: dict[str, float] = {}
    g_net.train()
    d_net.train()
    for it in range(start, total):
        lr = _lr_at(it, total, options.lr)
        for opt in (g_opt, d_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        idx = torch.randint(0, len(images), (options.batch_size,), generator=gen)
        real = to_unit(images[idx])
        flips = torch.rand(len(idx), generator=gen) < 0.5
        real[flips] = real[flips].flip(-1)
        org = domains[idx]
        trg = (org + torch.randint(1, c, (len(idx),), generator=gen)) % c  # another camera

        src_real, cls_real = d_net(real)
        with torch.no_grad():
            fake = g_net(real, trg)
        src_fake, _ = d_net(fake)
        d_cls = F.cross_entropy(cls_real, org)
        gp = _gradient_penalty(d_net, real, fake, gen)
        d_loss = -src_real.mean() + src_fake.mean() + options.lambda_cls * d_cls + options.lambda_gp * gp
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        logs.update(d_loss=d_loss.item(), d_cls=d_cls.item(), gp=gp.item())

        if (it + 1) % options.n_critic == 0:
            fake = g_net(real, trg)
            src_fake, cls_fake = d_net(fake)
            g_cls = F.cross_entropy(cls_fake, trg)
            rec = (g_net(fake, org) - real).abs().mean()
            g_loss = -src_fake.mean() + options.lambda_cls * g_cls + options.lambda_rec * rec
            if options.lambda_idt > 0:
                idt = (g_net(real, org) - real).abs().mean()
                g_loss = g_loss + options.lambda_idt * idt
                logs["g_idt"] = idt.item()
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            logs.update(g_loss=g_loss.item(), g_cls=g_cls.item(), g_rec=rec.item())

        done = it + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == total):
            _save(checkpoint, {
                "format": CHECKPOINT_FORMAT, "iteration": done, "options": asdict(options),
                "cameras": cameras, "image_size": size, "generator": g_net.state_dict(),
                "discriminator": d_net.state_dict(), "g_opt": g_opt.state_dict(),
                "d_opt": d_opt.state_dict(), "rng": gen.get_state(), "logs": dict(logs),
            })
        if progress is not None:
            progress(done, total, logs)
    g_net.eval()
    return CamStyleGAN(generator=g_net, cameras=cameras, image_size=size, iterations=max(start, total))
