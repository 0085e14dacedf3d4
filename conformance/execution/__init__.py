"""Execution: worker processes and the runner, the pytest plugin and its results, progress, fuzzing, and the export/import protocol for runtimes outside Python."""
