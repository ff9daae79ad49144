"""Chaos: attack a running pipeline from outside and check SPEC B1 (exactly once) and B2
(nothing lost). ``make chaos`` runs all of it and prints its figures; the small slice that is
not marked ``chaos`` runs inside ``make test``."""
