"""The `capaug` command line: thin Typer commands over capaug.augment and capaug.classifier."""
