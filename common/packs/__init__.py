"""Model packs: a detector, an aligner and a recognizer that belong together, behind one interface.

``common.packs.library`` finds and loads them (it imports the model runtimes; this package does not)."""

from common.packs.base import Face, ModelPack, ModelPackError, PackInfo

__all__ = ["Face", "ModelPack", "ModelPackError", "PackInfo"]
