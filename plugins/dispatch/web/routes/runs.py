"""The runs pages."""

from fastapi import APIRouter

router = APIRouter(tags=["pages"], include_in_schema=False)
