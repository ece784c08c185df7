"""Stop strings matched across token boundaries, never leaked into the output.

Text arrives in pieces (one detokenized token at a time).  `StopMatcher.feed` returns what is safe
to show now and holds back only the longest tail that could still grow into a stop string.  The
stop that ends first wins (on a tie, the longer one, which starts earlier): that is where
generation halts, so streaming and the final text agree whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        if isinstance(stops, str):
            raise TypeError("stops must be a sequence of strings, not a single string (wrap it in a list)")
        for stop in stops:
            if not isinstance(stop, str):
                raise TypeError(f"stop strings must be str, got {type(stop).__name__}: {stop!r}")
        # An empty stop string would match before any text; like "no stop" it is ignored.
        self.stops = sorted({stop for stop in stops if stop}, key=len, reverse=True)
        self.matched: str | None = None  # the stop string that ended the text, once one has
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add `text`; return the text safe to emit now and whether a stop string was hit.

        Once a stop is hit, the returned text ends just before it and every later call returns ("", True).
        """
        if self.stopped:
            return "", True
        pending = self._held + text
        hit = self._first_stop(pending)
        if hit is not None:
            start, self.matched = hit
            self._held = ""
            return pending[:start], True
        keep = self._possible_stop_prefix(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """At the end of generation: whatever was held back (nothing if a stop was hit)."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the stop occurrence that ends first; the longest one among those ending together."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else (best[1], best[2])

    def _possible_stop_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
