"""IR passes: each takes a model and returns ``(model, changed)``; `Model.verify()` holds after every one."""

from .unroll import unroll

__all__ = ["unroll"]
