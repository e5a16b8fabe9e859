"""Pullers: vendors' APIs read on a schedule into touch events and spend, resumable from checkpoints."""
