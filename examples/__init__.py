"""Examples of systems outside the CRM that use its contracts (see README.md)."""
