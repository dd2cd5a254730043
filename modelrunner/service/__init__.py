"""
The modelrunner service: launchd agent / systemd user unit rendering, install and inspection.

Layer 3 (beside server/): imports config, logs and errors, never the server.  ``default_model``
puts the embedded Gemma 3 270M into the store for ``modelrunner setup-default``.
"""

from modelrunner.service.manager import (
    Launchd,
    ServiceError,
    ServiceManager,
    ServiceState,
    Systemd,
    ToolResult,
    detect,
    manager_for,
    run_tool,
)
from modelrunner.service.spec import build_spec, config_path_for, ensure_config
from modelrunner.service.units import LABEL, UNIT_NAME, ServiceSpec, render_plist, render_unit

__all__ = [
    "LABEL",
    "UNIT_NAME",
    "Launchd",
    "ServiceError",
    "ServiceManager",
    "ServiceSpec",
    "ServiceState",
    "Systemd",
    "ToolResult",
    "build_spec",
    "config_path_for",
    "detect",
    "ensure_config",
    "manager_for",
    "render_plist",
    "render_unit",
    "run_tool",
]
