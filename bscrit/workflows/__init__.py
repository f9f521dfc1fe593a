"""Orchestration that returns records (never text naming CLI flags): the measure plan and
run, the one :class:`~bscrit.artifacts.measurement.Measurement` builder the CLI and the API share,
the confirmation target svag and confirm share, the demo and its conclusion. torch lazily.
"""
