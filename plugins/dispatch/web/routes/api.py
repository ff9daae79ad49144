"""The JSON API (CONTRACT §8)."""

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["api"])
