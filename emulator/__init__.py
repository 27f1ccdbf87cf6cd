"""A local emulator of Google's Gemini v1beta REST API, with fault injection for tests."""

from emulator.app import create_app
from emulator.runner import EmulatorHandle, run_emulator, start_emulator
from emulator.settings import EmulatorSettings

__all__ = ["EmulatorHandle", "EmulatorSettings", "create_app", "run_emulator", "start_emulator"]
