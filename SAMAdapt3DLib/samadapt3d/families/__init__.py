"""Model families: one module each; see `samadapt3d.models` for loading by name or file."""
