"""The Vambe provider: adapter, wire models and sandbox."""

from gateway import _native

_native.activate(__path__, __name__)  # its compiled adapter (gateway/_native.py)
