"""The typed settings of every parameters file, validated once when a run starts."""
