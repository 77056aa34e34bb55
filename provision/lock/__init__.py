"""Resolution through uv, the pylock.toml lockfile and its [tool.provision] table."""
