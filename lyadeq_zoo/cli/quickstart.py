"""The README's main job: a LyaDEQ on real shipped MNIST digits, with its solver and stability report.

    lyadeq-quickstart [--model lyadeq_mnist] [--n 8] [--threads 2]     (checkout: python tools/quickstart.py)

Uses the shipped pretrained weights when the zoo has them (else a freshly initialised model, said
loudly), classifies ``--n`` real test digits from the sample shipped in the package and prints, per
digit, the prediction, the solver's steps and relative residual at z*, the Lyapunov value V(z*) and
the decrease bound ∇V(z*)ᵀF̂(z*) + c·V(z*) (<= 0 certifies exponential stability at z*).
"""

from __future__ import annotations

import argparse

import torch

import lyadeq_zoo as lz  # the public API, as a user would write this script
from lyadeq_zoo.stability import stability_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lyadeq_mnist", help="zoo name, local-dir:PATH or hf-hub:ID")
    parser.add_argument("--n", type=int, default=8, help="number of shipped test digits to classify")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pretrained = args.model in lz.list_models(pretrained=True)
    model = lz.create_model(args.model, pretrained=pretrained).eval()
    if not pretrained and not args.model.startswith(("local-dir:", "hf-hub:")):
        print(f"NOTE: no pretrained weights for {args.model!r} yet: using a randomly initialised model.\n")

    dataset_name = model.config["data"]["type"]
    data = lz.get_component("dataset", dataset_name)(split="test", root="sample", limit=args.n)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])

    report = stability_report(model, x)
    with torch.no_grad():
        pred = model(x).argmax(1)

    columns = ["label", "pred", "nstep", "rel_residual"]
    lyapunov = "lyapunov_value" in report
    if lyapunov:
        columns += ["V(z*)", "dV/dt + cV"]
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"solver {model.config['model']['solver']['type']}, {dataset_name} sample digits\n")
    print(" | ".join(f"{c:>12}" for c in columns))
    for i in range(len(y)):
        row = [f"{int(y[i]):>12}", f"{int(pred[i]):>12}", f"{int(report['nstep'][i]):>12}",
               f"{float(report['rel_residual'][i]):>12.2e}"]
        if lyapunov:
            row += [f"{float(report['lyapunov_value'][i]):>12.4f}", f"{float(report['lyapunov_decrease'][i]):>12.2e}"]
        print(" | ".join(row))
    print(f"\naccuracy on these {len(y)} digits: {(pred == y).float().mean().item():.1%}")
    if lyapunov:
        certified = (report["lyapunov_decrease"] <= 1e-6).sum().item()
        print(f"Lyapunov decrease condition holds at z* for {certified}/{len(y)} digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
