"""Ready-made training configs (TOML), shipped inside the wheel as ``gpucnn.configs``."""
