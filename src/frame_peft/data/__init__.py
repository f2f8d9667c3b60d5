"""Tasks, training data, seeded splits, multi-task mixing and batching (see docs/data.md).

```python
from frame_peft.data import get_task, split_examples, MultiTaskMixture, PadCollator
arc = get_task("arc_easy").load()                     # offline: the shipped validation set
train, evals, record = split_examples(arc, eval_size=0.2, seed=0)
mix = MultiTaskMixture({"arc_easy": train}, tokenizer, max_length=256, seed=0)
loader = torch.utils.data.DataLoader(mix, batch_size=8, collate_fn=PadCollator(pad_id))
```
"""

from .collate import PadCollator
from .mixture import (
    IGNORE_INDEX,
    MultiTaskMixture,
    TargetTooLongError,
    TaskVocabulary,
    encode_example,
)
from .procedural_math import GSM_SYMBOLIC_SOURCES, reasoning_gym_math
from .sources import load_hub, read_records
from .splits import PROTOCOL, SplitLeakError, SplitRecord, check_disjoint, split_examples
from .tasks import (
    HubRef,
    OfflineDataUnavailable,
    OfflineRef,
    Task,
    get_task,
    list_tasks,
    register_task,
)
from .training_sources import TRAINING_SOURCES, TrainingSource, load_training_source
from .types import FAMILIES, Example, TaskKind

__all__ = [
    "FAMILIES",
    "GSM_SYMBOLIC_SOURCES",
    "IGNORE_INDEX",
    "PROTOCOL",
    "TRAINING_SOURCES",
    "Example",
    "HubRef",
    "MultiTaskMixture",
    "OfflineDataUnavailable",
    "OfflineRef",
    "PadCollator",
    "SplitLeakError",
    "SplitRecord",
    "TargetTooLongError",
    "Task",
    "TaskKind",
    "TaskVocabulary",
    "TrainingSource",
    "check_disjoint",
    "encode_example",
    "get_task",
    "list_tasks",
    "load_hub",
    "load_training_source",
    "read_records",
    "reasoning_gym_math",
    "register_task",
    "split_examples",
]
