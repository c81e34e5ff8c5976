"""The two-tower lookalike model: a user tower, an audience tower and their similarity."""

from lookalike.model.audience import AudienceTower
from lookalike.model.towers import TwoTower, UserTower

__all__ = ["AudienceTower", "TwoTower", "UserTower"]
