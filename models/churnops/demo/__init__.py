"""The main job: the whole story on one machine, with embedded defaults."""
