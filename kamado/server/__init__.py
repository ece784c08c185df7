"""OpenAI-compatible HTTP server (`kamado serve`): create_app(settings) builds the ASGI app; settings come from the
command line or llama-cpp-python's config file (load_config_file)."""

from kamado.server.app import create_app
from kamado.server.settings import ModelSettings, ServerSettings, SettingsError, check_models, load_config_file

__all__ = ["ModelSettings", "ServerSettings", "SettingsError", "check_models", "create_app", "load_config_file"]
