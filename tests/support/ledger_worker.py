"""Run the test ledger as a real service process (``python -m``), so tests can
SIGKILL it. Configured by the usual settings plus LEDGER_* variables."""

from __future__ import annotations

import logging
import os

from crm_runtime.service import ServiceRunner, run_forever
from crm_runtime.settings import load_settings
from tests.support.ledger import ledger_spec

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    spec = ledger_spec(os.environ["LEDGER_NAME"], os.environ["LEDGER_REQUESTS_TOPIC"],
                       os.environ["LEDGER_BOOKED_TOPIC"])
    run_forever(ServiceRunner(spec, load_settings(), grpc_port=0, serve_metrics=False))
