"""Running the generated training and generation scripts: pre-flight data checks, the run
folder, `torchrun` for several processes, and the listing of runs."""
