"""rayalign's built-in demo safety preference data (see README.md in this folder)."""
