"""Data: reading rows from files, the kinds of rows (:mod:`.kinds`), checking and tokenizing them
(:mod:`.rows`), and the bundled verifiable tasks (:mod:`.tasks`). Imports only :mod:`tether.errors`."""
