"""The presets that ship with inspector, as YAML files (package data, named on the CLI: ``--config rdna_cpu``)."""
