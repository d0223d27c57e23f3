"""Self-distillation objectives used by EPSD's variants. Each runs its own forward (``forward_loss``).

* CS-KD (Yun et al., CVPR 2020, Eq. 3): for each sample ``x`` another sample ``x'`` of the same class is
  drawn; ``L = CE(f(x), y) + lam * T^2 * KL(softmax(f(x')/T) || softmax(f(x)/T))`` with ``f(x')``
  detached (defaults T = 4, lam = 1, as in the paper).
* PS-KD (Kim et al., ICCV 2021, Eq. 4): soft targets ``(1 - a_t) * onehot(y) + a_t * p_{t-1}(x)``, the
  model's own predictions for ``x`` in the previous epoch, ``a_t = a_T * (t + 1) / T`` with a_T = 0.8;
  the loss is the cross-entropy with those targets (plain CE in the first epoch, and for a sample with no
  prediction yet: one the loader's dropped last batch left out).
* DLB (Shen et al., CVPR 2022, Eq. 5): every batch is the new batch plus half of the previous batch;
  ``L = CE(all) + lam * T^2 * KL(p_{t-1}(kept) || p_t(kept))`` where ``p_{t-1}`` are the (detached)
  predictions made on the kept half one iteration earlier (T = 3, lam = 1). The kept half is reused with
  the augmentation it had (a kdprune simplification).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdprune.losses.kd import Objective


def _kl_soft(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = F.log_softmax(target_logits.float().detach() / temperature, dim=-1)
    s = F.log_softmax(logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


def cskd_loss(logits, partner_logits, y, temperature: float = 4.0, lam: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y) + lam * _kl_soft(partner_logits, logits, temperature)


def pskd_loss(logits, y, previous_probs: torch.Tensor | None, alpha_t: float) -> torch.Tensor:
    target = F.one_hot(y, logits.shape[-1]).float()
    if previous_probs is not None:
        target = (1 - alpha_t) * target + alpha_t * previous_probs
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def dlb_loss(logits_all, y_all, previous_kept_logits, temperature: float = 3.0, lam: float = 1.0) -> torch.Tensor:
    loss = F.cross_entropy(logits_all.float(), y_all)
    if previous_kept_logits is None:
        return loss
    kept = logits_all[-previous_kept_logits.shape[0]:]
    return loss + lam * _kl_soft(previous_kept_logits, kept, temperature)


class SelfDistillation(Objective):
    """Base: attached to the training loader; ``forward_loss(model, x, y, idx) -> (loss, logits of x)``."""

    last_extra_images = 0

    def attach(self, loader) -> None:
        self.loader = loader

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch, epochs

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __call__(self, logits, targets, teacher_logits=None):  # plain CE when used without its own forward
        return F.cross_entropy(logits.float(), targets)


class CSKD(SelfDistillation):
    name = "cs-kd"

    def __init__(self, temperature: float = 4.0, lam: float = 1.0, seed: int = 0):
        self.temperature, self.lam, self.seed = temperature, lam, seed
        self.step = 0

    def attach(self, loader) -> None:
        super().attach(loader)
        labels = loader.labels.cpu()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(order)
        pos[order] = torch.arange(len(labels)) - starts[labels[order]]
        self.order, self.counts, self.starts, self.pos, self.labels_cpu = order, counts, starts, pos, labels

    def start_epoch(self, epoch, epochs):
        super().start_epoch(epoch, epochs)
        self.gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)

    def partners(self, idx: torch.Tensor) -> torch.Tensor:
        """Another index of the same class for each index (itself only when its class has one sample)."""
        idx = idx.cpu()
        c = self.labels_cpu[idx]
        n = self.counts[c]
        r = (torch.rand(len(idx), generator=self.gen) * (n - 1).clamp_min(1)).long()
        shift = torch.where(n > 1, 1 + r, torch.zeros_like(r))
        return self.order[self.starts[c] + (self.pos[idx] + shift) % n]

    def forward_loss(self, model, x, y, idx):
        partner = self.partners(idx).to(x.device)
        x2 = self.loader.transform(self.loader.images[partner], self.gen)
        logits = model(torch.cat([x, x2]))
        own, other = logits[: len(x)], logits[len(x):]
        self.last_extra_images = len(x2)
        return cskd_loss(own, other, y, self.temperature, self.lam), own


class PSKD(SelfDistillation):
    name = "ps-kd"

    def __init__(self, alpha_T: float = 0.8):
        self.alpha_T = alpha_T
        self.memory: torch.Tensor | None = None
        self.written: torch.Tensor | None = None

    def start_epoch(self, epoch, epochs):
        super().start_epoch(epoch, epochs)
        self.alpha_t = self.alpha_T * (epoch + 1) / max(epochs, 1)
        self.previous = None if self.memory is None else self.memory.clone()
        if self.written is not None:
            self.written.zero_()

    def forward_loss(self, model, x, y, idx):
        logits = model(x)
        n = len(self.loader.labels)
        if self.memory is None:
            self.memory = torch.zeros(n, logits.shape[-1], device=x.device)
            self.written = torch.zeros(n, dtype=torch.bool, device=x.device)
        prev = None
        if self.previous is not None:
            prev = self.previous[idx]
            unseen = prev.sum(-1, keepdim=True) == 0  # never predicted (a memory row is a softmax or zeros)
            prev = torch.where(unseen, F.one_hot(y, prev.shape[-1]).to(prev.dtype), prev)
        loss = pskd_loss(logits, y, prev, self.alpha_t)
        with torch.no_grad():
            self.memory[idx] = F.softmax(logits.detach().float(), dim=-1)
            self.written[idx] = True
        return loss, logits

    def end_epoch(self):
        from kdprune import distributed

        if distributed.is_distributed() and self.memory is not None:  # every rank sees every prediction
            w = self.written.float()[:, None]
            total, count = self.memory * w, w.clone()
            distributed.average_([total, count])
            self.memory = torch.where(count > 0, total / count.clamp_min(1e-12), self.memory)

    def state_dict(self):  # a copy: training writes the memory in place
        return {"memory": self.memory.clone()} if self.memory is not None else {}

    def load_state_dict(self, state):
        if "memory" in state:
            self.memory = state["memory"].clone()
            self.written = torch.zeros(len(self.memory), dtype=torch.bool, device=self.memory.device)


class DLB(SelfDistillation):
    name = "dlb"

    def __init__(self, temperature: float = 3.0, lam: float = 1.0):
        self.temperature, self.lam = temperature, lam
        self.prev_x = self.prev_y = self.prev_logits = None

    def forward_loss(self, model, x, y, idx):
        if self.prev_x is not None:
            x_all, y_all = torch.cat([x, self.prev_x]), torch.cat([y, self.prev_y])
        else:
            x_all, y_all = x, y
        logits = model(x_all)
        loss = dlb_loss(logits, y_all, self.prev_logits, self.temperature, self.lam)
        self.last_extra_images = len(x_all) - len(x)
        half = len(x) // 2
        self.prev_x, self.prev_y = x[half:].detach(), y[half:]
        self.prev_logits = logits[half:len(x)].detach()
        return loss, logits[: len(x)]

    def state_dict(self):
        if self.prev_x is None:
            return {}
        return {"prev_x": self.prev_x, "prev_y": self.prev_y, "prev_logits": self.prev_logits}

    def load_state_dict(self, state):
        if state:
            self.prev_x, self.prev_y, self.prev_logits = state["prev_x"], state["prev_y"], state["prev_logits"]


SELF_DISTILLATION = {"cskd": CSKD, "pskd": PSKD, "dlb": DLB}
