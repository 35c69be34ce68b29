"""Data synthesis: toy world, teachers, rationales, tool traces, negatives."""
