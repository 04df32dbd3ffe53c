"""``herd serve``: an OpenAI-compatible gateway that routes each request to a pool model."""

from herd.gateway.app import Gateway, build_app, create_app
from herd.gateway.keys import read_api_keys

__all__ = ["Gateway", "build_app", "create_app", "read_api_keys"]
