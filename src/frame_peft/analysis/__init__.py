"""What the experts learned: orders, routing and decorrelation, as numbers, plots and a report."""

from .decorrelation import decorrelation
from .modules import ModuleInfo, group_by_kind, module_info
from .orders import order_statistics, read_order_log, read_scan_log
from .routing import RoutingRecorder

__all__ = [
    "ModuleInfo",
    "RoutingRecorder",
    "decorrelation",
    "group_by_kind",
    "module_info",
    "order_statistics",
    "read_order_log",
    "read_scan_log",
]
