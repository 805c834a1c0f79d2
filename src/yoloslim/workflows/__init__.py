"""One function per stage of the pipeline; the command line calls these."""
