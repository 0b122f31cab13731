"""The assignment gateway."""

from gateway import _native

# The compiled modules (mypyc) load in place of their sources when a build of these
# very sources exists; see gateway/_native.py.
_native.activate(__path__, __name__)
