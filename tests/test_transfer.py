"""The transfer attack hands over the inner attack's last iterates on the source (``track_best`` off unless the
inner spec sets it): examples that maximise the source's loss, which transfer better than the first iterate that
crosses the source's boundary."""

from __future__ import annotations

import torch

import lyadeq_zoo as lz
from lyadeq_zoo.attacks import create_attack
from lyadeq_zoo.attacks.losses import attack_loss

EPS = 0.15


def _digits(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return lz.get_component("dataset", "mnist")(split="test", root="sample", limit=n).tensors()


def test_the_inner_attack_returns_its_last_iterates_on_the_source() -> None:
    source = lz.create_model("deq_mnist", pretrained=True).eval()
    target = lz.create_model("plain_mnist", pretrained=True).eval()
    x, y = _digits()
    transfer = create_attack("transfer", source=source, attack={"type": "pgd", "steps": 5, "loss": "cw"}, eps=EPS,
                             seed=0)
    assert transfer.attack["track_best"] is False and transfer.inner.track_best is False
    last = create_attack("pgd", eps=EPS, steps=5, loss="cw", track_best=False, seed=0)(source, x, y)
    assert torch.equal(transfer(target, x, y), last)

    # What track_best would have handed over instead: the source's first misclassified iterates, with a smaller
    # loss on the source wherever they differ.
    first = create_attack("pgd", eps=EPS, steps=5, loss="cw", track_best=True, seed=0)(source, x, y)
    differ = (first != last).flatten(1).any(1)
    assert differ.any()
    with torch.no_grad():
        loss_last = attack_loss("cw", source(last[differ]), y[differ])
        loss_first = attack_loss("cw", source(first[differ]), y[differ])
    assert (loss_last >= loss_first - 1e-4).float().mean() >= 0.9


def test_an_explicit_track_best_in_the_inner_spec_is_kept() -> None:
    transfer = create_attack("transfer", source="deq_mnist", attack={"type": "pgd", "track_best": True}, eps=EPS)
    assert transfer.inner.track_best is True
    fgsm = create_attack("transfer", source="deq_mnist", attack={"type": "fgsm"}, eps=EPS)  # one step: no such option
    assert "track_best" not in fgsm.attack
