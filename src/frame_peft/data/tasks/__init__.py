"""Benchmark tasks by family; importing this package registers every built-in task."""

from . import code, commonsense, knowledge, math
from .base import (
    HubRef,
    OfflineDataUnavailable,
    OfflineRef,
    Task,
    get_task,
    list_tasks,
    multiple_choice,
    offline_root,
    register_task,
)

__all__ = [
    "HubRef",
    "OfflineDataUnavailable",
    "OfflineRef",
    "Task",
    "code",
    "commonsense",
    "get_task",
    "knowledge",
    "list_tasks",
    "math",
    "multiple_choice",
    "offline_root",
    "register_task",
]
