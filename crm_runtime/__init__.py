"""The shared runtime every CRM service stands on: settings, database pool and
migrations, CloudEvents envelope, transactional outbox and relay, idempotent
batched consumer with dead letters, durable scheduler, gRPC bootstrap with
auth, metrics, the embedded local stack and the ``crm`` command."""
