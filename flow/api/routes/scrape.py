"""``GET /metrics`` on the API's port, for the operator: the same Prometheus metrics as
``FLOW_METRICS_PORT`` serves without auth, behind the operator token (a customer key is
403, no token 401), for a scraper that reaches only the API's port."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flow import metrics
from flow.api.deps import OperatorDep
from flow.api.errors import ERROR_RESPONSES

router = APIRouter(tags=["admin"], responses=ERROR_RESPONSES)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def scrape(_operator: OperatorDep) -> Response:
    """Every Flow metric in Prometheus' text format."""
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
