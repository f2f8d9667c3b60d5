"""FRAME's active-parameter share on LLaMA-3.1-8B shapes for several ranks (meta device).

Used to match the FRAME paper's budget (about 0.31 % active). Run:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/param_budget.py [RANK ...]
"""

from __future__ import annotations

import sys

import frame_peft as fp
from frame_peft.accounting import markdown_table, model_configs, parameter_table


def main(ranks: list[int]) -> None:
    config = model_configs()["LLaMA-3.1-8B"]
    methods = {f"frame E8 k2 r{r}": fp.FrameConfig(num_experts=8, top_k=2, rank=r) for r in ranks}
    print("## LLaMA-3.1-8B, FRAME rank sweep\n")
    print(markdown_table(parameter_table(config, methods)))


if __name__ == "__main__":
    main([int(r) for r in sys.argv[1:]] or [2, 3, 4])
