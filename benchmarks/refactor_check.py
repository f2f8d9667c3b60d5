"""Same numbers before and after a refactor: train every method a few steps on tiny models.

Run once per checkout (``--dump``) and compare two dumps (``--compare``)::

    git worktree add /tmp/before <old commit>; git worktree add /tmp/after <new commit>
    (cd /tmp/before && OMP_NUM_THREADS=1 PYTHONPATH=src:tests python <this> --dump before.pt)
    (cd /tmp/after && OMP_NUM_THREADS=1 PYTHONPATH=src:tests python <this> --dump after.pt \
        --init-from before.pt)
    python <this> --compare before.pt after.pt

For every method and tiny model: the adapter state at injection (seed 0), then 5 AdamW steps
(``fp.build_optimizer``) on a padded batch with ``loss + fp.aux_loss``; recorded: the initial
state, every step's loss and aux loss, the final logits and adapter state. ``--init-from`` loads
the other dump's initial adapter state before training, so methods whose random init changed on
purpose (a new per-module seed) are still compared step for step.
"""

from __future__ import annotations

import argparse
import sys

import torch

import frame_peft as fp
from _models import MODELS, batch

METHODS = {
    "lora": lambda: fp.LoRAConfig(rank=4),
    "moe-lora": lambda: fp.MoELoRAConfig(num_experts=4, top_k=2, rank=2),
    "frame": lambda: fp.FrameConfig(num_experts=4, top_k=2, rank=2),
    "frame-exact": lambda: fp.FrameConfig(num_experts=4, top_k=2, rank=2, transform="exact"),
    "hydralora": lambda: fp.HydraLoRAConfig(num_experts=3, rank=4, aux_loss="switch"),
    "fouriermoe": lambda: fp.FourierMoEConfig(num_experts=4, top_k=2, num_coefficients=8),
    "flylora": lambda: fp.FlyLoRAConfig(rank=8, top_k=2),
    "hmora": lambda: fp.HMoRAConfig(num_experts=4, rank=2, top_k=2),
}


def run(method: str, model_name: str, init: dict | None) -> dict:
    torch.manual_seed(0)
    model = fp.inject(MODELS[model_name](), METHODS[method]())
    state0 = {k: v.clone() for k, v in fp.adapter_state_dict(model).items()}
    if init is not None:  # keys are "<module>.<adapter tensor>", as adapter_state_dict writes
        for name, layer in fp.adapted_layers(model).items():
            own = {k[len(name) + 1 :]: v for k, v in init.items() if k.startswith(name + ".")}
            layer.adapter.load_state_dict(own)
    opt = fp.build_optimizer(model, lr=1e-2)
    data = batch()  # input_ids, attention_mask (one right-padded row), labels
    losses, auxes = [], []
    model.train()
    for _ in range(5):
        with fp.routing_context(attention_mask=data["attention_mask"]):
            out = model(**data)
        aux = fp.aux_loss(model)
        (out.loss + aux).backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.detach())
        auxes.append(aux.detach())
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    return {
        "init": state0,
        "losses": torch.stack(losses),
        "aux": torch.stack(auxes),
        "logits": logits,
        "final": fp.adapter_state_dict(model),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump")
    ap.add_argument("--init-from")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args(argv)
    if args.compare:
        a, b = (torch.load(p) for p in args.compare)
        worst = 0
        for key in a:
            same_init = all(
                torch.equal(a[key]["init"][k], b[key]["init"][k]) for k in a[key]["init"]
            )
            exact = all(torch.equal(a[key][f], b[key][f]) for f in ("losses", "aux", "logits"))
            diff = max(
                float((a[key][f] - b[key][f]).abs().max()) for f in ("losses", "aux", "logits")
            )
            print(
                f"{key:24s} init identical: {same_init!s:5s}  training bit-identical: "
                f"{exact!s:5s}  max |diff| {diff:.3g}"
            )
            worst = max(worst, diff)
        return 0 if worst == 0 else 1
    init = torch.load(args.init_from) if args.init_from else None
    out = {}
    for method in METHODS:
        for model_name in MODELS:
            key = f"{method}/{model_name}"
            out[key] = run(method, model_name, None if init is None else init[key]["init"])
            print(key, [round(float(x), 6) for x in out[key]["losses"]], file=sys.stderr)
    torch.save(out, args.dump)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
