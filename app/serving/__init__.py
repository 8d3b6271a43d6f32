"""The serving pipeline and its inference worker processes: admit, queue, batch, decode and
forward in a worker, answer. Nothing here knows HTTP."""
