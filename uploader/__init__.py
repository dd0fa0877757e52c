"""How a finished bundle reaches a ticket: backends, the durable outbox and its worker."""
