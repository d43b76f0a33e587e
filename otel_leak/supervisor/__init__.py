"""The supervisor of ``otel-leak run``: the command's environment (``environment``), its process tree and
signals (``processes``), and the run itself, from start to the merged report (``run``)."""
