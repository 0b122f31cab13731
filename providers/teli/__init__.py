"""The Teli provider: adapter, wire format, answer models and sandbox."""

from gateway import _native

_native.activate(__path__, __name__)  # its compiled adapter and wire (gateway/_native.py)
