"""A local stand-in for fal's queue, run, REST and CDN hosts (see app/emulator/app.py)."""

from __future__ import annotations

from .app import create_emulator_app
from .config import EmulatorConfig
from .runtime import EmulatorRuntime

__all__ = ["EmulatorConfig", "EmulatorRuntime", "create_emulator_app", "serve"]


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run the emulator with uvicorn until interrupted, configured from the environment."""
    import uvicorn

    config = EmulatorConfig.from_env()
    print(f"falgate emulator listening on http://{host}:{port}", flush=True)
    uvicorn.run(create_emulator_app(config), host=host, port=port, log_level="warning")
