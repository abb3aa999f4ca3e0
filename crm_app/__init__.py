"""The entry package: the ``crm`` command (``python -m crm_app``), which
finds the services and runs them on the runtime, and the demo story. It
stands above the services and the runtime, so that neither imports it."""
