"""fieldtrace agent: CLI, settings, KB, planner, runner, bundle, outbox glue."""

__version__ = "0.1.0"
