"""perfkit: make Python services fast and keep them fast.

The public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from perfkit.conversation import ConversationMemory

__version__ = "0.1.0"

__all__: list[str] = ["ConversationMemory"]
