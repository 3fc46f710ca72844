"""One module per job: stream inputs -> windows -> batches -> model -> writers. Plain functions usable from Python."""
