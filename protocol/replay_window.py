"""Sliding anti-replay window over a sender's datagram counter (RFC 6479 / WireGuard).

The counter is checked *after* the MAC (so a forger cannot move the window) and
a datagram is accepted once; a counter more than `size` behind the highest seen
is rejected as too old.
"""
from __future__ import annotations


class ReplayWindow:
    __slots__ = ("size", "top", "bits")

    def __init__(self, size: int = 2048):
        self.size = size
        self.top = 0       # highest counter accepted so far (0 = none)
        self.bits = 0      # bit i set <=> counter top - i accepted

    def check(self, counter: int) -> bool:
        """True if counter is new (does not record it)."""
        if counter <= 0:
            return False
        if counter > self.top:
            return True
        offset = self.top - counter
        if offset >= self.size:
            return False
        return not (self.bits >> offset) & 1

    def accept(self, counter: int) -> bool:
        """Record counter; False (and no change) if it is a replay or too old."""
        if not self.check(counter):
            return False
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)
        return True
