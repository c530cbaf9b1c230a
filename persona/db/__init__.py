"""The database: an index over the object store (commits, vectors, runs, builds, AER).

The object store and refs are the source of truth; everything here can be rebuilt
from them by ``persona fsck --repair``, except the facts that never belonged in a
hashed object (wall times, loss curves, AER measurements).
"""
