"""The operator assembled: a kopf registry built from settings, and its kopf configuration.

Handlers are registered into a fresh :class:`kopf.OperatorRegistry` by
:func:`build_registry` rather than at import time, so that timer intervals come from
the settings (short in tests, minutes in a cluster) and two operators (a test restarting
one mid-deletion) never share state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from mesial.common.settings import Settings
from mesial.operator import metrics
from mesial.operator.handlers import organization, retention, scanjob

# kopf keeps handler progress and the last-handled spec in annotations under this prefix.
ANNOTATION_PREFIX = "mesial.dev"


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """kopf's own settings from ours: finalizer, storage, posting, peering, retries."""
    op = settings.operator
    kopf_settings.persistence.finalizer = op.finalizer
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    kopf_settings.posting.level = logging.getLevelName(op.posting_level.upper())
    kopf_settings.posting.reporting_component = "mesial-operator"
    kopf_settings.peering.name = op.peering_name
    kopf_settings.peering.standalone = op.standalone
    kopf_settings.execution.default_backoff = op.retry_delay_s
    kopf_settings.networking.error_backoffs = [min(op.retry_delay_s, b) for b in (1, 2, 5, 10)]
    kopf_settings.watching.server_timeout = 300
    kopf_settings.persistence.consistency_timeout = op.consistency_timeout_s
    # A timer caught mid-run by its object's deletion keeps the finalizer until it exits; kopf
    # re-checks after this many seconds (default 60) unless another event comes first.
    kopf_settings.background.cancellation_polling = op.timer_exit_poll_s
    kopf_settings.queueing.idle_timeout = op.worker_idle_s
    kopf_settings.queueing.worker_limit = op.worker_limit or None


def build_registry(settings: Settings, *, login: Callable[..., Any] | None = None) -> kopf.OperatorRegistry:
    """Every handler of the operator, with intervals from ``settings``."""
    registry = kopf.OperatorRegistry()
    op = settings.operator

    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, _settings)

    _settings = settings
    kopf.on.startup(registry=registry, id="configure")(startup)
    if login is not None:
        kopf.on.login(registry=registry, id="login")(login)
    else:
        kopf.on.login(registry=registry, id="login")(_login)
    organization.register(registry, op.drift_interval_s)
    scanjob.register(registry, op.scanjob_sync_interval_s, report_to_api=op.api_configured)
    retention.register(registry, op.retention_tick_s)
    # counted, timed, permanent failures posted as Events (operator/metrics.py)
    metrics.instrument(registry)
    return registry


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount; elsewhere: the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
