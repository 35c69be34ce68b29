"""The procedural toy world: videos with exactly known defects, their labels and pairs, and their descriptions."""
