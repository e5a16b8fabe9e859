"""The web console served by the API server at ``/console/`` (see :mod:`streams.console.app`)."""

from streams.console.app import ConsoleOptions, add_console_routes

__all__ = ["ConsoleOptions", "add_console_routes"]
