"""How many examples of a property test reached the assertion that makes it worth running.

A property whose generator, ``assume()`` or early return filters out most examples passes
while proving little. The pattern: a plain test makes a ``Reach``, runs its hypothesis-decorated
inner function, then checks the share; counting and checking happen in one test function, so
no test ordering, ``pytest-randomly`` or xdist scheduling can separate them (nor skip the
check)::

    def test_something() -> None:
        reach = Reach("something")

        @settings(derandomize=True, ...)
        @given(...)
        def holds(...) -> None:
            reach.example()
            ...
            if not interesting:
                return
            reach.hit()
            assert ...

        holds()
        reach.check(minimum=0.8)

``derandomize=True`` keeps the examples (and so the share) the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reach:
    name: str
    examples: int = 0
    reached: int = 0

    def example(self) -> None:
        """Call first thing in every example (filtered or not)."""
        self.examples += 1

    def hit(self) -> None:
        """Call where the meaningful assertion is about to run."""
        self.reached += 1

    @property
    def share(self) -> float:
        return self.reached / self.examples if self.examples else 0.0

    def check(self, minimum: float, *, at_least: int = 10) -> None:
        """Print ``N/M reached`` and assert the share (and a floor of ``at_least`` hits)."""
        print(f"\n{self.name}: {self.reached}/{self.examples} reached ({self.share:.0%})")
        assert self.examples > 0, f"{self.name}: the property ran no example"
        assert self.reached >= at_least, f"{self.name}: only {self.reached} reached the assertion"
        assert self.share >= minimum, (
            f"{self.name}: {self.reached}/{self.examples} reached the assertion, "
            f"below the minimum share {minimum:.0%}"
        )
