"""A local emulator of Google's Gemini v1beta REST API, with fault injection for tests."""

from gemini_gateway.emulator.app import create_app
from gemini_gateway.emulator.runner import EmulatorHandle, run_emulator, start_emulator
from gemini_gateway.emulator.settings import EmulatorSettings

__all__ = ["EmulatorHandle", "EmulatorSettings", "create_app", "run_emulator", "start_emulator"]
